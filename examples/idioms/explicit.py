"""Explicit long filters: ``nn.Parameter`` of the full max length, sliced to the input length.

Two styles:

* :class:`LongConvLM` - "Simple Hardware-Efficient Long Convolutions" flavour, everything
  channel-first ``[B, D, L]``: pointwise projections are ``nn.Conv1d(kernel_size=1)`` (NOT
  short convs), a hand-written channel LayerNorm, kernel parameter ``[D, max_len]`` sliced
  ``[:, :L]`` and squashed (soft-threshold), FFT conv along ``dim=-1`` with fp32 casts.
* :class:`H3LM` - H3 flavour, channel-last ``[B, L, D]``: q/k/v projections, the "shift SSM"
  written as a short causal depthwise conv (``F.pad(x, (3, 0))`` + ``F.conv1d`` with a
  ``[D, 1, 4]`` weight parameter), the "diagonal SSM" replaced by an explicit kernel parameter
  ``[max_len, D]`` sliced ``[:L]``, FFT along ``dim=1`` with ``.float()`` / ``.to(dtype)``.
"""

from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_LEN = 256


# ----------------------------------------------------------------------------- long conv, [B, D, L]

class ChannelNorm(nn.Module):
    """LayerNorm over dim 1 of a channel-first tensor (position-wise)."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        mu = x.mean(dim=1, keepdim=True)
        var = (x - mu).pow(2).mean(dim=1, keepdim=True)
        x = (x - mu) * torch.rsqrt(var + self.eps)
        return x * self.gamma[None, :, None] + self.beta[None, :, None]


class LongConvKernel(nn.Module):
    def __init__(self, channels, max_len, lam=0.002, init_scale=0.2):
        super().__init__()
        decay = torch.exp(-torch.arange(max_len).float() / 24.0)
        self.kernel = nn.Parameter(torch.randn(channels, max_len) * init_scale * decay)
        self.lam = lam

    def forward(self, L):
        k = self.kernel[:, :L]
        # "squash" regularizer of the paper, applied on the fly (pointwise on the filter)
        return F.relu(torch.abs(k) - self.lam) * torch.sign(k)


class LongConvMixer(nn.Module):
    def __init__(self, d, max_len):
        super().__init__()
        self.kernel = LongConvKernel(d, max_len)
        self.D = nn.Parameter(torch.randn(d) * 0.5)
        self.proj_in = nn.Conv1d(d, 2 * d, kernel_size=1)  # pointwise, not a short conv
        self.proj_out = nn.Conv1d(d, d, kernel_size=1)

    def forward(self, x):  # x: [B, D, L]
        seq_len = x.shape[-1]
        u, gate = self.proj_in(x).chunk(2, dim=1)
        k = self.kernel(seq_len)
        # LONG CONV: fp32 FFT of size 2L along the last dim, causal part [..., :L], skip D
        u_f = torch.fft.rfft(u.float(), n=2 * seq_len)
        k_f = torch.fft.rfft(k.float(), n=2 * seq_len)
        y = torch.fft.irfft(u_f * k_f, n=2 * seq_len)[..., :seq_len].to(x.dtype)
        y = y + u * self.D[:, None]
        return self.proj_out(F.gelu(y) * torch.sigmoid(gate))


class LongConvLM(nn.Module):
    def __init__(self, vocab, d, n_layers, max_len=MAX_LEN):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.norms = nn.ModuleList(ChannelNorm(d) for _ in range(n_layers))
        self.mixers = nn.ModuleList(LongConvMixer(d, max_len) for _ in range(n_layers))
        self.final_norm = ChannelNorm(d)
        self.head = nn.Conv1d(d, vocab, kernel_size=1)

    def forward(self, ids):
        x = self.tok(ids).permute(0, 2, 1)  # [B, D, L]
        for norm, mixer in zip(self.norms, self.mixers):
            x = x + mixer(norm(x))
        x = self.head(self.final_norm(x))  # [B, V, L]
        return x.permute(0, 2, 1).contiguous()  # [B, L, V]


# ----------------------------------------------------------------------------- H3, [B, L, D]

def shift_conv(x, weight):
    """Short causal depthwise conv. x: [B, L, D]; weight: [D, 1, K]. Left pad K-1."""
    K = weight.shape[-1]
    xt = x.transpose(1, 2)
    xt = F.pad(xt, (K - 1, 0))
    return F.conv1d(xt, weight, groups=weight.shape[0]).transpose(1, 2)


def fft_conv_time_dim1(u, k):
    """u: [B, L, D] (any float dtype), k: [L, D]. FFT along dim 1, computed in fp32."""
    L = u.size(1)
    fft_len = 2 * L
    u_f = torch.fft.rfft(u.float(), n=fft_len, dim=1)
    k_f = torch.fft.rfft(k.float(), n=fft_len, dim=0)
    y = torch.fft.irfft(u_f * k_f.unsqueeze(0), n=fft_len, dim=1)
    return y[:, :L].to(u.dtype)


class H3Layer(nn.Module):
    def __init__(self, d_model, l_max, shift_len=4):
        super().__init__()
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        w = torch.randn(d_model, 1, shift_len) * 0.3
        w[:, 0, -1] += 1.0  # near-identity init, like the shift SSM
        self.shift_weight = nn.Parameter(w)
        t = torch.arange(l_max).float()[:, None]
        rates = torch.linspace(0.02, 0.3, d_model)[None, :]
        self.ssm_kernel = nn.Parameter(torch.randn(l_max, d_model) * 0.3 * torch.exp(-rates * t))
        self.D = nn.Parameter(torch.ones(d_model))

    def forward(self, u):  # [B, L, D]
        L = u.shape[1]
        q = self.q_proj(u)
        k = self.k_proj(u)
        v = self.v_proj(u)
        k = shift_conv(k, self.shift_weight)  # SHORT CONV
        kv = k * v
        y = fft_conv_time_dim1(kv, self.ssm_kernel[:L])  # LONG CONV
        y = y + kv * self.D
        return self.out_proj(q * y)


class H3LM(nn.Module):
    def __init__(self, vocab, d_model, n_layer, l_max=MAX_LEN):
        super().__init__()
        self.wte = nn.Embedding(vocab, d_model)
        self.ln = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layer))
        self.layers = nn.ModuleList(H3Layer(d_model, l_max) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab)

    def forward(self, input_ids):
        h = self.wte(input_ids)
        for ln, layer in zip(self.ln, self.layers):
            h = h + layer(ln(h))
        return self.lm_head(self.ln_f(h))


VOCAB = 24


def build_longconv():
    """2 layers: 2 LONG (one FFT conv per mixer), 0 SHORT (the k=1 Conv1d are pointwise)."""
    torch.manual_seed(201)
    return LongConvLM(VOCAB, d=16, n_layers=2).eval()


def build_h3():
    """2 layers: 2 LONG (explicit [L, D] kernel, FFT dim=1), 2 SHORT (shift conv)."""
    torch.manual_seed(202)
    return H3LM(VOCAB, d_model=16, n_layer=2).eval()
