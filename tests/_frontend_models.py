"""Tiny models for the front-end unit tests (the zoo in tests/zoo covers the idioms in full).

Each is written the way such code is written in the wild; all plain torch, fp32, CPU.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class FFTConvCF(nn.Module):
    """Explicit filter [C, max_len] sliced [:L]; rfft n=2L; channel-first inside; skip D."""

    def __init__(self, vocab=11, d=6, max_len=64, n=None):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.k = nn.Parameter(torch.randn(d, max_len) * torch.exp(-torch.arange(max_len) / 8.0))
        self.D = nn.Parameter(torch.randn(d))
        self.head = nn.Linear(d, vocab)
        self.n = n  # None: 2L (causal); "L": circular

    def forward(self, ids):
        L = ids.shape[1]
        u = self.emb(ids).transpose(1, 2)  # [B, d, L]
        n = 2 * L if self.n is None else L
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(self.k[:, :L], n=n), n=n)[..., :L]
        y = y + u * self.D[:, None]
        return self.head(F.gelu(y.transpose(1, 2)))


class FFTConvCL(nn.Module):
    """Channel-last [B, L, D], FFT along dim 1, complex fft/ifft + .real, casts around."""

    def __init__(self, d_in=3, d=5, max_len=64):
        super().__init__()
        self.proj = nn.Linear(d_in, d)
        self.kern = nn.Parameter(torch.randn(max_len, d) * 0.3)
        self.out = nn.Linear(d, 2)

    def forward(self, x):
        L = x.size(1)
        u = self.proj(x)
        U = torch.fft.fft(u.double(), n=2 * L, dim=1)
        K = torch.fft.fft(self.kern[:L].double(), n=2 * L, dim=0)
        y = torch.fft.ifft(U * K[None], dim=1).real[:, :L].to(u.dtype)
        return self.out(y * torch.sigmoid(u))


class ShortConvLM(nn.Module):
    """Depthwise Conv1d(k=3, padding=2)[..., :L] + F.pad(K-1, 0) conv; k=1 Conv1d (pointwise)."""

    def __init__(self, vocab=9, d=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.short = nn.Conv1d(d, d, 3, padding=2, groups=d)
        self.w2 = nn.Parameter(torch.randn(d, 1, 4))
        self.mix = nn.Conv1d(d, d, 1)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        L = ids.shape[-1]
        u = self.emb(ids).transpose(1, 2)
        u = self.short(u)[..., :L]
        u = F.conv1d(F.pad(u, (3, 0)), self.w2, groups=u.shape[1])
        return self.head(self.mix(u).transpose(1, 2))


class DirectLongConv(nn.Module):
    """Direct long conv: F.conv1d(F.pad(u, (L-1, 0)), k.flip(-1)[:, None], groups=C)."""

    def __init__(self, vocab=7, d=4, max_len=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.k = nn.Parameter(torch.randn(d, max_len) * 0.3)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        L = ids.shape[1]
        u = self.emb(ids).transpose(1, 2)
        y = F.conv1d(F.pad(u, (L - 1, 0)), self.k[:, :L].flip(-1)[:, None], groups=u.shape[1])
        return self.head(y.transpose(1, 2))


class Negative(nn.Module):
    """One non-causal op after a causal FFT conv: kind in softmax / flip / shift / mean /
    centered (two-sided FFT slice) / sameconv (padding=K//2) / linspace / cumsum."""

    def __init__(self, kind, vocab=8, d=4, max_len=64):
        super().__init__()
        self.kind = kind
        self.emb = nn.Embedding(vocab, d)
        self.k = nn.Parameter(torch.randn(d, max_len) * 0.3)
        self.conv = nn.Conv1d(d, d, 3, padding=1, groups=d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        L = ids.shape[1]
        x = self.emb(ids)  # [B, L, d]
        u = x.transpose(1, 2)
        if self.kind == "centered":
            y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(self.k[:, :L], n=2 * L),
                                n=2 * L)[..., L // 2: L // 2 + L]
        elif self.kind == "sameconv":
            y = self.conv(u)
        else:
            y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(self.k[:, :L], n=2 * L),
                                n=2 * L)[..., :L]
        h = y.transpose(1, 2)
        if self.kind == "softmax":
            h = h * torch.softmax(h, dim=1)
        elif self.kind == "flip":
            h = h + torch.flip(h, dims=[1])
        elif self.kind == "shift":
            h = h + F.pad(h[:, 1:], (0, 0, 0, 1))
        elif self.kind == "mean":
            h = h - h.mean(dim=1, keepdim=True)
        elif self.kind == "linspace":
            h = h * torch.linspace(0, 1, L)[None, :, None]
        elif self.kind == "cumsum":
            h = h.cumsum(dim=1) / torch.arange(1, L + 1)[None, :, None]
        return self.head(h)


class PosEmb(nn.Module):
    """Learned absolute positions over arange(L), plus a dict output with a non-tensor entry."""

    def __init__(self, vocab=10, d=4, max_len=32):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(max_len, d)
        self.k = nn.Parameter(torch.randn(d, max_len) * 0.3)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        L = ids.shape[1]
        x = self.wte(ids) + self.wpe(torch.arange(L, device=ids.device))
        u = x.transpose(1, 2)
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(self.k[:, :L], n=2 * L), n=2 * L)[..., :L]
        h = y.transpose(1, 2)
        return {"logits": self.head(h), "hidden": h, "name": "posemb"}


def ids(B, L, vocab=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, L), generator=g)
