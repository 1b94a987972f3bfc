"""Random LCSMs for the fuzz test: compositions of idioms, layouts, filter generators, heads,
and mutations that break causality or prefix consistency.

``FuzzSpec`` says what a model is made of; ``build(spec)`` makes it (seeded, eval mode). The
spec's claim (``spec.causal``) is what the compiler must find: causal models exact when
streamed, the others refused. The fuzz test also checks each claim on the eager model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

FILTERS = ("explicit", "implicit", "modal")
CONVS = ("rfft2L", "rfft_pow2", "rfft_forward", "fft_complex", "conv1d")
LAYOUTS = ("channel_first", "channel_last")
MUTATIONS = (None, "circular", "flip", "future_shift", "softmax_time", "same_pad", "length_norm")


@dataclasses.dataclass(frozen=True)
class FuzzSpec:
    """One random model. ``mutation`` None: a causal, prefix-consistent LCSM."""

    seed: int = 0
    ids: bool = True
    d: int = 8
    layers: int = 1
    filt: str = "explicit"
    conv: str = "rfft2L"
    layout: str = "channel_first"
    heads: int = 1
    short: bool = False
    skip: bool = True
    gate: bool = True
    mutation: Optional[str] = None

    @property
    def causal(self) -> bool:
        return self.mutation is None


class _Filter(nn.Module):
    """Filters ``[C, L]`` from one of three generators."""

    def __init__(self, kind: str, C: int, max_len: int = 512):
        super().__init__()
        self.kind = kind
        if kind == "explicit":
            self.k = nn.Parameter(torch.randn(C, max_len) * torch.exp(-0.02 * torch.arange(max_len)) / 4)
        elif kind == "implicit":
            self.freq = nn.Parameter(torch.randn(1, 4))
            self.mlp = nn.Sequential(nn.Linear(9, 16), nn.GELU(), nn.Linear(16, C))
            self.decay = nn.Parameter(torch.rand(C) * 0.1 + 0.01)
        else:
            self.mag = nn.Parameter(-torch.rand(C, 3) * 0.3 - 0.02)
            self.ang = nn.Parameter(torch.rand(C, 3) * math.pi)
            self.res = nn.Parameter(torch.randn(C, 3, 2) / 3)

    def forward(self, L: int, device) -> torch.Tensor:
        if self.kind == "explicit":
            return self.k[:, :L]
        t = torch.arange(L, device=device, dtype=torch.float32)
        if self.kind == "implicit":
            z = t[:, None] / 64.0
            feats = torch.cat([z, torch.sin(z * self.freq), torch.cos(z * self.freq)], -1)   # [L, 9]
            h = self.mlp(feats).transpose(0, 1)                                            # [C, L]
            return h * torch.exp(-self.decay[:, None] * t)
        pole = torch.polar(self.mag.exp(), self.ang)
        return (torch.view_as_complex(self.res)[..., None] * pole[..., None] ** t).real.sum(1)


def _conv(u: torch.Tensor, k: torch.Tensor, how: str, mutation: Optional[str]) -> torch.Tensor:
    """Causal (or mutated) convolution of ``u [B, C, L]`` with ``k [C, L]`` along the last dim."""
    L = u.shape[-1]
    if how == "conv1d":
        pad = (L - 1, 0) if mutation != "same_pad" else ((L - 1) // 2, L - 1 - (L - 1) // 2)
        return F.conv1d(F.pad(u, pad), k.flip(-1)[:, None], groups=u.shape[1])
    n = L if mutation == "circular" else (2 ** math.ceil(math.log2(2 * L)) if how == "rfft_pow2" else 2 * L)
    if how == "fft_complex":
        y = torch.fft.ifft(torch.fft.fft(u, n=n) * torch.fft.fft(k, n=n), n=n).real
    elif how == "rfft_forward":
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n, norm="forward"), n=n, norm="forward")
    else:
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n) / n, n=n) * n
    if mutation == "same_pad":
        return y[..., L // 2: L // 2 + L] if y.shape[-1] >= L // 2 + L else y[..., :L]
    return y[..., :L]


def _conv_time_middle(u: torch.Tensor, k: torch.Tensor, how: str, mutation: Optional[str]) -> torch.Tensor:
    """The FFT convolution of ``u [B, L, C]`` (channel-last, FFT along dim 1) with ``k [C, L]``."""
    L = u.shape[1]
    n = L if mutation == "circular" else (2 ** math.ceil(math.log2(2 * L)) if how == "rfft_pow2" else 2 * L)
    kt = k.transpose(0, 1)                                                 # [L, C]
    if how == "fft_complex":
        y = torch.fft.ifft(torch.fft.fft(u, n=n, dim=1) * torch.fft.fft(kt, n=n, dim=0), n=n, dim=1).real
    else:
        norm = "forward" if how == "rfft_forward" else "backward"
        y = torch.fft.irfft(torch.fft.rfft(u, n=n, dim=1) * torch.fft.rfft(kt, n=n, dim=0, norm=norm), n=n,
                            dim=1, norm=norm)
    if mutation == "same_pad":
        return y[:, L // 2: L // 2 + L] if y.shape[1] >= L // 2 + L else y[:, :L]
    return y[:, :L]


class _Block(nn.Module):
    def __init__(self, s: FuzzSpec):
        super().__init__()
        self.s = s
        d = s.d
        self.norm = nn.LayerNorm(d)
        self.proj = nn.Linear(d, 2 * d if s.gate else d)
        self.short = nn.Conv1d(d, d, 3, groups=d, padding=2) if s.short else None
        self.filt = _Filter(s.filt, d // s.heads)
        self.D = nn.Parameter(torch.randn(d)) if s.skip else None
        self.out = nn.Linear(d, d)

    def forward(self, x):
        s = self.s
        h = self.proj(self.norm(x))
        if s.gate:
            h, g = h.chunk(2, -1)
        u = h.transpose(1, 2)                                              # [B, d, L]
        L = u.shape[-1]
        if self.short is not None:
            u = self.short(u)[..., :L]
        if s.mutation == "flip":
            u = u.flip(-1)
        k = self.filt(L, u.device)
        if s.mutation == "length_norm":
            k = k / L
        if s.heads > 1:
            k = k.repeat_interleave(s.heads, dim=0)
        if s.layout == "channel_last" and s.conv != "conv1d":
            y = _conv_time_middle(u.transpose(1, 2), k, s.conv, s.mutation).transpose(1, 2)
        else:
            y = _conv(u, k, s.conv, s.mutation)
        if self.D is not None:
            y = y + u * self.D[:, None]
        if s.mutation == "future_shift":
            y = torch.roll(y, -1, dims=-1)
        y = y.transpose(1, 2)                                              # [B, L, d]
        if s.mutation == "softmax_time":
            y = y * torch.softmax(y, dim=1)
        if s.gate:
            y = y * torch.sigmoid(g)
        return x + self.out(y)


class FuzzLM(nn.Module):
    def __init__(self, s: FuzzSpec, vocab: int = 16, d_in: int = 3):
        super().__init__()
        self.inp = nn.Embedding(vocab, s.d) if s.ids else nn.Linear(d_in, s.d)
        self.blocks = nn.ModuleList(_Block(s) for _ in range(s.layers))
        self.head = nn.Linear(s.d, vocab if s.ids else 2)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = b(h)
        return self.head(h)


def build(spec: FuzzSpec) -> nn.Module:
    torch.manual_seed(spec.seed)
    return FuzzLM(spec).eval()


def make_input(spec: FuzzSpec, B: int, L: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(spec.seed + 7 * L + B)
    if spec.ids:
        return torch.randint(0, 16, (B, L), generator=g)
    return torch.randn(B, L, 3, generator=g)
