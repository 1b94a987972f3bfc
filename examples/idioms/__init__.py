"""The idiom models (the zoo): small long-convolution sequence models, one per DESIGN.md s4 idiom.

They live in ``examples/idioms/`` (package ``examples.idioms``) as examples of the ways such models
are written, and the tests import them from here (``from examples.idioms import ZOO, get, ...``).

The zoo is the shared ground truth of the compiler front end (``explain`` must find exactly
``n_long`` long convs and ``n_short`` short convs, or refuse with a reason containing
``refusal``) and of the streaming sessions (teacher forcing against the eager forward).

Each family lives in its own file and is written in its own style (names, helpers, module
decomposition, layouts), the way such models are written in the wild; all plain torch.

Conventions
-----------
* ``build()`` seeds torch and returns a fresh model in ``.eval()`` mode (fp32, CPU).
* ``make_input(B, L)`` returns a deterministic input: ids ``[B, L]`` (int64) when
  ``input_kind == "ids"``, else a float32 ``[B, L, d_in]``.
* Every tensor in the output has the layout ``[B, L, ...]``.
* ``n_long``: causal long-conv regions (an FFT conv of size >= 2L with a ``[:L]`` slice, or a
  direct ``conv1d`` with L-1 left padding), skip terms included in their region;
  ``n_short``: short causal depthwise convs. Kernel-size-1 ``Conv1d`` are pointwise (not
  counted); ``cumsum`` is not counted. For refused models the counts are informational: the
  causal long-conv regions that exist in the graph next to the offending op.
* ``refusal``: a lower-case phrase the refusal reason must contain (compare case-insensitively);
  ``None`` for streamable models.
* ``tags``: the DESIGN s4 idioms the entry exercises (see :data:`IDIOM_TAGS`); negatives also
  carry ``"violates:causality"`` (perturbing position p changes an output before p) or
  ``"violates:prefix"`` (``model(x[:, :l]) != model(x)[:, :l]``), or both. ``"bf16-ok"``
  marks the models that also run after ``model.to(torch.bfloat16)`` on the CPU (their FFTs
  cast to fp32 explicitly, or they use conv1d); CPU ``torch.fft`` rejects bf16, so the others
  do not. No model runs at L = 0.
* ``max_len``: the longest sequence the model accepts (explicit filters / buffers / position
  tables have this length); sessions should use ``max_len <= entry.max_len``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from . import (attention, cached, direct_conv, explicit, layouts, modal, multihead, multirange, negatives, outputs,
               safari, scan, ssm)

__all__ = ["ZooEntry", "ZOO", "IDIOM_TAGS", "get", "streamable", "refused", "names", "output_tensors"]


@dataclass(frozen=True)
class ZooEntry:
    name: str
    idiom: str
    build: Callable[[], nn.Module]
    make_input: Callable[[int, int], Tensor]  # (B, L) -> input
    input_kind: str  # "ids" or "cont"
    n_long: int
    n_short: int
    streamable: bool
    refusal: Optional[str]  # phrase the refusal reason contains; None when streamable
    tags: tuple = ()
    vocab: Optional[int] = None  # for "ids"
    d_in: Optional[int] = None  # for "cont"
    d_out: Optional[int] = None  # last dim of the main output (vocab for LMs)
    max_len: int = 256
    output: str = "tensor"  # "tensor" | "tuple" | "dict" | "object"

    def __repr__(self) -> str:  # short, for pytest ids and reports
        return f"ZooEntry({self.name})"


def _seed(name: str, B: int, L: int) -> int:
    return (zlib.crc32(name.encode()) + 7919 * B + 104729 * L) % (2**31)


def _ids(name: str, vocab: int) -> Callable[[int, int], Tensor]:
    def make_input(B: int, L: int) -> Tensor:
        g = torch.Generator().manual_seed(_seed(name, B, L))
        return torch.randint(0, vocab, (B, L), generator=g, dtype=torch.long)

    return make_input


def _cont(name: str, d_in: int) -> Callable[[int, int], Tensor]:
    def make_input(B: int, L: int) -> Tensor:
        g = torch.Generator().manual_seed(_seed(name, B, L))
        return torch.randn(B, L, d_in, generator=g, dtype=torch.float32)

    return make_input


def _e(name, idiom, build, *, vocab=None, d_in=None, d_out=None, n_long, n_short,
       streamable=True, refusal=None, tags=(), output="tensor", max_len=256):
    if vocab is not None:
        kind, mk, d_out = "ids", _ids(name, vocab), (d_out or vocab)
    else:
        kind, mk = "cont", _cont(name, d_in)
    return ZooEntry(name=name, idiom=idiom, build=build, make_input=mk, input_kind=kind,
                    n_long=n_long, n_short=n_short, streamable=streamable, refusal=refusal,
                    tags=tuple(tags), vocab=vocab, d_in=d_in, d_out=d_out, max_len=max_len,
                    output=output)


#: DESIGN.md s4 idioms -> the tag used in ``ZooEntry.tags``
IDIOM_TAGS = {
    "safari implicit filter (MLP+Sin over positional features, decay window)": "implicit-filter",
    "rfft n=2L with `/ n` scaling": "fft-div-n",
    "rfft/irfft norm='forward'": "fft-norm-forward",
    "skip term D * u": "skip-D",
    "explicit filter parameter sliced [:L]": "explicit-filter",
    "direct conv1d, left padding L-1": "conv1d-leftpad",
    "direct conv1d, padding L-1 then [:L]": "conv1d-padslice",
    "shared filters per head (repeat_interleave)": "heads-repeat-interleave",
    "shared filters per head (expand/reshape)": "heads-expand",
    "channel-first layout": "channel-first",
    "channel-last layout": "channel-last",
    "FFT along dim=-1": "fft-dim-last",
    "FFT along dim=1 / dim=-2": "fft-dim-time-middle",
    "full complex fft/ifft + .real": "complex-fft",
    "next power of two FFT size": "fft-pow2",
    "dtype casts around the FFT": "dtype-cast",
    "order-N Hyena (several long convs per layer)": "order-n",
    "complex modal filter (view_as_complex, complex exp, .real.sum)": "modal",
    "buffers cached on the module and updated in forward": "cached-buffer",
    "positional buffer sliced [:L]": "buffer-slice",
    "learned absolute position embeddings over arange(L)": "pos-embedding",
    "tuple output": "out-tuple",
    "dict output": "out-dict",
    "object output with .logits": "out-object",
    "non-tensor output entry": "out-nontensor",
    "continuous input": "cont-input",
    "causal scan (cumsum)": "cumsum",
    "SSM kernel computed with opt_einsum.contract (S4D Vandermonde, H3 shift SSM)": "oe-contract",
    "fixed-length filter (N taps cut to min(N, L), zero-padded), valid past N": "fixed-taps",
    "graph break in forward": "graph-break",
    "short causal depthwise conv": "short-conv",
    "refusal: circular FFT conv": "neg-circular",
    "refusal: bidirectional conv": "neg-bidirectional",
    "refusal: softmax over time": "neg-softmax-time",
    "refusal: flip of the time axis": "neg-flip",
    "refusal: future shift": "neg-future-shift",
    "refusal: filter depends on L (prefix inconsistent)": "neg-prefix",
    "causal attention blocks in a hybrid (SDPA is_causal, explicit masks, GQA, RoPE, ALiBi, windows)":
        "attention-causal",
}


ZOO: list[ZooEntry] = [
    # ---------------------------------------------------------------- safari.py
    _e("safari_hyena_o2",
       "safari HyenaOperator order 2: in_proj, short Conv1d(k=3, padding=2)[..., :L], implicit "
       "HyenaFilter (buffers z,t at max_len sliced [:, :L], MLP with Sin, exponential modulation), "
       "fftconv with rfft(k, n=2L)/fft_size and irfft(norm='forward')[..., :L], skip D*u; "
       "pre-norm LM with tied lm head",
       safari.build_order2, vocab=safari.VOCAB, n_long=2, n_short=2,
       tags=("implicit-filter", "fft-div-n", "fft-norm-forward", "skip-D", "buffer-slice",
             "short-conv", "channel-first", "fft-dim-last", "dtype-cast")),
    _e("safari_hyena_o3",
       "safari HyenaOperator order 3 (2 fftconvs in sequence per layer, gated between by v*x_i); "
       "1/n carried by rfft(u, norm='forward') with irfft(norm='forward'); filter L1-normalized "
       "over CHANNELS (safari normalized=True, position-wise)",
       safari.build_order3, vocab=safari.VOCAB, n_long=4, n_short=2,
       tags=("implicit-filter", "fft-norm-forward", "skip-D", "order-n", "buffer-slice",
             "short-conv", "channel-first", "fft-dim-last")),
    _e("safari_hyena_graph_break",
       "safari Hyena order 2 with a GRAPH BREAK between the layers (Tensor.item() on a learned "
       "logit scale, used as a python float): a normal streamable model captured in 2 graphs",
       safari.build_graph_break, vocab=safari.VOCAB, n_long=2, n_short=2,
       tags=("implicit-filter", "fft-div-n", "skip-D", "short-conv", "graph-break")),
    # ---------------------------------------------------------------- explicit.py
    _e("longconv_explicit_cf",
       "explicit filter nn.Parameter [C, max_len] sliced [:, :L] + soft-threshold squash; "
       "channel-first end to end (k=1 Conv1d projections are pointwise, hand-written channel "
       "LayerNorm); rfft(u.float(), n=2L) ... irfft[..., :L].to(x.dtype); skip D",
       explicit.build_longconv, vocab=explicit.VOCAB, n_long=2, n_short=0,
       tags=("explicit-filter", "channel-first", "fft-dim-last", "dtype-cast", "skip-D", "bf16-ok")),
    _e("h3_explicit_cl",
       "H3-style: q/k/v, shift conv as F.pad(k, (3, 0)) + F.conv1d (weight param [D,1,4]), "
       "explicit kernel nn.Parameter [max_len, D] sliced [:L], FFT along dim=1 of [B, L, D] with "
       ".float() / .to(u.dtype), skip D, q * y",
       explicit.build_h3, vocab=explicit.VOCAB, n_long=2, n_short=2,
       tags=("explicit-filter", "channel-last", "fft-dim-time-middle", "dtype-cast", "skip-D",
             "short-conv", "bf16-ok")),
    # ---------------------------------------------------------------- direct_conv.py
    _e("direct_conv1d_leftpad",
       "direct long conv: F.pad(u, (L-1, 0)) then F.conv1d(u, k.flip(-1)[:, None], groups=C), "
       "explicit filter [C, max_len] sliced; short conv Conv1d(k=4, padding=3)[..., :-3]; post-norm",
       direct_conv.build_leftpad, vocab=direct_conv.VOCAB, n_long=2, n_short=2,
       tags=("conv1d-leftpad", "explicit-filter", "short-conv", "bf16-ok")),
    _e("direct_conv1d_padslice",
       "direct long conv: F.conv1d(v, k.flip(-1)[:, None], padding=L-1, groups=C)[..., :L]; "
       "filter from a GELU MLP over arange(L)/max_len features with exp decay; skip bias",
       direct_conv.build_padslice, vocab=direct_conv.VOCAB, n_long=2, n_short=0,
       tags=("conv1d-padslice", "implicit-filter", "skip-D")),
    # ---------------------------------------------------------------- multihead.py
    _e("multihead_repeat_interleave",
       "multi-head Hyena: filter k [H, L] from an MLP over arange(L) features, shared by "
       "channels via k.repeat_interleave(head_dim, dim=0); RMSNorm; short conv k=3",
       multihead.build_repeat_interleave, vocab=multihead.VOCAB, n_long=2, n_short=2,
       tags=("heads-repeat-interleave", "implicit-filter", "short-conv", "skip-D")),
    _e("multihead_expand",
       "multi-head Hyena: k[:, None, :].expand(H, head_dim, L).reshape(D, L); short conv k=3",
       multihead.build_expand, vocab=multihead.VOCAB, n_long=1, n_short=1,
       tags=("heads-expand", "implicit-filter", "short-conv", "skip-D")),
    _e("multihead_broadcast",
       "multi-head Hyena: signal reshaped to [B, H, head_dim, L], filter spectrum broadcast as "
       "[1, H, 1, F] (no channel copy of the filter); no short conv",
       multihead.build_broadcast, vocab=multihead.VOCAB, n_long=2, n_short=0,
       tags=("heads-expand", "implicit-filter", "skip-D")),
    # ---------------------------------------------------------------- layouts.py
    _e("complex_fft_cl",
       "full complex torch.fft.fft(u, n=2L, dim=1) * fft(k, n=2L, dim=0), ifft(dim=1).real[:, :L], "
       "channel-last; closed-form damped-cosine filter over arange(L)",
       layouts.build_complex_fft, vocab=layouts.VOCAB, n_long=2, n_short=0,
       tags=("complex-fft", "channel-last", "fft-dim-time-middle")),
    _e("pow2_log2_cf",
       "fft_size = 2 ** math.ceil(math.log2(2 * L)); rfft/irfft along dim=-1, channel-first "
       "[B, C, L] end to end (eval BatchNorm1d, k=1 Conv1d); explicit param [C, max_len] times a "
       "window buffer sliced [:L]",
       layouts.build_pow2_log2, vocab=layouts.VOCAB, n_long=2, n_short=0,
       tags=("fft-pow2", "channel-first", "fft-dim-last", "explicit-filter", "buffer-slice")),
    _e("pow2_bitlength_cl",
       "n = 1 << (2 * L - 1).bit_length(); rfft/irfft along dim=-2 of [B, L, D], [..., :L, :], "
       ".float() before / .type_as(x) after; Tanh MLP filter",
       layouts.build_pow2_bitlength, vocab=layouts.VOCAB, n_long=1, n_short=0,
       tags=("fft-pow2", "channel-last", "fft-dim-time-middle", "dtype-cast", "implicit-filter")),
    # ---------------------------------------------------------------- modal.py
    _e("striped_hyena_modal",
       "StripedHyena-style: blocks hyena(implicit MLP) / modal / hyena; modal filter "
       "h = (view_as_complex(residues) * (view_as_complex(log_poles) * t).exp()).real.sum(1) with "
       "t an arange buffer regrown in forward and sliced; short FIR F.conv1d(w [3D,1,3], "
       "padding=2)[..., :L] + bias; RMSNorm, gated MLP",
       modal.build_striped, vocab=modal.VOCAB, n_long=3, n_short=3,
       tags=("modal", "implicit-filter", "short-conv", "fft-div-n", "fft-norm-forward",
             "skip-D", "cached-buffer", "dtype-cast")),
    _e("modal_pow_cont",
       "continuous [B, L, 6] -> [B, L, 2]; modal filter (view_as_complex(res) * "
       "exp(log_r + 1j*theta) ** t).real.sum(-1) over arange(L)",
       modal.build_modal_pow, d_in=modal.D_IN, d_out=modal.D_OUT, n_long=2, n_short=0,
       tags=("modal", "cont-input")),
    # ---------------------------------------------------------------- multirange.py
    _e("evo2_multirange",
       "Evo 2-style stack: short featurizers (conv1d k=3/7/5, left padding), 128-tap medium "
       "filters h[:, :L] by an FFT conv of size 2L, a modal long filter (polar poles ** arange(L)); "
       "RMSNorm, gated MLP",
       multirange.build_multirange, vocab=32, n_long=3, n_short=3,
       tags=("fixed-taps", "explicit-filter", "modal", "short-conv", "dtype-cast")),
    _e("h3_shift_fixed_taps",
       "H3-style 16-tap shift kernel k[:, :min(N, L)], F.pad to L when N < L; a modal block",
       multirange.build_shift, vocab=32, n_long=2, n_short=2,
       tags=("fixed-taps", "modal", "short-conv", "dtype-cast")),
    # ---------------------------------------------------------------- cached.py
    _e("cached_filter_buffer",
       "filter cached in register_buffer('_k_cache') and recomputed in forward when the length "
       "changes; positional buffer t [max_len, 1] sliced [:L]",
       cached.build_cached_filter, vocab=cached.VOCAB, n_long=2, n_short=0,
       tags=("cached-buffer", "buffer-slice", "implicit-filter", "skip-D")),
    _e("learned_pos_embedding",
       "wte(ids) + wpe(torch.arange(L)) (nn.Embedding(max_len, d)); explicit kernel [max_len, D] "
       "sliced [:L], FFT dim=1; short depthwise conv on k",
       cached.build_posemb, vocab=cached.VOCAB, n_long=2, n_short=2,
       tags=("pos-embedding", "explicit-filter", "channel-last", "fft-dim-time-middle",
             "short-conv")),
    # ---------------------------------------------------------------- outputs.py
    _e("out_tuple",
       "returns (logits, hidden) ; HyenaDNA-style backbone, explicit decayed filter",
       outputs.build_tuple, vocab=outputs.VOCAB, n_long=2, n_short=2, output="tuple",
       tags=("out-tuple", "explicit-filter", "short-conv", "skip-D")),
    _e("out_dict",
       "returns {'logits': ..., 'aux': hidden}",
       outputs.build_dict, vocab=outputs.VOCAB, n_long=1, n_short=1, output="dict",
       tags=("out-dict", "explicit-filter", "short-conv", "skip-D")),
    _e("out_object",
       "returns a dataclass CausalLMOutput(.logits, .hidden_states tuple, past_key_values=None, "
       "model_name str): non-tensor entries pass through",
       outputs.build_object, vocab=outputs.VOCAB, n_long=2, n_short=2, output="object",
       tags=("out-object", "out-nontensor", "explicit-filter", "short-conv", "skip-D")),
    _e("out_nested_namedtuple",
       "returns (Out(logits=..., hidden=...), None) with Out = collections.namedtuple(...) made "
       "inside forward (a new class every call)",
       outputs.build_nested_namedtuple, vocab=outputs.VOCAB, n_long=1, n_short=1, output="tuple",
       tags=("out-tuple", "out-nontensor", "explicit-filter", "short-conv", "skip-D")),
    _e("hyenadna_cont",
       "continuous HyenaDNA-style regressor [B, L, 4] -> [B, L, 3] (softplus tracks)",
       outputs.build_dna, d_in=outputs.D_IN, d_out=outputs.D_OUT, n_long=2, n_short=2,
       tags=("cont-input", "explicit-filter", "short-conv", "skip-D")),
    # ---------------------------------------------------------------- scan.py
    _e("cumsum_running_norm",
       "causal scan: running mean/var normalization with cumsum along time (cumsum: the front "
       "end may stream it exactly or refuse it clearly; not counted as a long conv) + one FFT conv",
       scan.build_cumsum, vocab=scan.VOCAB, n_long=1, n_short=0,
       tags=("cumsum", "explicit-filter")),
    # ---------------------------------------------------------------- ssm.py
    _e("s4d_contract",
       "S4D LM: diagonal SSM kernel 2*Re(contract('hn,hnl->hl', C*(exp(dt*A)-1)/A, "
       "exp(dt*A*arange(L)))) with `from opt_einsum import contract` (module global), complex "
       "A from torch.complex, C by view_as_complex; rfft/irfft n=2L [..., :L], skip D, GELU, "
       "Linear, pre-LayerNorm residual blocks",
       ssm.build_s4d, vocab=ssm.VOCAB, n_long=2, n_short=0,
       tags=("oe-contract", "modal", "skip-D", "channel-first", "fft-dim-last")),
    _e("h3_contract",
       "H3 LM: q/k/v projections, y = out(diag_ssm(shift_ssm(k) * v) * q); shift SSM kernel "
       "written the H3 way (C[:, :min(N, L)], F.pad to L when N < L) in block 1 and as "
       "oe.contract('hn,nl->hl', C, one-hot powers S^l e_0 over arange(L)) in block 2; diagonal "
       "S4D kernel via contract; both SSMs FFT convs with n=2L",
       ssm.build_h3, vocab=ssm.VOCAB, n_long=4, n_short=0,
       tags=("oe-contract", "modal", "skip-D", "channel-first", "fft-dim-last")),
    _e("s4d_bidirectional",
       "REFUSE: S4D with a two-sided kernel (S4 bidirectional=True): "
       "F.pad(k_fwd, (0, L)) + F.pad(k_bwd.flip(-1), (L, 0)), one FFT of size 2L, [..., :L]",
       ssm.build_bidirectional, vocab=ssm.VOCAB, n_long=0, n_short=0,
       streamable=False, refusal="non-causal",
       tags=("oe-contract", "neg-bidirectional", "violates:causality", "violates:prefix")),
    # ---------------------------------------------------------------- negatives.py
    _e("neg_circular_fft",
       "REFUSE: circular FFT conv, rfft/irfft with n=L (no zero padding)",
       negatives.build_circular, vocab=negatives.VOCAB, n_long=0, n_short=0,
       streamable=False, refusal="circular",
       tags=("neg-circular", "violates:causality", "violates:prefix")),
    _e("neg_symmetric_conv1d",
       "REFUSE: bidirectional conv1d, centered filter of 2*(L//2)+1 taps, padding=L//2 both sides",
       negatives.build_symmetric_conv, vocab=negatives.VOCAB, n_long=0, n_short=0,
       streamable=False, refusal="non-causal",
       tags=("neg-bidirectional", "violates:causality", "violates:prefix")),
    _e("neg_centered_fft",
       "REFUSE: bidirectional FFT conv, n=2L but keeps the centered slice [L//2 : L//2 + L]",
       negatives.build_centered_fft, vocab=negatives.VOCAB, n_long=0, n_short=0,
       streamable=False, refusal="non-causal",
       tags=("neg-bidirectional", "violates:causality", "violates:prefix")),
    _e("neg_softmax_time",
       "REFUSE: softmax over the time axis (attention-like pooling broadcast to all positions) "
       "next to a causal FFT conv",
       negatives.build_softmax_pool, vocab=negatives.VOCAB, n_long=1, n_short=0,
       streamable=False, refusal="non-causal",
       tags=("neg-softmax-time", "violates:causality", "violates:prefix")),
    _e("neg_time_flip",
       "REFUSE: torch.flip along time (bidirectional Hyena: conv(u) + flip(conv(flip(u))))",
       negatives.build_flip, vocab=negatives.VOCAB, n_long=2, n_short=0,
       streamable=False, refusal="non-causal",
       tags=("neg-flip", "violates:causality", "violates:prefix")),
    _e("neg_future_shift",
       "REFUSE: future shift F.pad(x[:, 1:], (0, 0, 0, 1)) mixed into every position",
       negatives.build_next_token, vocab=negatives.VOCAB, n_long=1, n_short=0,
       streamable=False, refusal="non-causal",
       tags=("neg-future-shift", "violates:causality", "violates:prefix")),
    _e("neg_filter_norm_over_length",
       "REFUSE: causal FFT conv but the filter is L1-normalized over its length L, so it "
       "depends on L (prefix consistency of the folded filter fails)",
       negatives.build_length_norm, vocab=negatives.VOCAB, n_long=1, n_short=0,
       streamable=False, refusal="prefix",
       tags=("neg-prefix", "violates:prefix")),
    _e("neg_block_restart",
       "REFUSE: block-restarting conv: L front-padded to a multiple of 16, reshaped to blocks of "
       "16, causal FFT conv (n=32) within each block only (blocks counted from the end of the "
       "sequence)",
       negatives.build_block_restart, vocab=negatives.VOCAB, n_long=0, n_short=0,
       streamable=False, refusal="block-restarting",
       tags=("violates:prefix",)),
    # ---------------------------------------------------------------- attention.py (hybrids)
    _e("hybrid_attention_sdpa",
       "StripedHyena-style hybrid: an order-2 Hyena block, then a causal attention block: rotary "
       "embeddings with cos/sin over arange(L), 4 query heads on 2 kv heads by expand, "
       "F.scaled_dot_product_attention(q, k, v, is_causal=True); streamed with a KV cache (more "
       "attention idioms, the refusals and the checks of the verification in tests/test_attention.py)",
       attention.build_sdpa, vocab=attention.VOCAB, n_long=1, n_short=1,
       tags=("attention-causal", "implicit-filter", "short-conv", "skip-D")),
]


def names() -> list[str]:
    return [e.name for e in ZOO]


def get(name: str) -> ZooEntry:
    for e in ZOO:
        if e.name == name:
            return e
    raise KeyError(f"no zoo entry named {name!r}; known: {', '.join(names())}")


def streamable() -> list[ZooEntry]:
    return [e for e in ZOO if e.streamable]


def refused() -> list[ZooEntry]:
    return [e for e in ZOO if not e.streamable]


def output_tensors(out) -> list[Tensor]:
    """All tensors of a model output (tensor, tuple/list, dict, or object with attributes)."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in output_tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in output_tensors(o)]
    if hasattr(out, "__dict__") and not isinstance(out, type):
        return [t for o in vars(out).values() for t in output_tensors(o)]
    return []
