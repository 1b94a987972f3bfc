"""A causal scan along time: running-mean (cumulative) normalization with ``cumsum``.

``mu[t] = cumsum(x)[t] / (t + 1)``, ``var[t] = cumsum((x - mu)^2)[t] / (t + 1)``: every output
depends on positions ``<= t`` only, so the model is causal and prefix consistent. The front
end may stream the ``cumsum`` exactly (it is a running sum: O(1) state) or refuse it with a
clear reason; both are acceptable. The ``cumsum`` is NOT counted as a long conv.
"""

from __future__ import annotations

import torch
import torch.nn as nn

MAX_LEN = 256


class RunningNorm(nn.Module):
    """Causal 'instance norm': statistics over the past of each channel."""

    def __init__(self, dim, eps=1e-4):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):  # [B, L, D]
        count = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)[None, :, None]
        mean = x.cumsum(dim=1) / count  # CUMSUM (scan)
        var = (x - mean).pow(2).cumsum(dim=1) / count  # CUMSUM (scan)
        return (x - mean) / torch.sqrt(var + 1.0) * self.weight


class ScanHyenaLayer(nn.Module):
    def __init__(self, dim, max_len=MAX_LEN):
        super().__init__()
        self.rn = RunningNorm(dim)
        self.proj = nn.Linear(dim, 2 * dim)
        self.filt = nn.Parameter(torch.randn(dim, max_len) * 0.3 * torch.exp(-torch.arange(max_len) / 8.0))
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        L = x.shape[1]
        a, gate = self.proj(self.rn(x)).chunk(2, dim=-1)
        a = a.transpose(1, 2)
        spec = torch.fft.rfft(a, n=2 * L) * torch.fft.rfft(self.filt[:, :L], n=2 * L)
        y = torch.fft.irfft(spec, n=2 * L)[..., :L].transpose(1, 2)  # LONG CONV
        return x + self.out(y * torch.tanh(gate))


class ScanLM(nn.Module):
    def __init__(self, vocab, dim):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.layer = ScanHyenaLayer(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids):
        return self.head(self.layer(self.emb(ids)))


VOCAB = 16


def build_cumsum():
    """1 layer: 1 LONG, 0 SHORT, 2 cumsums (running mean / variance)."""
    torch.manual_seed(901)
    return ScanLM(VOCAB, dim=12).eval()
