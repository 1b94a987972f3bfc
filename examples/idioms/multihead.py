"""Multi-head Hyena: one implicit filter per HEAD, shared by the head's channels.

The filter generator produces ``k: [H, L]``; the ``D = H * head_dim`` channels use it by
* ``repeat_interleave``: ``k.repeat_interleave(head_dim, dim=0)`` -> ``[D, L]``;
* ``expand``/``reshape``: ``k[:, None, :].expand(H, head_dim, L).reshape(D, L)``;
* broadcasting over a head axis: the signal is viewed as ``[B, H, head_dim, L]`` and
  multiplied in the frequency domain by ``K[:, None, :]`` (no channel copy of the filter).

Channel ``c`` always uses head ``c // head_dim``. Positional features are computed on the fly
over ``arange(L)`` and normalized by the fixed ``max_len`` (prefix consistent).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_LEN = 256


class HeadFilter(nn.Module):
    def __init__(self, n_heads, width=8, n_freqs=2, max_len=MAX_LEN):
        super().__init__()
        self.max_len = max_len
        self.register_buffer("freqs", torch.arange(1, n_freqs + 1).float() * math.pi)
        self.mlp = nn.Sequential(
            nn.Linear(1 + 2 * n_freqs, width), nn.SiLU(), nn.Linear(width, n_heads)
        )
        self.decay = nn.Parameter(torch.linspace(0.05, 0.4, n_heads))

    def forward(self, L, device=None):
        t = torch.arange(L, device=device).float()
        tn = (t / self.max_len)[:, None]
        feats = torch.cat([tn, torch.sin(tn * self.freqs), torch.cos(tn * self.freqs)], dim=-1)
        k = self.mlp(feats)  # [L, H]
        k = k * torch.exp(-F.softplus(self.decay)[None, :] * t[:, None])
        return k.transpose(0, 1)  # [H, L]


class MultiHeadHyena(nn.Module):
    def __init__(self, d_model, n_heads, share="repeat_interleave", short_conv=True):
        super().__init__()
        assert d_model % n_heads == 0
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.share = share
        self.proj_in = nn.Linear(d_model, 3 * d_model)
        self.short = (
            nn.Conv1d(3 * d_model, 3 * d_model, 3, padding=2, groups=3 * d_model)
            if short_conv else None
        )
        self.filters = HeadFilter(n_heads)
        self.skip = nn.Parameter(torch.randn(d_model) * 0.1)
        self.proj_out = nn.Linear(d_model, d_model)

    def _conv(self, v, k):
        """v: [B, D, L]; k: [H, L] -> LONG CONV with head-shared filters."""
        B, D, L = v.shape
        nfft = 2 * L
        if self.share == "repeat_interleave":
            k_full = k.repeat_interleave(self.head_dim, dim=0)  # [D, L]
            y = torch.fft.irfft(torch.fft.rfft(v, n=nfft) * torch.fft.rfft(k_full, n=nfft), n=nfft)
        elif self.share == "expand":
            k_full = k[:, None, :].expand(self.n_heads, self.head_dim, L).reshape(D, L)
            y = torch.fft.irfft(torch.fft.rfft(v, n=nfft) * torch.fft.rfft(k_full, n=nfft), n=nfft)
        else:  # "broadcast": heads as a separate axis
            vh = v.reshape(B, self.n_heads, self.head_dim, L)
            Vf = torch.fft.rfft(vh, n=nfft)
            Kf = torch.fft.rfft(k, n=nfft)[None, :, None, :]  # [1, H, 1, F]
            y = torch.fft.irfft(Vf * Kf, n=nfft).reshape(B, D, nfft)
        return y[..., :L]

    def forward(self, x):  # [B, L, D]
        L = x.shape[1]
        z = self.proj_in(x).transpose(1, 2)  # [B, 3D, L]
        if self.short is not None:
            z = self.short(z)[..., :L]  # SHORT CONV
        q, g, v = z.chunk(3, dim=1)
        k = self.filters(L, device=x.device)
        y = self._conv(g * v, k) + (g * v) * self.skip[:, None]  # LONG CONV + skip
        y = (q * y).transpose(1, 2)
        return self.proj_out(y)


class MultiHeadHyenaLM(nn.Module):
    def __init__(self, vocab, d_model, n_heads, n_layers, share, short_conv=True):
        super().__init__()
        self.emb = nn.Embedding(vocab, d_model)
        self.mixers = nn.ModuleList(
            MultiHeadHyena(d_model, n_heads, share=share, short_conv=short_conv)
            for _ in range(n_layers)
        )
        self.norms = nn.ModuleList(nn.RMSNorm(d_model) for _ in range(n_layers))
        self.norm_out = nn.RMSNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, ids):
        x = self.emb(ids)
        for norm, mixer in zip(self.norms, self.mixers):
            x = x + mixer(norm(x))
        return self.lm_head(self.norm_out(x))


VOCAB = 40


def build_repeat_interleave():
    """2 layers, 4 heads, repeat_interleave: 2 LONG, 2 SHORT."""
    torch.manual_seed(401)
    return MultiHeadHyenaLM(VOCAB, d_model=16, n_heads=4, n_layers=2, share="repeat_interleave").eval()


def build_expand():
    """1 layer, 4 heads, expand+reshape: 1 LONG, 1 SHORT."""
    torch.manual_seed(402)
    return MultiHeadHyenaLM(VOCAB, d_model=16, n_heads=4, n_layers=1, share="expand").eval()


def build_broadcast():
    """2 layers, 2 heads, head axis broadcast in the frequency domain, no short conv: 2 LONG, 0 SHORT."""
    torch.manual_seed(403)
    return MultiHeadHyenaLM(VOCAB, d_model=16, n_heads=2, n_layers=2, share="broadcast",
                            short_conv=False).eval()
