"""Hybrid models: Hyena blocks interleaved with causal ATTENTION blocks (StripedHyena / Evo 2 style).

Each attention block is written the way one finds it in the wild, all plain torch:

* :class:`GQAAlibiAttention` - grouped-query heads (``repeat_interleave`` of 2 kv heads to 4),
  ALiBi biases ``-m_h * (i - j)`` from ``arange`` comparisons, and a sliding window of ``W``
  positions as an additive ``-inf`` mask built from ``arange``;
* :class:`CachedMaskAttention` - nanoGPT style: a ``tril`` mask cached as a buffer, sliced
  ``[:L, :L]``, ``masked_fill(mask == 0, -inf)``;
* :class:`RoPEAttention` - rotary embeddings from ``arange(L)`` (cos/sin computed in forward) or
  from cached buffers sliced ``[:L]``; grouped heads by ``expand``; SDPA ``is_causal``, or
  explicit scores ``q @ k.transpose(-2, -1) * scale`` with an additive
  ``torch.triu(torch.full((L, L), -inf), 1)`` or a boolean ``masked_fill(~tril(ones(L, L)), -inf)``
  causal mask, ``softmax(-1)``, ``@ v``.

The Hyena blocks (:class:`HyenaOperator`, order 2 or 3: one or two FFT long convolutions per
block, a short depthwise conv, implicit filters over ``arange(L)``) surround them.

Negatives (must be REFUSED, naming the op and the line): attention without a mask, a prefix-LM
mask (the first ``PREFIX`` positions see each other both ways), and a mask shifted by one (each
position also sees the next one). Not streamed either (causal, but its bias would not follow the
model's parameters): a learned relative-position bias table.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB = 29
D = 16
MAX_LEN = 256
PREFIX = 4

__all__ = ["HyenaOperator", "GQAAlibiAttention", "RoPEAttention", "CachedMaskAttention", "UnmaskedAttention",
           "PrefixLMAttention", "LeakyMaskAttention", "LearnedBiasAttention", "HybridLM", "alibi_slopes",
           "build_sdpa", "build_gqa_alibi_window", "build_mixed"]


# ----------------------------------------------------------------------------- Hyena blocks
class _ImplicitFilter(nn.Module):
    """k[c, t] = MLP(t / max_len)[c] * exp(-a_c t): ``n`` filters of ``d`` channels."""

    def __init__(self, d, n, max_len=MAX_LEN):
        super().__init__()
        self.max_len, self.d, self.n = max_len, d, n
        self.mlp = nn.Sequential(nn.Linear(3, 16), nn.SiLU(), nn.Linear(16, d * n))
        self.decay = nn.Parameter(torch.linspace(0.05, 0.5, d * n))

    def forward(self, L):
        t = torch.arange(L, device=self.decay.device).to(self.decay.dtype)
        tn = (t / self.max_len)[:, None]
        feats = torch.cat([tn, torch.sin(3 * tn), torch.cos(3 * tn)], -1)
        k = self.mlp(feats) * torch.exp(-self.decay[None] * t[:, None])   # [L, d*n]
        return k.transpose(0, 1).reshape(self.n, self.d, L)


class HyenaOperator(nn.Module):
    """Order-``order`` Hyena: ``order + 1`` projections, a short causal depthwise conv, then
    ``order - 1`` gated FFT long convolutions (n = 2L) with a skip term."""

    def __init__(self, d=D, order=2):
        super().__init__()
        self.order = order
        self.proj = nn.Linear(d, (order + 1) * d)
        self.short = nn.Conv1d((order + 1) * d, (order + 1) * d, 3, padding=2, groups=(order + 1) * d)
        self.filt = _ImplicitFilter(d, order - 1)
        self.skip = nn.Parameter(torch.randn(order - 1, d) * 0.1)
        self.out = nn.Linear(d, d)

    def forward(self, x):                                     # [B, L, d]
        L = x.shape[1]
        z = self.short(self.proj(x).transpose(1, 2))[..., :L]  # [B, (order+1) d, L]
        *gates, v = z.chunk(self.order + 1, dim=1)
        k = self.filt(L)
        for i in range(self.order - 1):
            v = v * gates[i + 1]
            y = torch.fft.irfft(torch.fft.rfft(v, n=2 * L) * torch.fft.rfft(k[i], n=2 * L), n=2 * L)[..., :L]
            v = y + v * self.skip[i][:, None]
        return self.out((v * gates[0]).transpose(1, 2))


# ----------------------------------------------------------------------------- attention blocks
class _Heads(nn.Module):
    """q, k, v projections split into heads: ``[B, H, L, Dh]`` (k and v with ``kv_heads``)."""

    def __init__(self, d=D, heads=2, kv_heads=None):
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads or heads
        self.dh = d // heads
        self.wq = nn.Linear(d, heads * self.dh, bias=False)
        self.wkv = nn.Linear(d, 2 * self.kv_heads * self.dh, bias=False)
        self.wo = nn.Linear(heads * self.dh, d, bias=False)

    def qkv(self, x):
        B, L, _ = x.shape
        q = self.wq(x).view(B, L, self.heads, self.dh).transpose(1, 2)
        k, v = self.wkv(x).view(B, L, 2 * self.kv_heads, self.dh).transpose(1, 2).chunk(2, dim=1)
        return q, k, v

    def merge(self, y):                                       # [B, H, L, Dh] -> [B, L, d]
        B, H, L, Dh = y.shape
        return self.wo(y.transpose(1, 2).reshape(B, L, H * Dh))


def alibi_slopes(n):
    """The ALiBi paper's head slopes ``2 ** (-8 i / n)``, i = 1..n."""
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / n) for i in range(n)])


class GQAAlibiAttention(_Heads):
    """4 query heads sharing 2 kv heads (``repeat_interleave``), ALiBi, a sliding window."""

    def __init__(self, d=D, heads=4, kv_heads=2, window=8):
        super().__init__(d, heads, kv_heads)
        self.window = window
        self.register_buffer("slopes", alibi_slopes(heads))

    def forward(self, x):
        L = x.shape[1]
        q, k, v = self.qkv(x)
        rep = self.heads // self.kv_heads
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        i = torch.arange(L, device=x.device)[:, None]
        j = torch.arange(L, device=x.device)[None, :]
        dist = (i - j).to(q.dtype)
        bias = -self.slopes[:, None, None] * dist                       # ALiBi [H, L, L]
        blocked = (j > i) | (i - j >= self.window)                      # causal + sliding window
        bias = bias.masked_fill(blocked, float("-inf"))
        scores = torch.einsum("bhid,bhjd->bhij", q, k) * self.dh ** -0.5 + bias
        return self.merge(scores.softmax(-1) @ v)


def _rotate(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class RoPEAttention(_Heads):
    """Rotary embeddings (cos/sin over ``arange(L)``, or cached buffers ``[:L]``), grouped heads
    by ``expand``; ``mask``: "sdpa" (SDPA ``is_causal``), "additive" (explicit scores plus
    ``triu(-inf, 1)``) or "bool" (explicit scores, ``masked_fill`` of a ``tril`` mask)."""

    def __init__(self, d=D, heads=4, kv_heads=2, cached=False, mask="sdpa", max_len=MAX_LEN):
        super().__init__(d, heads, kv_heads)
        self.cached, self.mask = cached, mask
        inv = 1.0 / (10000 ** (torch.arange(0, self.dh, 2).float() / self.dh))
        self.register_buffer("inv_freq", inv)
        if cached:
            ang = torch.arange(max_len).float()[:, None] * inv[None]
            emb = torch.cat([ang, ang], -1)
            self.register_buffer("cos_cached", emb.cos())
            self.register_buffer("sin_cached", emb.sin())

    def forward(self, x):
        B, L, _ = x.shape
        q, k, v = self.qkv(x)
        if self.cached:
            cos, sin = self.cos_cached[:L], self.sin_cached[:L]
        else:
            ang = torch.arange(L, device=x.device).to(self.inv_freq.dtype)[:, None] * self.inv_freq[None]
            emb = torch.cat([ang, ang], -1)
            cos, sin = emb.cos(), emb.sin()
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        rep = self.heads // self.kv_heads
        k = k[:, :, None].expand(B, self.kv_heads, rep, L, self.dh).reshape(B, self.heads, L, self.dh)
        v = v[:, :, None].expand(B, self.kv_heads, rep, L, self.dh).reshape(B, self.heads, L, self.dh)
        if self.mask == "sdpa":
            return self.merge(F.scaled_dot_product_attention(q, k, v, is_causal=True))
        scores = (q @ k.transpose(-2, -1)) * self.dh ** -0.5
        if self.mask == "additive":
            scores = scores + torch.triu(torch.full((L, L), float("-inf"), device=x.device), diagonal=1)
        else:
            causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
            scores = scores.masked_fill(~causal, float("-inf"))
        return self.merge(scores.softmax(dim=-1) @ v)


class CachedMaskAttention(_Heads):
    """nanoGPT style: a causal mask cached as a buffer ``tril(ones(T, T))`` sliced ``[:L, :L]``;
    ``masked_fill(mask == 0, -inf)``."""

    def __init__(self, d=D, heads=2, max_len=MAX_LEN):
        super().__init__(d, heads)
        self.register_buffer("bias", torch.tril(torch.ones(max_len, max_len)).view(1, 1, max_len, max_len))

    def forward(self, x):
        L = x.shape[1]
        q, k, v = self.qkv(x)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :L, :L] == 0, float("-inf"))
        return self.merge(F.softmax(att, dim=-1) @ v)


# ----------------------------------------------------------------------------- negatives
class UnmaskedAttention(_Heads):
    """REFUSE: bidirectional attention (no mask)."""

    def forward(self, x):
        q, k, v = self.qkv(x)
        return self.merge(torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.dh), dim=-1) @ v)


class PrefixLMAttention(_Heads):
    """REFUSE: prefix-LM mask: the first ``PREFIX`` positions attend to each other both ways."""

    def forward(self, x):
        L = x.shape[1]
        q, k, v = self.qkv(x)
        i = torch.arange(L, device=x.device)[:, None]
        j = torch.arange(L, device=x.device)[None, :]
        allowed = (j <= i) | (j < PREFIX)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.dh)
        scores = scores.masked_fill(~allowed, float("-inf"))
        return self.merge(scores.softmax(-1) @ v)


class LeakyMaskAttention(_Heads):
    """REFUSE: an off-by-one causal mask, ``triu(-inf, diagonal=2)``: position t also sees t + 1."""

    def forward(self, x):
        L = x.shape[1]
        q, k, v = self.qkv(x)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.dh)
        scores = scores + torch.triu(torch.full((L, L), float("-inf")), diagonal=2)
        return self.merge(torch.softmax(scores, dim=-1) @ v)


class LearnedBiasAttention(_Heads):
    """NOT STREAMED: a learned relative-position bias table (T5 style, one row per head) indexed by
    the distance: the bias follows a learned parameter, which the extracted spec would not."""

    def __init__(self, d=D, heads=2, max_len=MAX_LEN):
        super().__init__(d, heads)
        self.rel = nn.Parameter(torch.randn(heads, max_len) * 0.1)

    def forward(self, x):
        L = x.shape[1]
        q, k, v = self.qkv(x)
        i = torch.arange(L, device=x.device)[:, None]
        j = torch.arange(L, device=x.device)[None, :]
        bias = self.rel[:, (i - j).clamp(min=0)].masked_fill(j > i, float("-inf"))
        return self.merge(((q @ k.transpose(-2, -1)) / math.sqrt(self.dh) + bias).softmax(-1) @ v)


# ----------------------------------------------------------------------------- the hybrid LM
class _Block(nn.Module):
    def __init__(self, mixer, d=D, mlp=True):
        super().__init__()
        self.n1 = nn.LayerNorm(d)
        self.mixer = mixer
        self.n2 = nn.LayerNorm(d) if mlp else None
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)) if mlp else None

    def forward(self, x):
        x = x + self.mixer(self.n1(x))
        return x if self.mlp is None else x + self.mlp(self.n2(x))


class HybridLM(nn.Module):
    """ids [B, L] -> logits [B, L, vocab]: pre-norm residual blocks around the given mixers (each
    with a GELU MLP, or none: ``mlp=False``); ``learned_pos``: absolute position embeddings
    ``wpe(arange(L))`` of ``max_len`` rows."""

    def __init__(self, mixers, vocab=VOCAB, d=D, learned_pos=False, max_len=MAX_LEN, mlp=True):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(max_len, d) if learned_pos else None
        self.blocks = nn.ModuleList(_Block(m, d, mlp) for m in mixers)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        x = self.wte(ids)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(ids.shape[1], device=ids.device))
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))


def _mk(seed, mixers, **kw):
    def build():
        torch.manual_seed(seed)
        return HybridLM(mixers(), **kw).eval()
    return build


#: an order-2 Hyena block; RoPE from arange(L), 4 query heads on 2 kv heads by expand, SDPA is_causal
build_sdpa = _mk(2001, lambda: [HyenaOperator(order=2), RoPEAttention(cached=False, mask="sdpa")])
#: learned absolute positions; an order-3 Hyena block; 4 query heads on 2 kv heads (repeat_interleave),
#: ALiBi, a sliding window of 8
build_gqa_alibi_window = _mk(2004, lambda: [HyenaOperator(order=3),
                                             GQAAlibiAttention(heads=4, kv_heads=2, window=8)], learned_pos=True)
#: three streamable attention blocks (windowed ALiBi; RoPE from cached buffers [:L] with explicit scores
#: and an additive triu mask; a mask cached as a buffer, nanoGPT style), then every attention that must
#: not be streamed, one block each (no mask, prefix-LM, one position ahead, learned bias): one refusal
#: each. No MLPs (a smaller graph to capture)
build_mixed = _mk(2011, lambda: [GQAAlibiAttention(heads=4, kv_heads=2, window=8),
                                  RoPEAttention(cached=True, mask="additive"), CachedMaskAttention(), UnmaskedAttention(),
                                  PrefixLMAttention(), LeakyMaskAttention(), LearnedBiasAttention()], mlp=False)
