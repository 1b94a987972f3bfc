"""A small reference Hyena language model in plain PyTorch (for the demo and the benchmarks).

Nothing in it knows about lcsm-compile: it is the kind of model a researcher trains, written
the safari way (implicit filters: an MLP with sine activations over positional features, an
exponential decay window, FFT convolution of size 2L with a skip term, a short depthwise
causal conv, gating, pre-norm residual blocks with an MLP).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["HyenaLM"]


class _Sin(nn.Module):
    def __init__(self, dim: int, w: float = 10.0):
        super().__init__()
        self.freq = nn.Parameter(w * torch.ones(1, dim))

    def forward(self, x):
        return torch.sin(self.freq * x)


class _ImplicitFilter(nn.Module):
    """k[c, t] = MLP(features(t))[c] * exp(-decay_c * t / max_len) for t < L."""

    def __init__(self, d: int, max_len: int, emb: int = 9, hidden: int = 32):
        super().__init__()
        t = torch.arange(max_len, dtype=torch.float32)[:, None]
        bands = (emb - 1) // 2
        f = torch.arange(1, bands + 1, dtype=torch.float32)[None]
        z = torch.cat([t / max_len, torch.cos(2 * math.pi * f * t / max_len),
                       torch.sin(2 * math.pi * f * t / max_len)], -1)  # [max_len, emb]
        self.register_buffer("z", z)
        self.register_buffer("t", t / max_len)
        self.mlp = nn.Sequential(nn.Linear(emb, hidden), _Sin(hidden), nn.Linear(hidden, hidden), _Sin(hidden),
                                 nn.Linear(hidden, d, bias=False))
        self.register_buffer("decay", torch.linspace(0.3, 4.0, d)[None])

    def forward(self, L: int) -> torch.Tensor:
        h = self.mlp(self.z[:L]) * torch.exp(-self.t[:L] * self.decay * 10)   # [L, d]
        return h.transpose(0, 1)                                              # [d, L]


def _fftconv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    L = u.shape[-1]
    n = 2 * L
    y = torch.fft.irfft(torch.fft.rfft(u.float(), n=n) * torch.fft.rfft(k.float(), n=n), n=n)[..., :L]
    return (y + u * D[:, None]).to(u.dtype)


class _HyenaMixer(nn.Module):
    def __init__(self, d: int, max_len: int, short_k: int = 3):
        super().__init__()
        self.in_proj = nn.Linear(d, 3 * d)
        self.short = nn.Conv1d(3 * d, 3 * d, short_k, padding=short_k - 1, groups=3 * d)
        self.filt = _ImplicitFilter(d, max_len)
        self.D = nn.Parameter(torch.randn(d))
        self.out_proj = nn.Linear(d, d)

    def forward(self, x):                         # x: [B, L, d]
        L = x.shape[1]
        z = self.in_proj(x).transpose(1, 2)       # [B, 3d, L]
        z = self.short(z)[..., :L]                # short causal depthwise conv
        x0, x1, v = z.chunk(3, dim=1)
        y = _fftconv(v * x1, self.filt(L), self.D) * x0   # one long conv, gated
        return self.out_proj(y.transpose(1, 2))


class _Block(nn.Module):
    def __init__(self, d: int, max_len: int):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mixer = _HyenaMixer(d, max_len)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        x = x + self.mixer(self.n1(x))
        return x + self.mlp(self.n2(x))


class HyenaLM(nn.Module):
    """Hyena LM: ids [B, L] -> logits [B, L, vocab] (one long conv and one short conv per layer).

    Args: ``vocab``, ``d_model``, ``n_layers``, ``max_len`` (the longest sequence; the filters'
    positional features are buffers of this length).
    """

    def __init__(self, vocab: int = 256, d_model: int = 256, n_layers: int = 4, max_len: int = 1 << 15):
        super().__init__()
        self.emb = nn.Embedding(vocab, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, max_len) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.max_len = max_len

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))
