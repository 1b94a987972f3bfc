"""Module state touched in forward, and absolute positions.

* :class:`CachedFilterLM` - each mixer keeps its generated filter in a non-persistent buffer
  ``_k_cache`` and recomputes it (under ``no_grad``) whenever the requested length differs
  from the cached one; positional features come from a buffer ``t`` registered at
  ``max_len`` and sliced ``[:L]``.
* :class:`PosEmbHyenaLM` - learned absolute position embeddings
  ``nn.Embedding(max_len, d)`` indexed by ``torch.arange(L)`` and added to the token
  embeddings (GPT-2 style ``wpe``), then Hyena-ish mixers with explicit filters.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_LEN = 256


class CachedLongConv(nn.Module):
    def __init__(self, dim, hidden=12, max_len=MAX_LEN):
        super().__init__()
        self.register_buffer("t", torch.linspace(0.0, 1.0, max_len)[:, None])  # [max_len, 1]
        self.register_buffer("_k_cache", torch.zeros(dim, 0), persistent=False)
        self.gen = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.rate = nn.Parameter(torch.rand(dim) * 20 + 5)
        self.d_skip = nn.Parameter(torch.ones(dim))

    def _filter(self, L):
        tt = self.t[:L]  # [L, 1]
        return (self.gen(tt) * torch.exp(-self.rate * tt)).t()  # [dim, L]

    def forward(self, u):  # u: [B, dim, L]
        L = u.shape[-1]
        if self._k_cache.shape[-1] != L:  # length changed: refresh the cache
            with torch.no_grad():
                self._k_cache = self._filter(L)
        k = self._k_cache
        fft_n = 2 * L
        y = torch.fft.irfft(torch.fft.rfft(u, n=fft_n) * torch.fft.rfft(k, n=fft_n), n=fft_n)
        return y[..., :L] + u * self.d_skip[:, None]  # LONG CONV + skip


class CachedFilterBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc_in = nn.Linear(dim, 2 * dim)
        self.conv = CachedLongConv(dim)
        self.fc_out = nn.Linear(dim, dim)

    def forward(self, x):
        a, b = self.fc_in(self.norm(x)).chunk(2, dim=-1)
        y = self.conv(a.transpose(1, 2)).transpose(1, 2)
        return x + self.fc_out(y * torch.sigmoid(b))


class CachedFilterLM(nn.Module):
    def __init__(self, vocab, dim, n_layers):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(CachedFilterBlock(dim) for _ in range(n_layers))
        self.ln_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids):
        x = self.emb(ids)
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_out(x))


class ExplicitMixer(nn.Module):
    def __init__(self, d, max_len=MAX_LEN):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.dw = nn.Conv1d(d, d, kernel_size=3, groups=d, padding=2, bias=False)
        self.kernel = nn.Parameter(torch.randn(max_len, d) * 0.2 * torch.exp(-torch.arange(max_len)[:, None] / 12.0))
        self.o = nn.Linear(d, d)

    def forward(self, x):  # [B, L, d]
        L = x.size(1)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        k = self.dw(k.transpose(1, 2))[..., :L].transpose(1, 2)  # SHORT CONV
        kv = k * v
        n = 2 * L
        y = torch.fft.irfft(
            torch.fft.rfft(kv, n=n, dim=1) * torch.fft.rfft(self.kernel[:L], n=n, dim=0), n=n, dim=1
        )[:, :L]  # LONG CONV
        return self.o(q * y)


class PosEmbHyenaLM(nn.Module):
    def __init__(self, vocab, d, n_layers, max_len=MAX_LEN):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(max_len, d)
        self.h = nn.ModuleList(ExplicitMixer(d) for _ in range(n_layers))
        self.ln = nn.ModuleList(nn.LayerNorm(d) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, input_ids):
        B, L = input_ids.shape
        pos = torch.arange(0, L, dtype=torch.long, device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(pos)[None]  # TIME SOURCE: absolute positions
        for ln, blk in zip(self.ln, self.h):
            x = x + blk(ln(x))
        return self.lm_head(F.layer_norm(x, x.shape[-1:], self.ln_f.weight, self.ln_f.bias))


VOCAB = 28


def build_cached_filter():
    """2 layers: 2 LONG (filter from the _k_cache buffer), 0 SHORT."""
    torch.manual_seed(701)
    return CachedFilterLM(VOCAB, dim=16, n_layers=2).eval()


def build_posemb():
    """2 layers: 2 LONG, 2 SHORT; wpe(arange(L)) added at the input."""
    torch.manual_seed(702)
    return PosEmbHyenaLM(VOCAB, d=16, n_layers=2).eval()
