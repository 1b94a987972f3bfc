"""Safari-style Hyena (HazyResearch ``safari``: ``src/models/sequence/hyena.py``), einops-free.

Written the way the reference code is written: ``HyenaOperator`` with an in-projection, one
short depthwise ``nn.Conv1d`` (kernel 3, ``padding=2`` then ``[..., :L]``) over all projected
streams, an implicit ``HyenaFilter`` (positional features ``z = [t, cos, sin]`` registered as
buffers at ``max_len`` and sliced ``[:, :L]``, an MLP with ``Sin`` activations, an exponential
decay ``modulation``), and the ``fftconv`` helper (``rfft(n=2L) / fft_size`` on the filter,
``irfft(n=2L, norm="forward")[..., :L]``, skip term ``u * D``). The ``rearrange`` calls of
the original are spelled out with ``transpose``/``reshape``.

Counting (what a correct front end must find):
* one SHORT conv per ``HyenaOperator`` (``self.short_filter``: one depthwise conv over the
  ``(order + 1) * d_model`` projected channels);
* ``order - 1`` LONG convs per ``HyenaOperator`` (one ``fftconv`` per loop iteration; the
  gates ``v * x_i`` sit between them).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_LEN = 256


def fftconv(u, k, D):
    """safari's ``fftconv_ref`` (minus dropout/gelu): the ``/ fft_size`` scaling trick.

    u: [B, H, L], k: [H, L], D: [H]. LONG CONV region: rfft -> mul -> irfft -> [..., :L] (+ D u).
    """
    seqlen = u.shape[-1]
    fft_size = 2 * seqlen
    k_f = torch.fft.rfft(k, n=fft_size) / fft_size
    u_f = torch.fft.rfft(u.to(dtype=k.dtype), n=fft_size)
    if len(u.shape) > 3:
        k_f = k_f.unsqueeze(1)
    y = torch.fft.irfft(u_f * k_f, n=fft_size, norm="forward")[..., :seqlen]
    out = y + u * D.unsqueeze(-1)
    return out.to(dtype=u.dtype)


def fftconv_fwd_norm(u, k, D):
    """Variant: the 1/n is carried by ``rfft(u, norm="forward")``; the inverse is unscaled too.

    LONG CONV region, same contract as :func:`fftconv`.
    """
    L = u.size(-1)
    n = 2 * L
    U = torch.fft.rfft(u, n=n, norm="forward")
    K = torch.fft.rfft(k, n=n)
    y = torch.fft.irfft(U * K, n=n, norm="forward")
    return y[..., :L] + u * D[:, None]


class Sin(nn.Module):
    def __init__(self, dim, w=10, train_freq=True):
        super().__init__()
        self.freq = nn.Parameter(w * torch.ones(1, dim)) if train_freq else w * torch.ones(1, dim)

    def forward(self, x):
        return torch.sin(self.freq * x)


class PositionalEmbedding(nn.Module):
    def __init__(self, emb_dim: int, seq_len: int):
        """Complex exponential positional embeddings for Hyena filters."""
        super().__init__()
        self.seq_len = seq_len
        # The time embedding fed to the filters is normalized so that t_f = 1
        t = torch.linspace(0, 1, self.seq_len)[None, :, None]  # 1, L, 1
        if emb_dim > 1:
            bands = (emb_dim - 1) // 2
        # To compute the right embeddings we use the "proper" linspace
        t_rescaled = torch.linspace(0, seq_len - 1, seq_len)[None, :, None]
        w = 2 * math.pi * t_rescaled / seq_len  # 1, L, 1
        f = torch.linspace(1e-4, bands - 1, bands)[None, None]
        z = torch.exp(-1j * f * w)
        z = torch.cat([t, z.real, z.imag], dim=-1)
        self.register_buffer("z", z)
        self.register_buffer("t", t)

    def forward(self, L):
        return self.z[:, :L], self.t[:, :L]


class ExponentialModulation(nn.Module):
    def __init__(self, d_model, fast_decay_pct=0.3, slow_decay_pct=1.5, target=1e-2, shift=0.0):
        super().__init__()
        self.shift = shift
        max_decay = math.log(target) / fast_decay_pct
        min_decay = math.log(target) / slow_decay_pct
        deltas = torch.linspace(min_decay, max_decay, d_model)[None, None]
        self.register_buffer("deltas", deltas)

    def forward(self, t, x):
        decay = torch.exp(-t * self.deltas.abs())
        x = x * (decay + self.shift)
        return x


class HyenaFilter(nn.Module):
    """Implicit long filter: MLP(Sin) over positional features, times a decay window.

    ``normalized=True`` divides by the L1 norm over the LAST dim of ``h`` ([1, L, D]), which
    is the channel dim: position-wise, so still prefix consistent (this is what safari does).
    """

    def __init__(self, d_model, emb_dim=5, order=16, seq_len=MAX_LEN, w=1, normalized=False):
        super().__init__()
        self.d_model = d_model
        self.normalized = normalized
        self.bias = nn.Parameter(torch.randn(self.d_model))
        self.pos_emb = PositionalEmbedding(emb_dim, seq_len)
        self.implicit_filter = nn.Sequential(
            nn.Linear(emb_dim, order),
            Sin(dim=order, w=w),
            nn.Linear(order, order),
            Sin(dim=order, w=w),
            nn.Linear(order, d_model, bias=False),
        )
        self.modulation = ExponentialModulation(d_model)

    def filter(self, L, *args, **kwargs):
        z, t = self.pos_emb(L)
        h = self.implicit_filter(z)
        h = self.modulation(t, h)
        if self.normalized:
            h = h / torch.norm(h, dim=-1, p=1, keepdim=True)
        return h


class HyenaOperator(nn.Module):
    def __init__(self, d_model, l_max, order=2, filter_order=16, short_filter_order=3,
                 conv_fn=fftconv, normalized=False):
        super().__init__()
        self.d_model = d_model
        self.l_max = l_max
        self.order = order
        self.conv_fn = conv_fn
        inner_width = d_model * (order + 1)
        self.in_proj = nn.Linear(d_model, inner_width)
        self.out_proj = nn.Linear(d_model, d_model)
        # SHORT CONV: depthwise, kernel 3, padding 2 on both sides, cut back with [..., :L]
        self.short_filter = nn.Conv1d(
            inner_width, inner_width, short_filter_order,
            padding=short_filter_order - 1, groups=inner_width,
        )
        self.filter_fn = HyenaFilter(
            d_model * (order - 1), order=filter_order, seq_len=l_max, normalized=normalized
        )

    def forward(self, u, *args, **kwargs):
        l = u.size(-2)
        l_filter = min(l, self.l_max)
        u = self.in_proj(u)
        u = u.transpose(1, 2)  # 'b l d -> b d l'

        uc = self.short_filter(u)[..., :l_filter]  # SHORT CONV
        *x, v = uc.split(self.d_model, dim=1)

        k = self.filter_fn.filter(l_filter)[0]  # [L, (o d)]
        k = k.transpose(0, 1).reshape(self.order - 1, self.d_model, l_filter)  # 'l (o d) -> o d l'
        bias = self.filter_fn.bias.reshape(self.order - 1, self.d_model)  # '(o d) -> o d'

        for o, x_i in enumerate(reversed(x[1:])):
            v = v * x_i
            v = self.conv_fn(v, k[o], bias[o])  # LONG CONV (order - 1 of them, gated between)

        y = (v * x[0]).transpose(1, 2)  # 'b d l -> b l d'
        y = self.out_proj(y)
        return y


class Mlp(nn.Module):
    def __init__(self, d_model, hidden):
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm residual block (safari ``src/models/sequence/block.py`` flavour)."""

    def __init__(self, d_model, mixer):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = Mlp(d_model, 2 * d_model)

    def forward(self, hidden_states):
        hidden_states = hidden_states + self.mixer(self.norm1(hidden_states))
        hidden_states = hidden_states + self.mlp(self.norm2(hidden_states))
        return hidden_states


class SimpleLMHeadModel(nn.Module):
    def __init__(self, vocab_size, d_model, n_layer, order=2, l_max=MAX_LEN, conv_fn=fftconv,
                 filter_order=16, normalized=False):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(
            Block(d_model, HyenaOperator(d_model, l_max, order=order, filter_order=filter_order,
                                         conv_fn=conv_fn, normalized=normalized))
            for _ in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.embeddings.weight  # tied
        nn.init.normal_(self.embeddings.weight, std=0.3)  # keeps the tied logits O(1)

    def forward(self, input_ids):
        hidden_states = self.embeddings(input_ids)
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        hidden_states = self.ln_f(hidden_states)
        return self.lm_head(hidden_states)


class GraphBreakHyenaLM(SimpleLMHeadModel):
    """Same model; ``forward`` reads a learned logit scale with ``.item()`` between layers.

    ``Tensor.item()`` on a parameter-derived scalar (not a time tensor) is a dynamo GRAPH
    BREAK (capture_scalar_outputs is off by default). The break sits between layer 0 and the
    remaining layers, outside any loop, so dynamo resumes after it: the forward is captured as
    two graphs, each holding one Hyena layer (a break INSIDE the ``for layer in self.layers``
    loop would make dynamo run the rest of the frame eagerly, so the backend never sees it).
    The model is still an ordinary streamable Hyena LM.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.logit_scale = nn.Parameter(torch.tensor(0.25))

    def forward(self, input_ids):
        first, *rest = self.layers
        hidden_states = first(self.embeddings(input_ids))
        scale = math.exp(self.logit_scale.item())  # GRAPH BREAK (python float)
        for layer in rest:
            hidden_states = layer(hidden_states)
        hidden_states = self.ln_f(hidden_states)
        return self.lm_head(hidden_states) * scale


VOCAB = 32


def build_order2():
    """2 layers, order 2: 2 LONG (1 per layer), 2 SHORT (1 per layer)."""
    torch.manual_seed(101)
    return SimpleLMHeadModel(VOCAB, d_model=16, n_layer=2, order=2, filter_order=16).eval()


def build_order3():
    """2 layers, order 3 (2 fftconvs in sequence per layer, gated between): 4 LONG, 2 SHORT.

    Uses the ``rfft(u, norm="forward")`` scaling variant and the safari ``normalized=True``
    filter (L1 over channels: position-wise).
    """
    torch.manual_seed(102)
    return SimpleLMHeadModel(VOCAB, d_model=16, n_layer=2, order=3, filter_order=12,
                             conv_fn=fftconv_fwd_norm, normalized=True).eval()


def build_graph_break():
    """2 layers, order 2, ``.item()`` between layers: 2 LONG, 2 SHORT, one graph break."""
    torch.manual_seed(103)
    return GraphBreakHyenaLM(VOCAB, d_model=16, n_layer=2, order=2, filter_order=8).eval()
