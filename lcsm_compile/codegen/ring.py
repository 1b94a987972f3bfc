"""The short convolution's ring-buffer step: ``lcsm::ring_step``'s kernel and its torch twin.

A causal depthwise convolution with a short kernel ``w [C, K]`` keeps its last ``K`` inputs in a
ring buffer ``buf [B, C, K]`` indexed by position: slot ``t % K`` holds the input of position
``t``. The step at position ``t`` writes ``u`` to slot ``t % K`` and returns

    y[b, c] = bias[c] + sum_{i < K} w[c, i] * x[b, c, t - K + 1 + i],   x[.., p] = buf[.., p % K]

(slots of positions not seen yet hold zeros after a reset). Running the step again at the same
position (a retried step) rewrites the same slot: nothing to roll back.

* :func:`ring_step_reference` (torch twin): the same sum with torch ops (``roll`` of the window);
* ``lcsm_ring_step`` (native C, :data:`SOURCE`): one pass over the rows, one call per step.
  The same products summed in the same order (``i = 0 .. K-1``); a fused multiply-add may round
  once instead of twice.

* ``lcsm_ring_step_{f32,f64}`` (emitted Triton, ``codegen/triton/ring_step.py.tmpl``): one
  launch, the position read from the device tensor ``pos`` (no host sync); fp32/fp64 sums.

Layouts: ``buf`` ``[B, C, K]``, ``w`` ``[C, K]``, ``bias`` ``[C]``, ``u``/``y`` ``[B, C]``, all
C-contiguous, one dtype (fp32 or fp64 for the native kernel; Triton also takes bf16/fp16).

Which implementation a ring op runs is the program's ``kernels`` option, recorded per weight
tensor by :func:`prefer_kernels` (the op's arguments carry no option); a ring whose weights were
never recorded (e.g. an exported program's) runs ``"auto"``: Triton on CUDA, native on the CPU.
"""

from __future__ import annotations

import weakref
from typing import Optional

import torch

__all__ = ["SOURCE", "ring_step_reference", "prefer_kernels", "kernels_preference", "preferences"]

_PREFER: dict = {}  # (device, data_ptr of w) -> (weak ref to w, kernels option)


def prefer_kernels(w: torch.Tensor, kernels: str) -> None:
    """Record the ``kernels`` option (``"auto" | "torch" | "native" | "triton"``) of the ring
    whose weights are ``w`` (kept while ``w`` lives)."""
    if len(_PREFER) > 4096:
        for key in [k for k, (ref, _) in _PREFER.items() if ref() is None]:
            del _PREFER[key]
    _PREFER[(w.device, w.data_ptr())] = (weakref.ref(w), kernels)
    from . import cpu_ops  # the C++ step ops run the native path only for "auto" / "native"

    cpu_ops.set_python_only(w, kernels not in ("auto", "native"))


def preferences() -> list:
    """``[(w, kernels)]``: every recorded preference whose weights are alive."""
    out = []
    for ref, kernels in list(_PREFER.values()):
        w = ref()
        if w is not None:
            out.append((w, kernels))
    return out


def kernels_preference(w: torch.Tensor) -> str:
    """The ``kernels`` option recorded for the weights ``w`` (same memory), else ``"auto"``."""
    hit = _PREFER.get((w.device, w.data_ptr()))
    if hit is None:
        return "auto"
    ref = hit[0]()
    return hit[1] if ref is not None and ref.data_ptr() == w.data_ptr() else "auto"

SOURCE = r"""
#define DEFINE_RING(T, S)                                                                     \
void lcsm_ring_step_##S(T* restrict buf, const T* restrict w, const T* restrict bias,         \
                        const T* restrict u, T* restrict y, int64_t B, int64_t C, int64_t K,  \
                        int64_t t) {                                                          \
  const int64_t slot = t % K, first = (t + 1) % K;  /* window i at slot (first + i) % K */     \
  for (int64_t b = 0; b < B; ++b)                                                             \
    for (int64_t c = 0; c < C; ++c) {                                                         \
      T* restrict row = buf + (b * C + c) * K;                                                \
      const T* restrict wc = w + c * K;                                                       \
      row[slot] = u[b * C + c];                                                               \
      T s = 0;                                                                                \
      int64_t j = first;                                                                      \
      for (int64_t i = 0; i < K; ++i) {                                                       \
        s += row[j] * wc[i];                                                                  \
        j = j + 1 == K ? 0 : j + 1;                                                           \
      }                                                                                       \
      y[b * C + c] = bias ? s + bias[c] : s;                                                  \
    }                                                                                         \
}
DEFINE_RING(float, f32)
DEFINE_RING(double, f64)
"""


def ring_step_reference(u: torch.Tensor, buf: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor],
                        t: int) -> torch.Tensor:
    """Torch twin of ``lcsm_ring_step`` at position ``t`` (module doc); ``y`` in ``u``'s dtype."""
    K = buf.shape[-1]
    buf[..., t % K] = u
    window = buf.roll(-((t + 1) % K), -1) if (t + 1) % K else buf  # window[i] = input of t - K + 1 + i
    y = (window * w).sum(-1)
    if bias is not None:
        y = y + bias
    return y if y.dtype == u.dtype else y.to(u.dtype)
