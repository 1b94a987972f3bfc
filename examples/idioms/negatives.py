"""Models that must be REFUSED for streaming (they still have to compute exactly when compiled).

Each one looks like an LCSM but mixes time in a way a streaming program cannot reproduce:

* :class:`CircularConvLM` - FFT conv with ``n = L`` (no zero padding): circular wrap-around,
  so late inputs leak into early outputs and ``model(x[:, :l]) != model(x)[:, :l]``.
* :class:`SymmetricConvLM` - ``F.conv1d`` with a centered filter of ``2 * (L // 2) + 1`` taps
  and ``padding=L // 2`` on both sides: every output sees ``L // 2`` future positions.
* :class:`CenteredFFTConvLM` - zero-padded FFT conv (``n = 2L``) but the slice keeps the
  CENTERED part ``[L // 2 : L // 2 + L]`` instead of the causal ``[:L]``.
* :class:`SoftmaxPoolLM` - attention-like pooling: ``softmax`` of a score over the TIME axis,
  a weighted sum over all positions added back to every position (plus a causal long conv).
* :class:`BiHyenaLM` - Caduceus-style bidirectional mixing: ``flip(conv(flip(u)))`` added to
  ``conv(u)`` (both convs are causal in their own coordinates; the flips are not).
* :class:`NextTokenMixLM` - a future shift: ``F.pad(x[:, 1:], (0, 0, 0, 1))`` (the NEXT
  position's features) mixed into every position, plus a causal long conv.
* :class:`LengthNormFilterLM` - a causal FFT conv whose filter is L1-normalized over its
  LENGTH (``k / k.abs().sum(-1)``): each forward is causal, but the filter depends on the
  sequence length, so ``model(x[:, :l]) != model(x)[:, :l]``; a streaming program cannot
  reproduce it (prefix-consistency check of fold_filters).
* :class:`BlockRestartLM` - a chunked conv: the sequence is zero-padded AT THE FRONT to a
  multiple of 16, cut into blocks of 16, and each block gets its own causal FFT conv
  (``n = 32``), so outputs restart every 16 positions; the blocks are counted from the end of
  the sequence, so ``model(x[:, :l]) != model(x)[:, :l]``. Causal, but not one convolution
  over the whole sequence.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_LEN = 256
VOCAB = 20
D = 12


class _LM(nn.Module):
    """embedding -> mixer (residual, pre-LN) -> head. Subclasses define ``mix(x)``."""

    def __init__(self, vocab=VOCAB, d=D):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.emb(ids)
        x = x + self.mix(self.ln(x))
        return self.head(x)


class CircularConvLM(_LM):
    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.randn(D, MAX_LEN) * 0.3)  # no decay: the wrap-around shows

    def mix(self, x):
        L = x.shape[1]
        u = x.transpose(1, 2)
        y = torch.fft.irfft(torch.fft.rfft(u, n=L) * torch.fft.rfft(self.k[:, :L], n=L), n=L)  # CIRCULAR
        return y.transpose(1, 2)


class SymmetricConvLM(_LM):
    def __init__(self):
        super().__init__()
        self.center = MAX_LEN // 2
        self.w = nn.Parameter(torch.randn(D, MAX_LEN + 1) * 0.3)

    def mix(self, x):
        L = x.shape[1]
        half = L // 2
        w = self.w[:, self.center - half: self.center + half + 1]  # taps -half .. +half
        y = F.conv1d(x.transpose(1, 2), w.unsqueeze(1), padding=half, groups=w.shape[0])  # BIDIRECTIONAL
        return y.transpose(1, 2)


class CenteredFFTConvLM(_LM):
    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.randn(D, MAX_LEN) * 0.3)

    def mix(self, x):
        L = x.shape[1]
        u = x.transpose(1, 2)
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(self.k[:, :L], n=2 * L), n=2 * L)
        y = y[..., L // 2: L // 2 + L]  # centered, not causal
        return y.transpose(1, 2)


def _causal_fft_conv(u, k):
    """u [B, C, L], k [C, L]; the ordinary causal long conv (a LONG CONV region)."""
    L = u.shape[-1]
    return torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]


class SoftmaxPoolLM(_LM):
    def __init__(self):
        super().__init__()
        self.score = nn.Linear(D, 1)
        self.k = nn.Parameter(torch.randn(D, MAX_LEN) * 0.3 * torch.exp(-torch.arange(MAX_LEN) / 8.0))

    def mix(self, x):
        L = x.shape[1]
        attn = torch.softmax(self.score(x), dim=1)  # [B, L, 1]: softmax over TIME
        pooled = (attn * x).sum(dim=1, keepdim=True)  # [B, 1, D]
        y = _causal_fft_conv(x.transpose(1, 2), self.k[:, :L]).transpose(1, 2)  # LONG CONV
        return y + 2.0 * pooled


class BiHyenaLM(_LM):
    def __init__(self):
        super().__init__()
        decay = torch.exp(-torch.arange(MAX_LEN) / 8.0)
        self.k_fwd = nn.Parameter(torch.randn(D, MAX_LEN) * 0.3 * decay)
        self.k_bwd = nn.Parameter(torch.randn(D, MAX_LEN) * 0.3 * decay)

    def mix(self, x):
        L = x.shape[1]
        u = x.transpose(1, 2)
        y_f = _causal_fft_conv(u, self.k_fwd[:, :L])  # LONG CONV (forward direction)
        y_b = torch.flip(_causal_fft_conv(torch.flip(u, dims=[-1]), self.k_bwd[:, :L]), dims=[-1])  # FLIP
        return (y_f + y_b).transpose(1, 2)


class NextTokenMixLM(_LM):
    def __init__(self):
        super().__init__()
        self.w_next = nn.Linear(D, D)
        self.k = nn.Parameter(torch.randn(D, MAX_LEN) * 0.3 * torch.exp(-torch.arange(MAX_LEN) / 8.0))

    def mix(self, x):
        L = x.shape[1]
        x_next = F.pad(x[:, 1:], (0, 0, 0, 1))  # FUTURE SHIFT: position t sees t + 1
        y = _causal_fft_conv(x.transpose(1, 2), self.k[:, :L]).transpose(1, 2)  # LONG CONV
        return y + self.w_next(x_next)


class LengthNormFilterLM(_LM):
    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.randn(D, MAX_LEN) * 0.3 * torch.exp(-torch.arange(MAX_LEN) / 16.0))

    def mix(self, x):
        L = x.shape[1]
        k = self.k[:, :L]
        k = k / (k.abs().sum(dim=-1, keepdim=True) + 1e-6)  # normalized over the LENGTH
        return _causal_fft_conv(x.transpose(1, 2), k).transpose(1, 2)  # LONG CONV


class BlockRestartLM(_LM):
    block = 16

    def __init__(self):
        super().__init__()
        taps = torch.exp(-torch.arange(self.block) / 6.0)[:, None]
        self.k = nn.Parameter(torch.randn(self.block, D) * 0.3 * taps)  # [16, D], time first

    def mix(self, x):
        B, L, C = x.shape
        b = self.block
        u = F.pad(x, (0, 0, (-L) % b, 0))  # front pad: whole blocks, counted from the end
        chunks = u.reshape(B, -1, b, C)  # [B, L_pad // 16, 16, C]
        spec = torch.fft.rfft(chunks, n=2 * b, dim=2) * torch.fft.rfft(self.k, n=2 * b, dim=0)
        y = torch.fft.irfft(spec, n=2 * b, dim=2)[:, :, :b].contiguous()  # BLOCK-RESTARTING: per block
        return y.reshape(B, -1, C)[:, -L:]


def _mk(cls, seed):
    def build():
        torch.manual_seed(seed)
        return cls().eval()

    build.__name__ = f"build_{cls.__name__}"
    return build


build_circular = _mk(CircularConvLM, 1001)
build_symmetric_conv = _mk(SymmetricConvLM, 1002)
build_centered_fft = _mk(CenteredFFTConvLM, 1003)
build_softmax_pool = _mk(SoftmaxPoolLM, 1004)
build_flip = _mk(BiHyenaLM, 1005)
build_next_token = _mk(NextTokenMixLM, 1006)
build_length_norm = _mk(LengthNormFilterLM, 1007)
build_block_restart = _mk(BlockRestartLM, 1008)
