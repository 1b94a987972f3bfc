"""Kernels: one interface, every kernel beside its torch twin.

Each kernel module holds the emitted source of a kernel family and the torch twin that is its
reference (and the fallback that runs where the native kernel is unavailable):

* :mod:`.red_cells`: the per-step red cells of a group member and the per-block transposes;
* :mod:`.tiles`: one tile of the relaxed schedule (direct, FFT);
* :mod:`.ring`: the short convolution's ring-buffer step;
* :mod:`.native`: emitting C to the kernel cache, building it with the system C compiler, the
  capability check.

The interface is :func:`kernels_for`: ``(dtype, device) -> (CpuKernels | None, reason)``.
:data:`SOURCE` is the whole C library (prelude + every family), built once per process and
cached across processes by content hash.
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from . import native, red_cells, ring, tiles

__all__ = ["SOURCE", "CpuKernels", "kernels_for"]

#: the emitted C library: the shared prelude, then each kernel family's source
SOURCE = native.PRELUDE + red_cells.SOURCE + tiles.SOURCE + ring.SOURCE
_NAME = "lcsm_kernels"
_P = ctypes.c_void_p
_I = ctypes.c_int64


class CpuKernels:
    """The loaded kernels for one dtype (fp32 or fp64). Callers pass contiguous CPU tensors of
    that dtype and in-range indices; nothing is checked here (the engine checks once)."""

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
