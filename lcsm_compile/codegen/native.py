"""Native CPU kernels: C source emitted by lcsm-compile, built with the system C compiler, cached.

The engine's per-step work is tiny (a few thousand multiply-adds), so on the CPU its cost is
the dispatch of several torch ops, not arithmetic. A kernel here fuses such a sequence into
one call. Each kernel has a torch reference (the engine's pure-torch path) and runs only where
:func:`available` says so; otherwise the torch path runs, with identical semantics.

Build: the source is written to ``<cache>/<hash>.c`` (inspectable) and compiled with
``$CC`` (default ``cc``) to ``<hash>.so``, once; the hash covers the source, the compiler and
its flags, so a change rebuilds. The cache directory is ``$LCSM_CACHE_DIR``, else
``$TORCHINDUCTOR_CACHE_DIR/lcsm``, else ``<tempdir>/lcsm_compile_<user>``. Set
``LCSM_NATIVE_KERNELS=0`` to turn native kernels off everywhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import getpass
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from typing import Optional

__all__ = ["PRELUDE", "cache_dir", "compiler", "load_library", "available", "advise_huge_pages", "NativeBuildError"]

#: shared head of every emitted C source: headers and 32-byte vector types (GCC/clang vector
#: extensions), unaligned loads and adds through memcpy
PRELUDE = r"""
#include <stdint.h>
#include <string.h>

typedef float lcsm_vf32 __attribute__((vector_size(32)));
typedef double lcsm_vf64 __attribute__((vector_size(32)));
static inline lcsm_vf32 lcsm_ld_f32(const float* p) { lcsm_vf32 v; memcpy(&v, p, sizeof v); return v; }
static inline lcsm_vf64 lcsm_ld_f64(const double* p) { lcsm_vf64 v; memcpy(&v, p, sizeof v); return v; }
static inline void lcsm_add_f32(float* p, lcsm_vf32 v) { lcsm_vf32 o; memcpy(&o, p, sizeof o); o += v; memcpy(p, &o, sizeof o); }
static inline void lcsm_add_f64(double* p, lcsm_vf64 v) { lcsm_vf64 o; memcpy(&o, p, sizeof o); o += v; memcpy(p, &o, sizeof o); }
"""

_FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-std=c11"]
_FALLBACK_FLAGS = ["-O3", "-fPIC", "-shared", "-std=c11"]
_lock = threading.Lock()
_libs: dict[str, Optional[ctypes.CDLL]] = {}
_errors: dict[str, str] = {}


class NativeBuildError(RuntimeError):
    """The C compiler failed on a kernel's source (the message holds its output)."""


def cache_dir() -> str:
    """Directory for emitted kernel sources and built libraries (created on first use)."""
    d = os.environ.get("LCSM_CACHE_DIR")
    if not d and os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        d = os.path.join(os.environ["TORCHINDUCTOR_CACHE_DIR"], "lcsm")
    if not d:
        try:
            user = getpass.getuser()
        except Exception:  # no user name (some containers)
            user = str(os.getuid()) if hasattr(os, "getuid") else "user"
        d = os.path.join(tempfile.gettempdir(), f"lcsm_compile_{user}")
    os.makedirs(d, exist_ok=True)
    return d


def compiler() -> Optional[str]:
    """Path of the C compiler to use (``$CC``, else ``cc``/``gcc``/``clang``), or None."""
    for name in filter(None, [os.environ.get("CC"), "cc", "gcc", "clang"]):
        path = shutil.which(name)
        if path:
            return path
    return None


def _build(source: str, name: str) -> str:
    cc = compiler()
    if cc is None:
        raise NativeBuildError("no C compiler found (set $CC)")
    last = ""
    for flags in (_FLAGS, _FALLBACK_FLAGS):
        key = hashlib.sha256("\0".join([source, cc, *flags]).encode()).hexdigest()[:20]
        d = cache_dir()
        so = os.path.join(d, f"{name}-{key}.so")
        if os.path.exists(so):
            return so
        src = os.path.join(d, f"{name}-{key}.c")
        # every builder compiles its own copy of the source (pytest -n 2 on a clean cache builds
        # in two processes at once: a shared temporary file was truncated under the other's
        # compiler, which then failed and fell back) and publishes both files atomically
        tag = f"{os.getpid()}-{threading.get_ident()}"
        csrc, tmp = f"{src}.{tag}.c", f"{so}.{tag}.tmp"
        with open(csrc, "w") as f:
            f.write(source)
        proc = subprocess.run([cc, *flags, csrc, "-o", tmp], capture_output=True, text=True)
        if proc.returncode == 0:
            os.replace(csrc, src)
            os.replace(tmp, so)  # atomic: concurrent builders never see a partial library
            return so
        with contextlib.suppress(OSError):
            os.remove(csrc)
        last = f"{cc} {' '.join(flags)} {src}: {proc.stderr.strip()[-2000:]}"
    raise NativeBuildError(last)


def built_source(source: str, name: str) -> Optional[str]:
    """The path of the emitted C source of a library already built in the cache (None if not
    built): what ``lcsm inspect`` lists."""
    cc = compiler()
    if cc is None:
        return None
    for flags in (_FLAGS, _FALLBACK_FLAGS):
        key = hashlib.sha256("\0".join([source, cc, *flags]).encode()).hexdigest()[:20]
        src = os.path.join(cache_dir(), f"{name}-{key}.c")
        if os.path.exists(os.path.join(cache_dir(), f"{name}-{key}.so")) and os.path.exists(src):
            return src
    return None


def load_library(source: str, name: str) -> Optional[ctypes.CDLL]:
    """Build (once, cached) and load the C ``source``; None when native kernels are unavailable.

    The reason a build failed is kept and reported by :func:`available`.
    """
    if os.environ.get("LCSM_NATIVE_KERNELS", "1") == "0":
        _errors[name] = "turned off by LCSM_NATIVE_KERNELS=0"
        return None
    with _lock:
        if name in _libs:
            return _libs[name]
        try:
            lib: Optional[ctypes.CDLL] = ctypes.CDLL(_build(source, name))
        except (NativeBuildError, OSError) as e:
            _errors[name] = str(e)
            lib = None
        _libs[name] = lib
        return lib


def available(source: str, name: str) -> tuple[bool, str]:
    """Capability check: ``(True, "")`` if the kernel library builds and loads here, else
    ``(False, reason)``."""
    lib = load_library(source, name)
    return (lib is not None, "" if lib is not None else _errors.get(name, "unknown"))


_MADV_HUGEPAGE = 14  # Linux <sys/mman.h>
_HUGE = 2 << 20


def advise_huge_pages(t) -> bool:
    """Ask Linux to back the (not yet touched) memory of a large CPU tensor with transparent
    huge pages (``madvise(MADV_HUGEPAGE)``; a hint, honoured where THP is in ``madvise`` or
    ``always`` mode). The engine's time-last state is read one short run per channel row, each
    row in its own 4 KiB page; 2 MiB pages cut the TLB misses of block loads and tiles. Returns
    whether the hint was given. Call before the first write (``torch.empty`` then ``zero_``).
    """
    import sys

    if not sys.platform.startswith("linux") or t.device.type != "cpu" or os.environ.get("LCSM_HUGE_PAGES", "1") == "0":
        return False
    nbytes = t.numel() * t.element_size()
    start = t.data_ptr()
    lo = (start + _HUGE - 1) // _HUGE * _HUGE
    hi = (start + nbytes) // _HUGE * _HUGE
    if hi <= lo:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_HUGEPAGE) == 0
    except (OSError, AttributeError):
        return False
