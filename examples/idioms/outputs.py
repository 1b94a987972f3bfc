"""Output structures, and a continuous-input HyenaDNA-style model.

One small Hyena backbone (written HyenaDNA-style: ``LMBackbone`` + ``HyenaMixer`` with
``short_conv`` and a ``rfft``/``irfft`` long conv whose filter is an explicit parameter modulated
by a decay buffer), wrapped by heads that return

* ``(logits, hidden_states)`` - a tuple;
* ``{"logits": ..., "aux": ...}`` - a dict (``aux``: the pre-head hidden states);
* :class:`CausalLMOutput` - a dataclass with ``.logits``, ``.hidden_states`` (a tuple of
  tensors, one per layer), and non-tensor entries ``past_key_values=None`` and
  ``model_name`` (a str) that pass through;
* ``(Out(logits=..., hidden=...), None)`` - a namedtuple nested in a tuple, whose class is
  created inside ``forward`` (a new class object on every call);
* a continuous ``[B, L, 4] -> [B, L, 3]`` regressor (DNA one-hot in, per-position track out).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_LEN = 256


class HyenaMixer(nn.Module):
    def __init__(self, d_model, l_max=MAX_LEN):
        super().__init__()
        self.d_model = d_model
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.short_conv = nn.Conv1d(3 * d_model, 3 * d_model, 3, padding=2, groups=3 * d_model)
        self.h = nn.Parameter(torch.randn(d_model, l_max) * 0.3)
        self.register_buffer("decay", torch.exp(-torch.arange(l_max) / 10.0))
        self.bias = nn.Parameter(torch.randn(d_model) * 0.2)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        seqlen = x.shape[1]
        z = self.in_proj(x).transpose(-1, -2)
        z = self.short_conv(z)[..., :seqlen]  # SHORT CONV
        x0, x1, v = torch.split(z, self.d_model, dim=1)
        h = self.h[:, :seqlen] * self.decay[:seqlen]
        fft_size = seqlen * 2
        v = v * x1
        y = torch.fft.irfft(torch.fft.rfft(v, n=fft_size) * torch.fft.rfft(h, n=fft_size), n=fft_size)
        y = y[..., :seqlen] + v * self.bias.unsqueeze(-1)  # LONG CONV + skip
        return self.out_proj((y * x0).transpose(-1, -2))


class LMBackbone(nn.Module):
    def __init__(self, d_model, n_layer):
        super().__init__()
        self.layers = nn.ModuleList(HyenaMixer(d_model) for _ in range(n_layer))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)

    def forward(self, hidden_states, return_all=False):
        all_h = []
        for norm, layer in zip(self.norms, self.layers):
            hidden_states = hidden_states + layer(norm(hidden_states))
            all_h.append(hidden_states)
        out = self.ln_f(hidden_states)
        return (out, tuple(all_h)) if return_all else out


class TupleOutLM(nn.Module):
    def __init__(self, vocab, d_model, n_layer):
        super().__init__()
        self.embeddings = nn.Embedding(vocab, d_model)
        self.backbone = LMBackbone(d_model, n_layer)
        self.lm_head = nn.Linear(d_model, vocab)

    def forward(self, input_ids):
        hidden = self.backbone(self.embeddings(input_ids))
        return self.lm_head(hidden), hidden


class DictOutLM(TupleOutLM):
    def forward(self, input_ids):
        hidden = self.backbone(self.embeddings(input_ids))
        return {"logits": self.lm_head(hidden), "aux": hidden}


@dataclass
class CausalLMOutput:
    logits: torch.Tensor
    hidden_states: tuple
    past_key_values: Optional[object] = None
    model_name: str = "zoo-hyena"


class ObjectOutLM(TupleOutLM):
    def forward(self, input_ids):
        hidden, all_h = self.backbone(self.embeddings(input_ids), return_all=True)
        return CausalLMOutput(logits=self.lm_head(hidden), hidden_states=all_h)


class NestedNamedTupleLM(TupleOutLM):
    def forward(self, input_ids):
        # the namedtuple class is made on every call (as some wrappers do): no two outputs share it
        Out = collections.namedtuple("Out", "logits hidden")
        hidden = self.backbone(self.embeddings(input_ids))
        return Out(logits=self.lm_head(hidden), hidden=hidden), None


class DNARegressor(nn.Module):
    """HyenaDNA-style continuous model: one-hot / soft nucleotides in, per-position tracks out."""

    def __init__(self, d_in, d_model, d_out, n_layer):
        super().__init__()
        self.stem = nn.Linear(d_in, d_model)
        self.backbone = LMBackbone(d_model, n_layer)
        self.head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, d_out))

    def forward(self, x):  # [B, L, d_in] float
        return F.softplus(self.head(self.backbone(self.stem(x))))


VOCAB = 36
D_IN, D_OUT = 4, 3


def build_tuple():
    """2 layers: 2 LONG, 2 SHORT; returns (logits, hidden)."""
    torch.manual_seed(801)
    return TupleOutLM(VOCAB, d_model=16, n_layer=2).eval()


def build_dict():
    """1 layer: 1 LONG, 1 SHORT; returns {"logits", "aux"}."""
    torch.manual_seed(802)
    return DictOutLM(VOCAB, d_model=16, n_layer=1).eval()


def build_object():
    """2 layers: 2 LONG, 2 SHORT; returns CausalLMOutput (.logits, tuple, None, str)."""
    torch.manual_seed(803)
    return ObjectOutLM(VOCAB, d_model=16, n_layer=2).eval()


def build_nested_namedtuple():
    """1 layer: 1 LONG, 1 SHORT; returns (Out(logits, hidden), None), Out made in forward."""
    torch.manual_seed(805)
    return NestedNamedTupleLM(VOCAB, d_model=16, n_layer=1).eval()


def build_dna():
    """continuous [B, L, 4] -> [B, L, 3], 2 layers: 2 LONG, 2 SHORT."""
    torch.manual_seed(804)
    return DNARegressor(D_IN, d_model=16, d_out=D_OUT, n_layer=2).eval()
