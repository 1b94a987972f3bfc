"""Multi-range convolution stacks in the style of Evo 2 / StripedHyena 2 (written from scratch).

Three kinds of causal convolution in one stack, each the way such code is usually written:

* short featurizers: depthwise ``nn.Conv1d`` with kernel 3..7, left-padded by ``k - 1``;
* medium-range filters: an explicit ``[D, 128]`` tap parameter cut with ``h[:, :L]`` and applied
  by an FFT convolution of size ``2L``: 128 taps, zero beyond them, so the block is valid at
  every length (also past 128);
* long-range modal filters: ``sum_n r_n * p_n ** t`` over ``arange(L)`` with complex poles.

Also ``FixedTapShift``: an H3-style shift kernel of ``N`` taps cut with ``[..., :min(N, L)]``
and zero-padded back to ``L`` when ``N < L`` (the Python branch on ``L`` is taken at capture).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def fft_causal_conv(u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``u [B, D, L]`` convolved with ``h [D, K]`` (any K; only the first L taps matter)."""
    L = u.shape[-1]
    n = 2 * L
    uf = torch.fft.rfft(u.float(), n=n)
    hf = torch.fft.rfft(h.float(), n=n)
    return torch.fft.irfft(uf * hf, n=n)[..., :L].to(u.dtype)


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


class Featurizer(nn.Module):
    """Short causal depthwise conv over ``[B, D, L]``."""

    def __init__(self, d: int, k: int):
        super().__init__()
        self.conv = nn.Conv1d(d, d, k, groups=d, padding=k - 1)

    def forward(self, u):
        return self.conv(u)[..., : u.shape[-1]]


class MediumFilter(nn.Module):
    """Explicit filter of a fixed number of taps, cut to the sequence length."""

    def __init__(self, d: int, taps: int = 128):
        super().__init__()
        self.h = nn.Parameter(torch.randn(d, taps) * torch.exp(-0.05 * torch.arange(taps)) / 4)

    def forward(self, u):
        L = u.shape[-1]
        h = self.h[:, :L]
        return fft_causal_conv(u, h)


class ModalFilter(nn.Module):
    """Long filter ``h[d, t] = Re(sum_n r[d, n] * p[d, n] ** t)``, ``|p| < 1``."""

    def __init__(self, d: int, order: int = 4):
        super().__init__()
        self.log_mag = nn.Parameter(-torch.rand(d, order) * 0.2 - 0.01)
        self.angle = nn.Parameter(torch.rand(d, order) * math.pi)
        self.res = nn.Parameter(torch.randn(d, order, 2) / order)

    def forward(self, u):
        L = u.shape[-1]
        t = torch.arange(L, device=u.device, dtype=torch.float32)
        pole = torch.polar(self.log_mag.exp(), self.angle)             # [d, n]
        r = torch.view_as_complex(self.res)                            # [d, n]
        h = (r[..., None] * pole[..., None] ** t).real.sum(1)          # [d, L]
        return fft_causal_conv(u, h)


class FixedTapShift(nn.Module):
    """H3-style shift kernel: ``N`` learned taps, cut to ``min(N, L)``, zero-padded to ``L``."""

    def __init__(self, d: int, taps: int = 16):
        super().__init__()
        self.taps = taps
        self.k = nn.Parameter(torch.randn(d, taps) / taps)

    def forward(self, u):
        L = u.shape[-1]
        k = self.k[:, : min(self.taps, L)]
        if self.taps < L:
            k = F.pad(k, (0, L - self.taps))
        return fft_causal_conv(u, k)


class MultiRangeBlock(nn.Module):
    """Featurize (short convs) -> gate -> one of the three long-ish filters -> gated MLP."""

    def __init__(self, d: int, kind: str, k_short: int):
        super().__init__()
        self.norm = RMSNorm(d)
        self.proj = nn.Linear(d, 3 * d)
        self.feat = Featurizer(3 * d, k_short)
        self.filt = {"medium": MediumFilter, "modal": ModalFilter, "shift": FixedTapShift}[kind](d)
        self.out = nn.Linear(d, d)
        self.mlp_norm = RMSNorm(d)
        self.w12 = nn.Linear(d, 4 * d)
        self.w3 = nn.Linear(2 * d, d)

    def forward(self, x):
        z = self.proj(self.norm(x)).transpose(1, 2)                    # [B, 3D, L]
        q, k, v = self.feat(z).chunk(3, dim=1)
        y = q * self.filt(k * v)
        x = x + self.out(y.transpose(1, 2))
        a, b = self.w12(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.w3(F.silu(a) * b)


class MultiRangeLM(nn.Module):
    """Evo 2-style stack: blocks with short featurizers and medium / modal / shift filters."""

    def __init__(self, vocab: int = 32, d: int = 16, kinds=("medium", "modal", "medium"), k_short=(3, 7, 5)):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(MultiRangeBlock(d, kd, ks) for kd, ks in zip(kinds, k_short))
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        x = self.emb(ids)
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))


def build_multirange() -> nn.Module:
    torch.manual_seed(0)
    return MultiRangeLM().eval()


def build_shift() -> nn.Module:
    torch.manual_seed(1)
    return MultiRangeLM(kinds=("shift", "modal"), k_short=(3, 3)).eval()
