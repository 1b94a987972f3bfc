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

Both have fake (meta) implementations, so Inductor keeps each as a single extern call and
``torch.export`` keeps them as single nodes. They have no autograd formula: lcsm-compile is
for inference, and a backward through them raises.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .reference import causal_conv_fft


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
