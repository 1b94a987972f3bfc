"""Small reference LCSM language models in plain PyTorch (for the demo and the benchmarks).

* :class:`HyenaLM`: Hyena, safari style (below);
* :class:`StripedHyenaLM`: a StripedHyena / Evo 2-style stack: RMSNorm, short featurizer
  convolutions, modal (sum of damped complex exponentials) long filters, gated MLPs.


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

__all__ = ["HyenaLM", "StripedHyenaLM"]


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


class _RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class _ModalFilter(nn.Module):
    """k[c, t] = Re(sum_n r[c, n] * p[c, n]^t): ``state`` damped complex modes per channel
    (poles inside the unit circle), computed for t < L: valid at any length."""

    def __init__(self, d: int, state: int = 8):
        super().__init__()
        self.log_decay = nn.Parameter(torch.log(torch.linspace(0.002, 0.2, d * state)).reshape(d, state))
        self.freq = nn.Parameter(torch.rand(d, state) * math.pi)
        self.residue_re = nn.Parameter(torch.randn(d, state) / math.sqrt(state))
        self.residue_im = nn.Parameter(torch.randn(d, state) / math.sqrt(state))

    def forward(self, L: int) -> torch.Tensor:
        t = torch.arange(L, device=self.freq.device, dtype=torch.float32)
        decay = torch.exp(-torch.exp(self.log_decay)[..., None] * t)         # [d, N, L]
        ang = self.freq[..., None] * t
        k = decay * (self.residue_re[..., None] * torch.cos(ang) - self.residue_im[..., None] * torch.sin(ang))
        return k.sum(1)                                                      # [d, L]


class _StripedMixer(nn.Module):
    """Hyena operator, StripedHyena style: in-projection, short featurizer conv (channel-last,
    left-padded), modal long filter through an FFT conv of size 2L, gating, out-projection."""

    def __init__(self, d: int, short_k: int = 3, state: int = 8):
        super().__init__()
        self.in_proj = nn.Linear(d, 3 * d, bias=False)
        self.short_w = nn.Parameter(torch.randn(3 * d, 1, short_k) / short_k)
        self.filt = _ModalFilter(d, state)
        self.D = nn.Parameter(torch.randn(d) * 0.1)
        self.out_proj = nn.Linear(d, d, bias=False)
        self.k = short_k

    def forward(self, x):                                   # [B, L, d]
        L = x.shape[1]
        z = F.conv1d(F.pad(self.in_proj(x).transpose(1, 2), (self.k - 1, 0)), self.short_w,
                     groups=self.short_w.shape[0])          # [B, 3d, L]
        q, k, v = z.chunk(3, dim=1)
        u = k * v
        n = 2 * L
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(self.filt(L), n=n), n=n)[..., :L]
        y = (y + u * self.D[:, None]) * q
        return self.out_proj(y.transpose(1, 2))


class _GatedMLP(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d, hidden, bias=False)
        self.w3 = nn.Linear(d, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class _StripedBlock(nn.Module):
    def __init__(self, d: int, state: int):
        super().__init__()
        self.n1, self.n2 = _RMSNorm(d), _RMSNorm(d)
        self.mixer = _StripedMixer(d, state=state)
        self.mlp = _GatedMLP(d, (8 * d // 3 + 63) // 64 * 64)

    def forward(self, x):
        x = x + self.mixer(self.n1(x))
        return x + self.mlp(self.n2(x))


class StripedHyenaLM(nn.Module):
    """StripedHyena / Evo 2-style LM: ids [B, L] -> logits [B, L, vocab].

    Per layer: RMSNorm, a Hyena operator with a short featurizer conv (k = 3) and a modal long
    filter (``state`` damped complex modes per channel, valid at any length), RMSNorm, a gated
    (SwiGLU) MLP. Args: ``vocab``, ``d_model``, ``n_layers``, ``state``.
    """

    def __init__(self, vocab: int = 256, d_model: int = 256, n_layers: int = 4, state: int = 8):
        super().__init__()
        self.emb = nn.Embedding(vocab, d_model)
        self.blocks = nn.ModuleList(_StripedBlock(d_model, state) for _ in range(n_layers))
        self.norm = _RMSNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))
