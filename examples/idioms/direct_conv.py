"""Long causal convolutions computed directly with ``F.conv1d`` (no FFT).

``conv1d`` is a cross-correlation, so the filter is flipped along time and the input is
padded with ``L - 1`` zeros on the left: ``y[t] = sum_{s<=t} u[s] k[t-s]`` exactly.

* :class:`LeftPadConvNet` - ``F.pad(x, (L - 1, 0))`` then ``F.conv1d(x, k.flip(-1)[:, None],
  groups=C)``; explicit filter ``nn.Parameter([C, max_len])`` sliced ``[:, :L]``. Its short
  conv is an ``nn.Conv1d(k=4, padding=3)`` cut back with ``[..., :-3]``.
* :class:`PadSliceConvNet` - ``F.conv1d(x, w, padding=L - 1, groups=C)[..., :L]`` (symmetric
  padding, causal part kept by the slice); filter from a small GELU MLP over positional
  features ``arange(L) / max_len`` computed on the fly.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_LEN = 256


def causal_long_conv1d(x, kernel):
    """x: (batch, channels, time); kernel: (channels, time). Causal full-length conv."""
    T = x.shape[-1]
    x = F.pad(x, (T - 1, 0))
    w = kernel.flip(-1).unsqueeze(1)  # (C, 1, T)
    return F.conv1d(x, w, groups=kernel.shape[0])


class LeftPadMixer(nn.Module):
    def __init__(self, channels, max_len, short_k=4):
        super().__init__()
        self.in_proj = nn.Linear(channels, 2 * channels)
        self.short = nn.Conv1d(channels, channels, short_k, padding=short_k - 1, groups=channels)
        self.short_k = short_k
        pos = torch.arange(max_len, dtype=torch.float32)
        self.filt = nn.Parameter(torch.randn(channels, max_len) * 0.25 * torch.exp(-pos / 16.0))
        self.out_proj = nn.Linear(channels, channels)

    def forward(self, x):  # x: (B, T, C)
        T = x.shape[1]
        a, b = self.in_proj(x).chunk(2, dim=-1)
        a = a.transpose(-1, -2)
        a = self.short(a)[..., : -(self.short_k - 1)]  # SHORT CONV (pad 3 both sides, drop tail)
        y = causal_long_conv1d(a, self.filt[:, :T])  # LONG CONV
        y = y.transpose(-1, -2)
        return self.out_proj(y * F.silu(b))


class LeftPadConvNet(nn.Module):
    def __init__(self, vocab, channels, depth, max_len=MAX_LEN):
        super().__init__()
        self.embed = nn.Embedding(vocab, channels)
        self.blocks = nn.ModuleList(LeftPadMixer(channels, max_len) for _ in range(depth))
        self.norms = nn.ModuleList(nn.LayerNorm(channels) for _ in range(depth))
        self.unembed = nn.Linear(channels, vocab)

    def forward(self, tokens):
        x = self.embed(tokens)
        for blk, nrm in zip(self.blocks, self.norms):
            x = nrm(x + blk(x))  # post-norm residual
        return self.unembed(x)


class MLPFilter(nn.Module):
    """k[c, t] = MLP([t/T, sin, cos])[c] * exp(-rate_c * t); features computed over arange(L)."""

    def __init__(self, channels, width, max_len):
        super().__init__()
        self.max_len = max_len
        self.net = nn.Sequential(nn.Linear(3, width), nn.GELU(), nn.Linear(width, channels))
        self.log_rate = nn.Parameter(torch.linspace(-4.0, -1.5, channels))

    def forward(self, L, device=None):
        pos = torch.arange(L, device=device, dtype=torch.float32)
        tt = pos / self.max_len  # normalized by the fixed max length: prefix consistent
        feats = torch.stack([tt, torch.sin(6.2832 * tt * 4), torch.cos(6.2832 * tt * 4)], dim=-1)
        k = self.net(feats).t()  # (C, L)
        return k * torch.exp(-self.log_rate.exp()[:, None] * pos[None, :])


class PadSliceMixer(nn.Module):
    def __init__(self, channels, width, max_len):
        super().__init__()
        self.proj = nn.Linear(channels, 3 * channels)
        self.filter = MLPFilter(channels, width, max_len)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, h):  # (B, L, C)
        L = h.size(1)
        x1, x2, v = self.proj(h).split(h.size(-1), dim=-1)
        v = (v * x1).permute(0, 2, 1)  # (B, C, L)
        k = self.filter(L, device=h.device)
        # LONG CONV: symmetric padding L-1 with the flipped filter, then the causal [..., :L]
        y = F.conv1d(v, k.flip(-1).unsqueeze(1), padding=L - 1, groups=v.shape[1])[..., :L]
        y = y + v * self.bias[:, None]
        return self.proj_out(y.permute(0, 2, 1) * x2)


class PadSliceConvNet(nn.Module):
    def __init__(self, vocab, channels, depth, width=12, max_len=MAX_LEN):
        super().__init__()
        self.embed = nn.Embedding(vocab, channels)
        self.layers = nn.ModuleList(PadSliceMixer(channels, width, max_len) for _ in range(depth))
        self.lns = nn.ModuleList(nn.LayerNorm(channels) for _ in range(depth))
        self.out = nn.Linear(channels, vocab)

    def forward(self, tokens):
        h = self.embed(tokens)
        for ln, layer in zip(self.lns, self.layers):
            h = h + layer(ln(h))
        return self.out(h)


VOCAB = 20


def build_leftpad():
    """2 layers: 2 LONG (F.pad(L-1, 0) + conv1d), 2 SHORT (Conv1d k=4 pad 3, [..., :-3])."""
    torch.manual_seed(301)
    return LeftPadConvNet(VOCAB, channels=12, depth=2).eval()


def build_padslice():
    """2 layers: 2 LONG (conv1d(padding=L-1)[..., :L]), 0 SHORT."""
    torch.manual_seed(302)
    return PadSliceConvNet(VOCAB, channels=12, depth=2).eval()
