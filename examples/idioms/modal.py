"""Complex-valued modal filter generators (StripedHyena ``ParallelHyenaFilter`` flavour).

* :class:`StripedHyenaLM` - blocks alternate: implicit-MLP Hyena block, modal block,
  implicit-MLP Hyena block (the attention blocks of the real StripedHyena replaced by the
  attention-free modal one). Pre/post ``RMSNorm`` (hand written, like the original),
  ``ParallelGatedMLP``. Both block kinds use a short FIR (``F.conv1d`` with a weight parameter
  ``[3D, 1, 3]``, ``padding=2`` then ``[..., :L]``, plus a separate bias) before the long conv.
  The modal filter is the StripedHyena one: ``view_as_complex`` of ``[D, S, 1, 2]`` residue and
  log-pole parameters, ``h = (residues * (log_poles * t).exp()).real.sum(1)``; ``t`` is an
  ``arange`` buffer cached on the module, regrown in forward when too short, sliced ``[:L]``.
* :class:`ModalRegressor` - continuous ``[B, L, Din] -> [B, L, Dout]``; residues by
  ``view_as_complex`` on a ``[..., 2]`` parameter, poles ``exp(log_r + 1j * theta)``, filter
  ``(residues * poles ** t).real.sum(-1)`` over ``arange(L)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def fftconv_func(u, k, D):
    """u [B, D, L], k [1, D, L] or [D, L]. LONG CONV (StripedHyena's reference fftconv)."""
    seqlen = u.shape[-1]
    fft_size = 2 * seqlen
    k_f = torch.fft.rfft(k, n=fft_size) / fft_size
    u_f = torch.fft.rfft(u.to(dtype=k.dtype), n=fft_size)
    y = torch.fft.irfft(u_f * k_f, n=fft_size, norm="forward")[..., :seqlen]
    out = y + u * D.unsqueeze(-1)
    return out.to(dtype=u.dtype)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x):
        y = x / (x.norm(2, dim=-1, keepdim=True) * x.shape[-1] ** -0.5 + self.eps)
        return self.scale * y


class ParallelGatedMLP(nn.Module):
    def __init__(self, hidden_size, inner):
        super().__init__()
        self.l1 = nn.Linear(hidden_size, inner, bias=False)
        self.l2 = nn.Linear(hidden_size, inner, bias=False)
        self.l3 = nn.Linear(inner, hidden_size, bias=False)

    def forward(self, z):
        z1, z2 = self.l1(z), self.l2(z)
        return self.l3(F.silu(z1) * z2)


class _GatedConvBase(nn.Module):
    """Shared wiring: projections -> short FIR -> x2 * longconv(x1 * v) -> dense."""

    def __init__(self, hidden_size, short_filter_length=3):
        super().__init__()
        self.hidden_size = hidden_size
        self.short_filter_length = short_filter_length
        self.short_filter_weight = nn.Parameter(torch.randn(3 * hidden_size, 1, short_filter_length) * 0.5)
        self.short_filter_bias = nn.Parameter(torch.randn(3 * hidden_size) * 0.1)
        self.D = nn.Parameter(torch.randn(hidden_size) * 0.1)

    def parallel_fir(self, u, L):
        u = u.transpose(1, 2)  # B, D, L
        z = F.conv1d(u, self.short_filter_weight, bias=None, stride=1,
                     padding=self.short_filter_length - 1, groups=u.shape[1])[..., :L]  # SHORT CONV
        return z + self.short_filter_bias[None, :, None]

    def compute_filter(self, L, device):  # -> [1, D, L]
        raise NotImplementedError

    def forward(self, u):  # u: [B, L, 3D]
        L = u.shape[1]
        z_pre = self.parallel_fir(u, L)
        x2, x1, v = z_pre.split([self.hidden_size, self.hidden_size, self.hidden_size], dim=1)
        h = self.compute_filter(L, u.device)
        y = fftconv_func(x1 * v, h, self.D)  # LONG CONV
        y = y * x2
        return y.transpose(1, 2)


class ModalHyenaFilter(_GatedConvBase):
    def __init__(self, hidden_size, state_size=4):
        super().__init__(hidden_size)
        poles = torch.empty(hidden_size, state_size, 1, 2)
        poles[..., 0] = -torch.rand(hidden_size, state_size, 1) * 0.4 - 0.02  # log |pole| < 0
        poles[..., 1] = torch.rand(hidden_size, state_size, 1) * math.pi  # angle
        self.poles = nn.Parameter(poles)
        self.residues = nn.Parameter(torch.randn(hidden_size, state_size, 1, 2) * 0.3)
        self.register_buffer("t", torch.arange(16)[None, None], persistent=False)

    def update_time(self, L, device):
        if self.t.shape[-1] < L:  # cached positions, regrown on demand
            self.t = torch.arange(L, device=device)[None, None]

    def compute_filter(self, L, device):
        self.update_time(L, device)
        t = self.t[..., :L]
        filter_dtype = torch.float32
        residues, log_poles = (
            torch.view_as_complex(self.residues.to(filter_dtype)),
            torch.view_as_complex(self.poles.to(filter_dtype)),
        )
        h = (residues * (log_poles * t).exp()).real.sum(1)[None]  # [1, D, L]
        return h


class ImplicitHyenaFilter(_GatedConvBase):
    def __init__(self, hidden_size, emb=3, width=8, max_len=256):
        super().__init__(hidden_size)
        self.max_len = max_len
        self.mlp = nn.Sequential(nn.Linear(emb, width), _Sine(), nn.Linear(width, width), _Sine(),
                                 nn.Linear(width, hidden_size))
        self.alpha = nn.Parameter(torch.linspace(0.02, 0.3, hidden_size))

    def compute_filter(self, L, device):
        t = torch.arange(L, device=device, dtype=torch.float32)
        w = 2 * math.pi * t / self.max_len
        z = torch.stack([t / self.max_len, torch.cos(w), torch.sin(w)], dim=-1)  # [L, 3]
        h = self.mlp(z) * torch.exp(-self.alpha.abs() * t[:, None])  # [L, D]
        return h.t()[None]


class _Sine(nn.Module):
    def forward(self, x):
        return torch.sin(8.0 * x)


class ParallelGatedConvBlock(nn.Module):
    def __init__(self, hidden_size, filter_cls):
        super().__init__()
        self.pre_norm, self.post_norm = RMSNorm(hidden_size), RMSNorm(hidden_size)
        self.filter = filter_cls(hidden_size)
        self.projections = nn.Linear(hidden_size, 3 * hidden_size)
        self.out_filter_dense = nn.Linear(hidden_size, hidden_size)
        self.mlp = ParallelGatedMLP(hidden_size, 2 * hidden_size)

    def forward(self, u):
        z = self.projections(self.pre_norm(u))
        z = self.filter(z)
        z_in = self.out_filter_dense(z) + u
        return self.mlp(self.post_norm(z_in)) + z_in


class StripedHyenaLM(nn.Module):
    def __init__(self, vocab, hidden_size, pattern=("hyena", "modal", "hyena")):
        super().__init__()
        kinds = {"hyena": ImplicitHyenaFilter, "modal": ModalHyenaFilter}
        self.embedding_layer = nn.Embedding(vocab, hidden_size)
        self.blocks = nn.ModuleList(ParallelGatedConvBlock(hidden_size, kinds[p]) for p in pattern)
        self.norm = RMSNorm(hidden_size)
        self.unembed = nn.Linear(hidden_size, vocab, bias=False)

    def forward(self, x):
        x = self.embedding_layer(x)
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.norm(x))


# ------------------------------------------------------------------- poles ** t, continuous in/out

class ModalSSMFilter(nn.Module):
    def __init__(self, d, n_modes):
        super().__init__()
        self.res_ri = nn.Parameter(torch.randn(d, n_modes, 2) * 0.4)
        self.log_r = nn.Parameter(-torch.rand(d, n_modes) * 0.3 - 0.03)
        self.theta = nn.Parameter(torch.rand(d, n_modes) * math.pi)

    def forward(self, L, device=None):
        residues = torch.view_as_complex(self.res_ri)  # [d, m]
        poles = torch.exp(self.log_r + 1j * self.theta)  # complex exp, |pole| < 1
        t = torch.arange(L, device=device, dtype=torch.float32)
        h = (residues[:, None, :] * poles[:, None, :] ** t[None, :, None]).real.sum(-1)  # [d, L]
        return h


class ModalLayer(nn.Module):
    def __init__(self, d, n_modes=3):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, 2 * d)
        self.kernel = ModalSSMFilter(d, n_modes)
        self.down = nn.Linear(d, d)

    def forward(self, x):  # [B, L, d]
        L = x.shape[1]
        u, g = self.up(self.norm(x)).chunk(2, dim=-1)
        u = u.permute(0, 2, 1)
        k = self.kernel(L, device=x.device)
        n = 2 * L
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :L]  # LONG CONV
        return x + self.down(y.permute(0, 2, 1) * F.gelu(g))


class ModalRegressor(nn.Module):
    def __init__(self, d_in, d, d_out, n_layers):
        super().__init__()
        self.encoder = nn.Linear(d_in, d)
        self.layers = nn.ModuleList(ModalLayer(d) for _ in range(n_layers))
        self.decoder = nn.Linear(d, d_out)

    def forward(self, x):
        h = self.encoder(x)
        for layer in self.layers:
            h = layer(h)
        return self.decoder(h)


VOCAB = 48
D_IN, D_OUT = 6, 2


def build_striped():
    """3 blocks (hyena, modal, hyena): 3 LONG, 3 SHORT."""
    torch.manual_seed(601)
    return StripedHyenaLM(VOCAB, hidden_size=16).eval()


def build_modal_pow():
    """continuous, 2 layers: 2 LONG (poles ** t modal filter), 0 SHORT."""
    torch.manual_seed(602)
    return ModalRegressor(D_IN, d=12, d_out=D_OUT, n_layers=2).eval()
