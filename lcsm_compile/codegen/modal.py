"""The modal recurrence's step: ``lcsm::modal_step``'s kernel and its torch twin.

A modal long convolution (docs/streaming.md, "Modal filters") keeps per batch row, channel and
mode the complex state ``x`` (fp64 real pairs) in two slots by position parity. The step at
position ``t`` reads slot ``(t - 1) % 2`` and writes slot ``t % 2``:

    x_t[b, c, n] = p[c, n] * x_{t-1}[b, c, n] + u[b, c],     y[b, c] = sum_n Re(r[c, n] x_t[b, c, n])

(slot 1 holds zeros after a reset, so ``t = 0`` starts from zero). Running the step again at the
same position reads the same slot and rewrites the same slot: nothing to roll back.

* :func:`modal_step_reference` (torch twin): the same arithmetic with torch ops on complex views;
* ``lcsm_modal_step_{f32,f64}`` (native C, :data:`SOURCE`): one pass over the rows, one call per
  step (the input and output in the model's dtype, the state, poles and residues fp64). The same
  products; the sum over modes in order ``n = 0 .. N-1`` (the twin's ``sum`` may pair them
  differently: fp64 rounding).

Layouts: ``state [2, B, C, N, 2]``, ``poles`` / ``residues`` ``[C, N, 2]`` (fp64), ``u`` / ``y``
``[B, C]``, all C-contiguous.
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from .native import PRELUDE, load_library

__all__ = ["SOURCE", "modal_step_reference", "modal_kernel", "NAME"]

NAME = "lcsm_modal"

SOURCE = PRELUDE + r"""
#define DEFINE_MODAL(T, S)                                                                     \
void lcsm_modal_step_##S(double* restrict state, const double* restrict poles,                 \
                         const double* restrict res, const T* restrict u, T* restrict y,       \
                         int64_t B, int64_t C, int64_t N, int64_t t) {                         \
  const int64_t slab = B * C * N * 2;                                                          \
  const double* restrict prev = state + ((t + 1) & 1) * slab;                                  \
  double* restrict cur = state + (t & 1) * slab;                                               \
  for (int64_t b = 0; b < B; ++b)                                                              \
    for (int64_t c = 0; c < C; ++c) {                                                          \
      const double uc = (double)u[b * C + c];                                                  \
      const double* restrict pc = poles + c * N * 2;                                           \
      const double* restrict rc = res + c * N * 2;                                             \
      const double* restrict xp = prev + (b * C + c) * N * 2;                                  \
      double* restrict xc = cur + (b * C + c) * N * 2;                                         \
      double acc = 0.0;                                                                        \
      for (int64_t n = 0; n < N; ++n) {                                                        \
        const double pr = pc[2 * n], pi = pc[2 * n + 1], xr = xp[2 * n], xi = xp[2 * n + 1];   \
        const double nr = pr * xr - pi * xi + uc, ni = pr * xi + pi * xr;                      \
        xc[2 * n] = nr;                                                                        \
        xc[2 * n + 1] = ni;                                                                    \
        acc += rc[2 * n] * nr - rc[2 * n + 1] * ni;                                            \
      }                                                                                        \
      y[b * C + c] = (T)acc;                                                                   \
    }                                                                                          \
}
DEFINE_MODAL(float, f32)
DEFINE_MODAL(double, f64)
"""


def modal_step_reference(u: torch.Tensor, state: torch.Tensor, poles: torch.Tensor, residues: torch.Tensor,
                         t: int) -> torch.Tensor:
    """One step at position ``t`` with torch ops (module doc): writes ``x_t`` into slot ``t % 2``,
    returns ``y_t [B, C]`` in ``u``'s dtype."""
    S = torch.view_as_complex(state)                       # [2, B, C, N]
    x = S[(t + 1) & 1] * torch.view_as_complex(poles)
    x += u.to(state.dtype).unsqueeze(-1)
    S[t & 1] = x
    y = (x * torch.view_as_complex(residues)).sum(-1).real
    return y.to(u.dtype)


class _Kernel:
    """The loaded native step: ``(state, poles, residues, u) -> y`` for fp32 / fp64 ``u``."""

    def __init__(self, lib: ctypes.CDLL):
        self.fns = {}
        for dt, s in ((torch.float32, "f32"), (torch.float64, "f64")):
            fn = getattr(lib, f"lcsm_modal_step_{s}")
            fn.restype = None
            fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 4
            self.fns[dt] = fn

    def __call__(self, u: torch.Tensor, state: torch.Tensor, poles: torch.Tensor, residues: torch.Tensor,
                 t: int) -> torch.Tensor:
        B, C = u.shape
        y = torch.empty((B, C), dtype=u.dtype)
        self.fns[u.dtype](state.data_ptr(), poles.data_ptr(), residues.data_ptr(), u.data_ptr(), y.data_ptr(),
                          B, C, state.shape[3], t)
        return y


_KERNEL: list = []


def modal_kernel() -> Optional[_Kernel]:
    """The native step where it builds (CPU, a C compiler, ``LCSM_NATIVE_KERNELS`` not 0), else
    None (the torch twin runs: same results up to fp64 rounding)."""
    if not _KERNEL:
        lib = load_library(SOURCE, NAME)
        _KERNEL.append(_Kernel(lib) if lib is not None else None)
    return _KERNEL[0]
