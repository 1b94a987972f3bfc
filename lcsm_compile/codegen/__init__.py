"""Kernels: one interface, every kernel beside its torch twin.

Each kernel module holds the emitted source of a kernel family and the torch twin that is its
reference (and the fallback that runs where the native kernel is unavailable):

* :mod:`.red_cells`: the per-step red cells of a group member and the per-block transposes;
* :mod:`.tiles`: one tile of the relaxed schedule (direct, FFT);
* :mod:`.ring`: the short convolution's ring-buffer step;
* :mod:`.native`: emitting C to the kernel cache, building it with the system C compiler, the
  capability check.

* :mod:`.triton`: the emitted Triton kernels (CUDA; the CPU only under ``TRITON_INTERPRET=1``):
  the red step, the direct tile and the ring step, from templates, cached by content hash.

One kernel interface, three implementations: the torch twins (reference), the native C kernels
(CPU) and the emitted Triton kernels (CUDA). :func:`select_kernels` picks one for a
``kernels`` option (``"auto" | "torch" | "native" | "triton"``), a compute dtype and a device,
with a note saying which runs and why; ``"auto"`` picks Triton on CUDA, native C on the CPU,
torch elsewhere, each falling back to the next when its capability check fails. The native
check alone is :func:`kernels_for`: ``(dtype, device) -> (CpuKernels | None, reason)``; the
Triton one :func:`lcsm_compile.codegen.triton.triton_kernels_for`. :data:`SOURCE` is the whole
C library (prelude + every family), built once per process and cached across processes by
content hash.
"""

from __future__ import annotations

import ctypes
import dataclasses
from typing import Any, Optional

import torch

from ..errors import SessionError
from . import native, red_cells, ring, tiles
from . import triton as triton_kernels

__all__ = ["SOURCE", "CpuKernels", "kernels_for", "KERNEL_CODES", "KernelChoice", "select_kernels", "kernel_sources"]

#: the emitted C library: the shared prelude, then each kernel family's source
SOURCE = native.PRELUDE + red_cells.SOURCE + tiles.SOURCE + ring.SOURCE
_NAME = "lcsm_kernels"
_P = ctypes.c_void_p
_I = ctypes.c_int64


class CpuKernels:
    """The loaded kernels for one dtype (fp32 or fp64). Callers pass contiguous CPU tensors of
    that dtype and in-range indices; nothing is checked here (the engine checks once)."""

    kind = "native"

    def __init__(self, lib: ctypes.CDLL, dtype: torch.dtype):
        s = {torch.float32: "f32", torch.float64: "f64"}[dtype]
        self.dtype = dtype
        self.red_step = getattr(lib, f"lcsm_red_step_{s}")
        self.red_step.argtypes = [_P, _P, _P, _I]
        self.red_step.restype = None
        self.load_block = getattr(lib, f"lcsm_load_block_{s}")
        self.load_block.argtypes = [_P, _P, _I, _I, _I, _I, _I]
        self.load_block.restype = None
        self.flush_block = getattr(lib, f"lcsm_flush_block_{s}")
        self.flush_block.argtypes = [_P, _P, _I, _I, _I, _I, _I]
        self.flush_block.restype = None
        self.direct_tile = getattr(lib, f"lcsm_direct_tile_{s}")
        self.direct_tile.argtypes = [_P, _P, _P, _I, _I, _I, _I, _I, _I, _I, _I]
        self.direct_tile.restype = None
        self.ring_step = getattr(lib, f"lcsm_ring_step_{s}")
        self.ring_step.argtypes = [_P, _P, _P, _P, _P, _I, _I, _I, _I]
        self.ring_step.restype = None


def kernels_for(dtype: torch.dtype, device: torch.device) -> tuple[Optional[CpuKernels], str]:
    """Capability check: the native kernels for ``dtype`` on ``device``, or ``(None, reason)``."""
    if torch.device(device).type != "cpu":
        return None, f"native kernels are CPU kernels (device {device})"
    if dtype not in (torch.float32, torch.float64):
        return None, f"native kernels take fp32/fp64 (compute dtype {dtype})"
    ok, why = native.available(SOURCE, _NAME)
    if not ok:
        return None, why
    return CpuKernels(native.load_library(SOURCE, _NAME), dtype), ""


#: the ``kernels`` option as the int an engine's ``config`` carries (0 and 1 as before 2 and 3
#: existed); the per-step kernel flag in an engine's ``meta[4]`` is :data:`STEP_CODES`
KERNEL_CODES = {"auto": 0, "torch": 1, "native": 2, "triton": 3}
#: ``meta[4]`` of an online engine's state: which kernels its red cells run on
STEP_CODES = {"torch": 0, "native": 1, "triton": 2}

_WHAT = {"native": "native CPU kernels (red cells, block transposes, direct tiles)",
         "triton": "emitted Triton kernels (red cells, direct tiles; FFT tiles with torch.fft, block "
                   "transposes with torch ops)"}


@dataclasses.dataclass(frozen=True)
class KernelChoice:
    """Which implementation runs: ``impl`` (``"triton" | "native" | "torch"``), its loaded
    kernels (``native``: :class:`CpuKernels`, ``triton``: a
    :class:`~lcsm_compile.codegen.triton.TritonKernels`, else None) and ``note`` (which
    runs and why: the engine's ``kernel_note``)."""

    impl: str
    note: str
    native: Optional[CpuKernels] = None
    triton: Any = None

    @property
    def step_kernels(self) -> Any:
        """The kernels object of the per-step work (None: torch ops)."""
        return self.native if self.native is not None else self.triton


def select_kernels(kernels: str, dtype: torch.dtype, device: Any) -> KernelChoice:
    """The kernels for option ``kernels`` and compute dtype ``dtype`` on ``device``.

    ``"auto"``: Triton on CUDA, native C on the CPU (never the Triton interpreter), torch
    elsewhere; a failed capability check falls back to the next (Triton -> torch on CUDA,
    native -> torch on the CPU) with the reason in the note. ``"torch"``: the torch twins.
    ``"native"`` / ``"triton"``: that implementation, or :class:`SessionError` naming why it
    cannot run here (Triton runs on the CPU only under ``TRITON_INTERPRET=1``).
    """
    device = torch.device(device)
    if kernels not in KERNEL_CODES:
        raise SessionError(f"kernels must be one of {sorted(KERNEL_CODES)}, got {kernels!r}")
    if kernels == "torch":
        return KernelChoice("torch", "torch ops (kernels='torch')")
    if kernels == "native":
        nk, why = kernels_for(dtype, device)
        if nk is None:
            raise SessionError(f"kernels='native' is not available: {why}")
        return KernelChoice("native", f"{_WHAT['native']} (kernels='native')", native=nk)
    if kernels == "triton":
        tk, why = triton_kernels_for(dtype, device)
        if tk is None:
            raise SessionError(f"kernels='triton' is not available: {why}")
        where = " under TRITON_INTERPRET=1" if device.type == "cpu" else f" on {device.type}"
        return KernelChoice("triton", f"{_WHAT['triton']}{where} (kernels='triton')", triton=tk)
    if device.type == "cuda":
        tk, why = triton_kernels_for(dtype, device)
        if tk is not None:
            return KernelChoice("triton", f"{_WHAT['triton']} (kernels='auto' on CUDA)", triton=tk)
        return KernelChoice("torch", f"torch ops (kernels='auto' on CUDA; Triton: {why})")
    nk, why = kernels_for(dtype, device)
    if nk is not None:
        return KernelChoice("native", _WHAT["native"], native=nk)
    return KernelChoice("torch", f"torch ops ({why})")


def triton_kernels_for(dtype: torch.dtype, device: Any):
    """Capability check of the Triton kernels (:func:`lcsm_compile.codegen.triton.triton_kernels_for`)."""
    return triton_kernels.triton_kernels_for(dtype, device)


def kernel_sources() -> list:
    """The emitted kernel sources in the kernel cache (``$LCSM_CACHE_DIR``), as ``[(what, path
    or a note)]``: the C library and each emitted Triton module (listed by ``explain`` and
    ``lcsm inspect``)."""
    src = native.built_source(SOURCE, _NAME)
    tri = triton_kernels.emitted_sources()
    return [("C: red cells, block transposes, direct tiles, ring step", src or "not built in this cache"),
            ("Triton, from codegen/triton/*.py.tmpl: red step, direct tile, ring step",
             ", ".join(tri) or "not emitted in this cache")]
