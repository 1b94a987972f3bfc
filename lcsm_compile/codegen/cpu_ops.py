"""The per-step ops in C++ on the CPU: build, load and activate ``cpu_ops.cpp``.

A compiled step calls a handful of ``lcsm`` ops per token (a ring step and the red cells per
long convolution, one tile advance, modal steps), each a few microseconds of native C work. With
their Python bodies (runtime/state_ops.py, runtime/modal.py) every call also pays a Python frame
and the ctypes call, about 15-20 us each, a large part of a small model's step. ``cpu_ops.cpp``
registers C++ kernels for these ops on the CPU dispatch key that do the common path directly
(the same native C kernels, hence the same bits) and call the Python body for everything
else, so errors, other dtypes and the ``kernels="torch"`` choice behave exactly as before.

The extension is built once per source, compiler and torch version into the kernel cache
(:func:`lcsm_compile.codegen.native.cache_dir`; about 25-30 s on this project's CPU) when a
compiled step program is first made on the CPU (:func:`activate`, called through
``runtime.state_ops.use_cpp_step_ops`` by ``runtime.program.InductorStep``: the runtime hands
over the native kernels' addresses and the Python bodies, so this module imports nothing of it),
and loaded from there afterwards. ``LCSM_CPU_OPS=0`` turns it
off; a build or load failure leaves the Python bodies in place and is reported by
:func:`status` (``Session.kernel_note``).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path
from typing import Any, Optional

import torch

from . import native

__all__ = ["activate", "deactivate", "python_bodies", "active", "status", "set_python_only", "publish_quiet", "kernel_address",
           "SOURCE_PATH", "OPS"]

log = logging.getLogger("lcsm_compile")

SOURCE_PATH = Path(__file__).with_name("cpu_ops.cpp")
#: the ops with a C++ CPU kernel
OPS = ("ring_step", "online_diag", "online_advance", "modal_step")

_lock = threading.Lock()
_mod: list = []  # [module or None] once tried
_error: list = []
_active: list = [False]
_held: list = [0]  # > 0 inside :func:`python_bodies`


def _compiler() -> Optional[str]:
    for name in filter(None, [os.environ.get("CXX"), "c++", "g++", "clang++"]):
        path = shutil.which(name)
        if path:
            return path
    return None


def _build() -> tuple[str, str]:
    """(module name, path of the built extension), building it into the cache if needed."""
    from torch.utils import cpp_extension

    cxx = _compiler()
    if cxx is None:
        raise native.NativeBuildError("no C++ compiler found (set $CXX)")
    source = SOURCE_PATH.read_text()
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", 1))
    libdirs = cpp_extension.library_paths()
    flags = ["-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    key = hashlib.sha256("\0".join([source, cxx, *flags, torch.__version__, sys.version]).encode()).hexdigest()[:16]
    name = f"lcsm_cpu_ops_{key}"
    d = native.cache_dir()
    so = os.path.join(d, name + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
    if os.path.exists(so):
        return name, so
    includes = [*cpp_extension.include_paths(), sysconfig.get_paths()["include"]]
    tag = f"{os.getpid()}-{threading.get_ident()}"
    src, tmp = os.path.join(d, f"{name}.{tag}.cpp"), f"{so}.{tag}.tmp"
    with open(src, "w") as f:
        f.write(source)
    cmd = [cxx, *flags, f"-DTORCH_EXTENSION_NAME={name}", *(f"-I{p}" for p in includes), src, "-o", tmp,
           *(f"-L{p}" for p in libdirs), *(f"-Wl,-rpath,{p}" for p in libdirs),
           "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python"]
    log.info("lcsm: building the C++ step ops (once per torch version, cached in %s)", d)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    with contextlib.suppress(OSError):
        os.remove(src)
    if proc.returncode != 0:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise native.NativeBuildError(f"{cxx}: {proc.stderr.strip()[-2000:]}")
    os.replace(tmp, so)  # atomic: a concurrent builder never sees a partial library
    return name, so


def _load() -> Optional[Any]:
    with _lock:
        if _mod:
            return _mod[0]
        mod = None
        if os.environ.get("LCSM_CPU_OPS", "1") == "0":
            _error.append("turned off by LCSM_CPU_OPS=0")
        elif os.environ.get("LCSM_NATIVE_KERNELS", "1") == "0":
            _error.append("the native kernels are turned off (LCSM_NATIVE_KERNELS=0)")
        else:
            try:
                name, so = _build()
                spec = importlib.util.spec_from_file_location(name, so)
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
            except Exception as e:  # noqa: BLE001 - any failure leaves the Python bodies in place
                _error.append(f"{type(e).__name__}: {e}")
                mod = None
        _mod.append(mod)
        return mod


def activate(addresses: dict, fallbacks: dict, python_only=()) -> bool:
    """Build/load the extension and register its CPU kernels (idempotent while active).

    ``addresses``: C name -> address of the native kernels (``lcsm_ring_step_f32``, ...; a
    missing one makes its op call the Python body); ``fallbacks``: op name -> its Python body
    (every op of :data:`OPS`); ``python_only``: weight tensors whose ops always run the Python
    body (their ``kernels`` option is not native). Returns whether the C++ kernels are active;
    when not, :func:`status` says why. Called by ``runtime.state_ops.use_cpp_step_ops``."""
    if _active[0]:
        return True
    if _held[0]:
        return False
    missing = [op for op in OPS if op not in fallbacks]
    if missing:
        raise ValueError(f"cpu_ops.activate: no Python body for {missing}")
    mod = _load()
    if mod is None:
        return False
    if not addresses:
        _error.append("the native kernels did not build (nothing to call)")
        return False
    with _lock:
        mod.activate(dict(addresses), dict(fallbacks), list(OPS))
        for w in python_only:
            if w.device.type == "cpu":
                mod.set_python_only(w.data_ptr(), True)
        _active[0] = True
    return True


def kernel_address(fn) -> int:
    """The address of a ctypes function of a loaded native library."""
    return ctypes.cast(fn, ctypes.c_void_p).value


def deactivate() -> None:
    """Remove the C++ CPU kernels: the Python bodies run again (tests compare the two)."""
    with _lock:
        if _active[0] and _mod and _mod[0] is not None:
            _mod[0].deactivate()
        _active[0] = False


@contextlib.contextmanager
def python_bodies():
    """While active: the Python bodies run and nothing activates the C++ kernels (benchmarks
    compare the two in one process); the previous state is restored after."""
    was = _active[0]
    deactivate()
    _held[0] += 1
    try:
        yield
    finally:
        _held[0] -= 1
        if was and _mod and _mod[0] is not None and not _held[0]:
            with _lock:
                _mod[0].reactivate()
                _active[0] = True


def active() -> bool:
    """Whether the C++ CPU kernels are registered now."""
    return _active[0]


def status() -> str:
    """One line: the C++ step ops are on, or why not."""
    if _active[0]:
        return "C++ step ops"
    if _error:
        return f"Python step ops ({_error[-1].splitlines()[0][:200]})"
    return "Python step ops"


def set_python_only(w: torch.Tensor, on: bool) -> None:
    """Route the ring or modal filter whose weights are ``w`` to its Python body (its
    ``kernels`` option is not native) or back."""
    if _active[0] and w.device.type == "cpu":
        _mod[0].set_python_only(w.data_ptr(), bool(on))


def publish_quiet(meta: torch.Tensor, uid: int, prefill: int, blk_start: int, start: int, stop: int) -> None:
    """Tell the C++ ``online_advance`` that the steps ``[start, stop)`` of the engine with this
    ``meta`` (and id, prefill, block start) have no tile work: it moves the position itself."""
    if _active[0]:
        if stop > start:
            _mod[0].set_quiet(meta, uid, prefill, blk_start, start, stop)
        else:
            _mod[0].clear_quiet(meta)
