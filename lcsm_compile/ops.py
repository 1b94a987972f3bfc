"""The custom ops that the rewrite pass puts in place of matched convolution regions.

Both ops use one canonical layout, whatever layout the user's model had: channels second to
last, time last. The rewrite pass inserts the permutes/reshapes around them.

* ``lcsm::long_conv(u, k) -> y``: causal long convolution, per channel,
  ``y[..., c, t] = sum_{s <= t} u[..., c, s] * k[c, t - s]``.
  ``u``: ``[..., C, L]``; ``k``: ``[C, K]`` with any ``K`` (zero beyond ``K``; only
  ``k[:, :L]`` matters). Computed with an FFT of size ``>= 2L`` in fp32 or fp64
  (bf16/fp16 inputs are computed in fp32 and cast back).
* ``lcsm::short_conv(u, w, bias) -> y``: causal depthwise convolution with a short kernel,
  the same as ``F.conv1d(F.pad(u, (K-1, 0)), w[:, None, :], bias, groups=C)``:
  ``y[..., c, t] = bias[c] + sum_{i < K} w[c, i] * u[..., c, t - (K - 1) + i]``.

The math behind them is here too, as plain functions (the torch twins every kernel and
baseline is checked against): :func:`causal_conv_fft`, :func:`causal_conv_direct` (the
definition, O(L^2): fp64 golden values), :func:`compute_dtype`. This module imports nothing
else from the package: every layer may use it.

Both ops have fake (meta) implementations, so Inductor keeps each as a single extern call and
``torch.export`` keeps them as single nodes. They have no autograd formula: lcsm-compile is
for inference, and a backward through them raises.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["long_conv", "short_conv", "causal_conv_fft", "causal_conv_direct", "compute_dtype"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype convolutions are computed in: fp64 stays fp64, everything else is fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fft_size(n: int) -> int:
    """Smallest power of two >= n (at least 1)."""
    return 1 << max(0, (n - 1).bit_length())


def causal_conv_fft(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal convolution along the last dim: ``y[..., c, t] = sum_{s<=t} u[..., c, s] k[c, t-s]``.

    Args:
        u: ``[..., C, L]`` input.
        k: ``[C, K]`` filter (zero beyond ``K``), or ``[K]`` shared by all channels.
    Returns:
        ``[..., C, L]`` in the dtype of ``u``; computed in fp32 (fp64 for fp64 inputs).
    """
    L = u.shape[-1]
    if L == 0:
        return u.clone()
    cd = compute_dtype(u.dtype)
    kk = k[..., :L].to(cd)
    n = _fft_size(2 * L)
    U = torch.fft.rfft(u.to(cd), n=n)
    Kf = torch.fft.rfft(kk, n=n)
    y = torch.fft.irfft(U * Kf, n=n)[..., :L]
    return y.to(u.dtype)


def causal_conv_direct(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The causal convolution by its definition, O(L^2): the golden value for small tests."""
    L = u.shape[-1]
    cd = compute_dtype(u.dtype)
    kk = torch.zeros(*k.shape[:-1], L, dtype=cd, device=k.device)
    m = min(L, k.shape[-1])
    kk[..., :m] = k[..., :m].to(cd)
    uu = u.to(cd)
    y = torch.zeros_like(uu)
    for t in range(L):
        # sum_{s<=t} u[s] k[t-s]
        y[..., t] = (uu[..., : t + 1] * kk[..., : t + 1].flip(-1)).sum(-1)
    return y.to(u.dtype)



@torch.library.custom_op("lcsm::long_conv", mutates_args=())
def long_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal long convolution ``y[..., c, t] = sum_{s<=t} u[..., c, s] k[c, t-s]`` (FFT)."""
    return causal_conv_fft(u, k)


@long_conv.register_fake
def _long_conv_fake(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(u)


@torch.library.custom_op("lcsm::short_conv", mutates_args=())
def short_conv(u: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Causal depthwise short convolution, kernel ``w`` of shape ``[C, K]``, optional ``bias [C]``."""
    C, K = w.shape
    lead = u.shape[:-2]
    L = u.shape[-1]
    x = u.reshape(-1, C, L)
    y = F.conv1d(F.pad(x, (K - 1, 0)), w.to(x.dtype)[:, None, :],
                 None if bias is None else bias.to(x.dtype), groups=C)
    return y.reshape(*lead, C, L)


@short_conv.register_fake
def _short_conv_fake(u: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    return torch.empty_like(u)
