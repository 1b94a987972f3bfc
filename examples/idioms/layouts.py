"""Layouts and FFT spellings.

* :class:`ComplexFFTNet` - channel-last ``[B, L, D]``, full complex ``torch.fft.fft(u, n=2L,
  dim=1) * torch.fft.fft(k, n=2L, dim=0)``, ``ifft``, ``.real``, ``[:, :L]``; the filter is a
  closed-form damped oscillation ``exp(-a_d t) cos(w_d t + phi_d)`` over ``arange(L)``.
* :class:`Pow2ChannelFirstNet` - channel-first ``[B, D, L]`` end to end, FFT size
  ``2 ** math.ceil(math.log2(2 * L))``, rfft/irfft along ``dim=-1``, explicit kernel param.
* :class:`BitLengthNet` - channel-last, FFT size ``1 << (2 * L - 1).bit_length()`` (the next
  power of two >= 2L), rfft/irfft along ``dim=-2``, with ``.float()`` / ``.type_as`` casts.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_LEN = 256


# ------------------------------------------------------------------ complex fft, channel-last

class DampedOscFilter(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.log_a = nn.Parameter(torch.log(torch.linspace(0.03, 0.5, d)))
        self.omega = nn.Parameter(torch.rand(d) * 1.5)
        self.phi = nn.Parameter(torch.rand(d) * 3.0)
        self.amp = nn.Parameter(torch.randn(d) * 0.5)

    def forward(self, L):
        t = torch.arange(L, dtype=torch.float32, device=self.amp.device)[:, None]  # [L, 1]
        return self.amp * torch.exp(-self.log_a.exp() * t) * torch.cos(self.omega * t + self.phi)


def complex_fft_conv(u, k):
    """u [B, L, D], k [L, D]: full complex FFT conv along time, real part."""
    L = u.shape[1]
    U = torch.fft.fft(u, n=2 * L, dim=1)
    K = torch.fft.fft(k, n=2 * L, dim=0)
    return torch.fft.ifft(U * K, dim=1).real[:, :L]


class ComplexFFTLayer(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.w_in = nn.Linear(d, 2 * d)
        self.filt = DampedOscFilter(d)
        self.w_out = nn.Linear(d, d)

    def forward(self, x):
        u, z = self.w_in(self.ln(x)).chunk(2, -1)
        y = complex_fft_conv(u, self.filt(x.shape[1]))  # LONG CONV
        return x + self.w_out(y * torch.sigmoid(z))


class ComplexFFTNet(nn.Module):
    def __init__(self, vocab, d, n_layers):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.layers = nn.Sequential(*[ComplexFFTLayer(d) for _ in range(n_layers)])
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        return self.head(self.layers(self.emb(ids)))


# ------------------------------------------------------------------ pow2 (log2), channel-first

class Pow2Conv(nn.Module):
    def __init__(self, ch, max_len=MAX_LEN):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(ch, max_len) / math.sqrt(max_len) * 3.0)
        self.register_buffer("window", torch.exp(-torch.arange(max_len) / 20.0))

    def forward(self, u):  # [B, C, L]
        L = u.shape[-1]
        k = self.weight[:, :L] * self.window[:L]
        fft_size = 2 ** math.ceil(math.log2(2 * L))
        uf = torch.fft.rfft(u, n=fft_size, dim=-1)
        kf = torch.fft.rfft(k, n=fft_size, dim=-1)
        return torch.fft.irfft(uf * kf, n=fft_size, dim=-1)[..., :L]  # LONG CONV


class Pow2ChannelFirstNet(nn.Module):
    def __init__(self, vocab, ch, n_layers):
        super().__init__()
        self.embedding = nn.Embedding(vocab, ch)
        self.convs = nn.ModuleList(Pow2Conv(ch) for _ in range(n_layers))
        self.mix = nn.ModuleList(nn.Conv1d(ch, ch, 1) for _ in range(n_layers))  # pointwise
        self.bn = nn.ModuleList(nn.BatchNorm1d(ch) for _ in range(n_layers))  # eval: per position
        self.readout = nn.Conv1d(ch, vocab, 1)

    def forward(self, ids):
        h = self.embedding(ids).transpose(1, 2)  # [B, C, L]
        for conv, mix, bn in zip(self.convs, self.mix, self.bn):
            h = h + mix(F.gelu(conv(bn(h))))
        return self.readout(h).transpose(1, 2)  # [B, L, V]


# ------------------------------------------------------------ pow2 (bit_length), dim=-2, casts

class BitLengthLayer(nn.Module):
    def __init__(self, d, width, max_len=MAX_LEN):
        super().__init__()
        self.max_len = max_len
        self.in_proj = nn.Linear(d, 2 * d)
        self.filter_net = nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, d))
        self.decay = nn.Parameter(torch.full((d,), -2.5))
        self.out_proj = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)

    def kernel(self, L):
        pos = torch.arange(L, dtype=torch.float32, device=self.decay.device)[:, None]
        feats = torch.cat([pos / self.max_len, torch.cos(pos * 0.3)], dim=-1)  # [L, 2]
        return self.filter_net(feats) * torch.exp(-self.decay.exp() * pos)  # [L, d]

    def forward(self, x):  # [B, L, d]
        L = x.size(-2)
        a, b = self.in_proj(self.norm(x)).chunk(2, dim=-1)
        n = 1 << (2 * L - 1).bit_length()
        Af = torch.fft.rfft(a.float(), n=n, dim=-2)
        Kf = torch.fft.rfft(self.kernel(L).float(), n=n, dim=-2)
        y = torch.fft.irfft(Af * Kf, n=n, dim=-2)[..., :L, :].type_as(x)  # LONG CONV
        return x + self.out_proj(y * F.silu(b))


class BitLengthNet(nn.Module):
    def __init__(self, vocab, d, n_layers, width=10):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(BitLengthLayer(d, width) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.tok_emb(ids)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


VOCAB = 16


def build_complex_fft():
    """2 layers: 2 LONG (fft/ifft/.real, channel-last dim=1), 0 SHORT."""
    torch.manual_seed(501)
    return ComplexFFTNet(VOCAB, d=12, n_layers=2).eval()


def build_pow2_log2():
    """2 layers: 2 LONG (rfft n=2**ceil(log2(2L)), channel-first dim=-1), 0 SHORT."""
    torch.manual_seed(502)
    m = Pow2ChannelFirstNet(VOCAB, ch=16, n_layers=2)
    with torch.no_grad():  # non-trivial running stats so eval BatchNorm is not the identity
        for bn in m.bn:
            bn.running_mean.normal_(0, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def build_pow2_bitlength():
    """1 layer: 1 LONG (rfft n=1<<(2L-1).bit_length(), dim=-2, casts), 0 SHORT."""
    torch.manual_seed(503)
    return BitLengthNet(VOCAB, d=16, n_layers=1).eval()
