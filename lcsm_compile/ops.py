"""The custom ops that the rewrite pass puts in place of matched convolution regions.

Both ops use one canonical layout, whatever layout the user's model had: channels second to
last, time last. The rewrite pass inserts the permutes/reshapes around them.

* ``lcsm::long_conv(u, k) -> y``: causal long convolution, per channel,
  ``y[..., c, t] = sum_{s <= t} u[..., c, s] * k[c, t - s]``.
  ``u``: ``[..., C, L]``; ``k``: ``[C, K]`` with any ``K`` (zero beyond ``K``; only
  ``k[:, :L]`` matters). Computed with an FFT of size ``>= 2L`` in fp32 or fp64
  (bf16/fp16 inputs are computed in fp32 and cast back).
* ``lcsm::short_conv(u, w, bias) -> y``: causal depthwise convolution with a short kernel,
  the same as ``F.conv1d(F.pad(u, (K-1, 0)), w[:, None, :], bias, groups=C)``:
  ``y[..., c, t] = bias[c] + sum_{i < K} w[c, i] * u[..., c, t - (K - 1) + i]``.

The math behind them is here too, as plain functions (the torch twins every kernel and
baseline is checked against): :func:`causal_conv_fft`, :func:`causal_conv_direct` (the
definition, O(L^2): fp64 golden values), :func:`compute_dtype`. This module imports nothing
else from the package: every layer may use it.

Both ops have fake (meta) implementations, so Inductor keeps each as a single extern call and
``torch.export`` keeps them as single nodes. They have no autograd formula: lcsm-compile is
for inference, and a backward through them raises.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

__all__ = ["long_conv", "short_conv", "causal_conv_fft", "causal_conv_direct", "compute_dtype",
           "causal_short_conv", "STATEFUL_SCHEMAS", "register_stateful_impl"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype convolutions are computed in: fp64 stays fp64, everything else is fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fft_size(n: int) -> int:
    """Smallest power of two >= n (at least 1)."""
    return 1 << max(0, (n - 1).bit_length())


def causal_conv_fft(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal convolution along the last dim: ``y[..., c, t] = sum_{s<=t} u[..., c, s] k[c, t-s]``.

    Args:
        u: ``[..., C, L]`` input.
        k: ``[C, K]`` filter (zero beyond ``K``), or ``[K]`` shared by all channels.
    Returns:
        ``[..., C, L]`` in the dtype of ``u``; computed in fp32 (fp64 for fp64 inputs).
    """
    L = u.shape[-1]
    if L == 0:
        return u.clone()
    cd = compute_dtype(u.dtype)
    kk = k[..., :L].to(cd)
    n = _fft_size(2 * L)
    U = torch.fft.rfft(u.to(cd), n=n)
    Kf = torch.fft.rfft(kk, n=n)
    y = torch.fft.irfft(U * Kf, n=n)[..., :L]
    return y.to(u.dtype)


def causal_conv_direct(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The causal convolution by its definition, O(L^2): the golden value for small tests."""
    L = u.shape[-1]
    cd = compute_dtype(u.dtype)
    kk = torch.zeros(*k.shape[:-1], L, dtype=cd, device=k.device)
    m = min(L, k.shape[-1])
    kk[..., :m] = k[..., :m].to(cd)
    uu = u.to(cd)
    y = torch.zeros_like(uu)
    for t in range(L):
        # sum_{s<=t} u[s] k[t-s]
        y[..., t] = (uu[..., : t + 1] * kk[..., : t + 1].flip(-1)).sum(-1)
    return y.to(u.dtype)



@torch.library.custom_op("lcsm::long_conv", mutates_args=())
def long_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal long convolution ``y[..., c, t] = sum_{s<=t} u[..., c, s] k[c, t-s]`` (FFT). The
    output is contiguous, as its fake says (Inductor checks the strides of extern calls)."""
    return causal_conv_fft(u, k).contiguous()


@long_conv.register_fake
def _long_conv_fake(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return u.new_empty(u.shape)  # contiguous, as the op returns it


def causal_short_conv(u: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Causal depthwise short convolution of ``u [..., C, L]``, kernel ``w [C, K]``, optional
    ``bias [C]`` (the math of ``lcsm::short_conv``)."""
    C, K = w.shape
    lead = u.shape[:-2]
    L = u.shape[-1]
    x = u.reshape(-1, C, L)
    y = F.conv1d(F.pad(x, (K - 1, 0)), w.to(x.dtype)[:, None, :],
                 None if bias is None else bias.to(x.dtype), groups=C)
    return y.reshape(*lead, C, L)


@torch.library.custom_op("lcsm::short_conv", mutates_args=())
def short_conv(u: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Causal depthwise short convolution, kernel ``w`` of shape ``[C, K]``, optional ``bias [C]``."""
    return causal_short_conv(u, w, bias).contiguous()


@short_conv.register_fake
def _short_conv_fake(u: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    return u.new_empty(u.shape)  # contiguous, as the op returns it


# ---------------------------------------------------------------------------------------------
# The stateful ops of the streaming programs. Their state is tensors passed as arguments (and
# mutated in place: ``(a!)`` in the schema), so a step program is one FX graph that
# ``torch.compile(fullgraph=True)`` compiles and ``torch.export`` exports with these ops as
# nodes. Only the schemas and fake (shape) implementations live here; the implementations are
# registered by :mod:`lcsm_compile.runtime.state_ops` (the online engine and its kernels).
# They are defined with ``torch.library.Library`` rather than ``custom_op``: the call overhead
# is ~8 us instead of 25-70 us, which matters for ops that run once per layer per token.
#
# Online long convolution of a group (state of :class:`lcsm_compile.runtime.engine.OnlineConv`:
# ``hist``, ``acc`` [B, C, max_len], ``blk_hist``, ``blk_acc`` [block, B, C], ``meta`` int64 [5]
# on the CPU = position, prefill length, block start, state id, red-cell kernels (0 torch, 1 native,
# 2 triton); ``k`` [C, max_len] the filters; ``config`` = block, fft_from, delay_from, chunk_flops,
# kernels (0 auto, 1 torch, 2 native, 3 triton: codegen.KERNEL_CODES), ...):
#
# * ``online_diag(u [B, n], blk_hist!, blk_acc, kb, meta, c0) -> y [B, n]``: the output of the
#   current position for channels ``c0 .. c0 + n`` (one group member); records ``u``.
# * ``online_advance(hist!, acc!, blk_hist!, blk_acc!, meta!, k, config)``: after every member's
#   diag: the tile work of the position, then the position moves on by one.
# * ``online_prefill(u [B, n, P], hist!, acc!, meta, k, c0) -> y [B, n, P]``: a member's prompt.
# * ``online_finish_prefill(hist!, acc!, blk_hist!, blk_acc!, meta!, k, config, P)``: after every
#   member's prefill: the position becomes P.
#
# Short causal depthwise convolution as a ring buffer ``buf [B, C, K]`` indexed by position
# (slot ``t % K`` holds the input of position ``t``), so a step that is retried at the same
# position overwrites its own slot and nothing needs rolling back:
#
# * ``ring_step(u [B, C], buf!, w [C, K], bias?, pos [1]) -> y [B, C]``
# * ``ring_prefill(u [B, C, P], buf!, w, bias?) -> y [B, C, P]`` (from position 0, ``buf`` zero)

_LIB = torch.library.Library("lcsm", "FRAGMENT")

#: tags of the ops that read host state (the position in ``meta``, the schedule): a CUDA graph
#: that captured one would replay its first call's position. Inductor's own CUDA graphs
#: (``mode="reduce-overhead"``) leave such ops out (measured wrong without the tag: 0.25
#: relative error); this project's graphs key on the one host value that varies
#: (runtime/cuda_graphs.py). The tag exists in torch >= 2.8 (older: no tag).
HOST_STATE_TAGS = tuple(t for t in (getattr(torch.Tag, "cudagraph_unsafe", None),) if t is not None)


def _define(schema: str) -> None:
    try:
        _LIB.define(schema, tags=HOST_STATE_TAGS)
    except TypeError:  # a torch whose define takes no tags
        _LIB.define(schema)


STATEFUL_SCHEMAS = {
    "online_diag": "online_diag(Tensor u, Tensor(a!) blk_hist, Tensor blk_acc, Tensor kb, Tensor meta, "
                   "int c0) -> Tensor",
    "online_advance": "online_advance(Tensor(a!) hist, Tensor(b!) acc, Tensor(c!) blk_hist, Tensor(d!) blk_acc, "
                      "Tensor(e!) meta, Tensor k, int[] config) -> ()",
    "online_prefill": "online_prefill(Tensor u, Tensor(a!) hist, Tensor(b!) acc, Tensor meta, Tensor k, "
                      "int c0) -> Tensor",
    "online_finish_prefill": "online_finish_prefill(Tensor(a!) hist, Tensor(b!) acc, Tensor(c!) blk_hist, "
                             "Tensor(d!) blk_acc, Tensor(e!) meta, Tensor k, int[] config, SymInt length) -> ()",
    "ring_step": "ring_step(Tensor u, Tensor(a!) buf, Tensor w, Tensor? bias, Tensor pos) -> Tensor",
    "ring_prefill": "ring_prefill(Tensor u, Tensor(a!) buf, Tensor w, Tensor? bias) -> Tensor",
}
for _schema in STATEFUL_SCHEMAS.values():
    _define(_schema)


def _fake_like_u(u, *args):
    return torch.empty_like(u)


def _fake_none(*args):
    return None


for _name in ("online_diag", "online_prefill", "ring_step", "ring_prefill"):
    torch.library.register_fake(f"lcsm::{_name}", _fake_like_u, lib=_LIB)
for _name in ("online_advance", "online_finish_prefill"):
    torch.library.register_fake(f"lcsm::{_name}", _fake_none, lib=_LIB)


def register_stateful_impl(name: str, fn) -> None:
    """Register ``fn`` as the implementation of ``lcsm::<name>`` (every device: the function
    picks its kernels from its arguments)."""
    _LIB.impl(name, fn, "CompositeExplicitAutograd")


# ---------------------------------------------------------------------------------------------
# Causal softmax attention (docs/frontend.md, "Attention"). The canonical op a verified attention
# region becomes, in the layout of the region's two batched matmuls: ``q [N, L, D]``,
# ``k [N, L, D]``, ``v [N, L, Dv]`` -> ``[N, L, Dv]`` (``N`` = batch x heads, batch-major), with
#
#     y[n, t] = sum_{s in S(t)} softmax_s(scale * q[n, t] . k[n, s] - m[n % H] * (t - s)) v[n, s]
#
# where ``S(t) = {s : 0 <= t - s < window}`` (``window`` 0: ``0 <= s <= t``) and ``m`` the ALiBi
# slopes (``slopes`` of length ``H``, None: no bias). Its streaming form is two stateful ops on a
# KV cache per attention layer (``kcache [N / g, S, D]``, ``vcache [N / g, S, Dv]``, ``S`` =
# max_len, or the window: a ring, slot ``t % S`` holds position ``t``; ``g = kv_group``: rows of
# ``k`` and ``v`` repeated in blocks of ``g`` (grouped-query heads) are kept once); implementations
# in :mod:`lcsm_compile.runtime.kv_cache`:
#
# * ``kv_attend(q [N, 1, D], k, v, kcache!, vcache!, pos [1], scale, window, slopes?, kv_group)
#   -> [N, 1, Dv]``: writes position ``pos``'s keys/values to its slot and attends over ``S(pos)``;
# * ``kv_prefill(q [N, P, D], k, v, kcache!, vcache!, scale, window, slopes?, kv_group) -> [N, P, Dv]``:
#   the prompt's attention from position 0, its keys/values written to the cache.


def causal_attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int = 0,
                          slopes: Optional[list] = None, block: int = 1024) -> torch.Tensor:
    """The math of ``lcsm::causal_attention`` (see the block comment above): computed in fp32
    (fp64 for fp64 inputs) by ``F.scaled_dot_product_attention``, query rows in blocks of
    ``block`` when a window or a bias needs an explicit mask; returned in ``v``'s dtype."""
    N, L, _ = q.shape
    cd = compute_dtype(q.dtype)
    qq, kk, vv = q.to(cd), k.to(cd), v.to(cd)
    if L == 0:
        return v.new_empty(N, 0, v.shape[-1])
    if not window and not slopes:
        return F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, scale=scale).to(v.dtype)
    m = None
    if slopes:
        sl = torch.tensor(list(slopes), dtype=cd, device=q.device)
        m = sl[torch.arange(N, device=q.device) % sl.numel()][:, None, None]
    out = []
    for t0 in range(0, L, block):
        t1 = min(L, t0 + block)
        s0 = max(0, t0 - window + 1) if window else 0
        dist = (torch.arange(t0, t1, device=q.device)[:, None] - torch.arange(s0, t1, device=q.device)[None, :])
        keep = dist >= 0
        if window:
            keep &= dist < window
        bias = torch.zeros(dist.shape, dtype=cd, device=q.device).masked_fill(~keep, float("-inf"))
        if m is not None:
            bias = bias - m * dist.to(cd)
        out.append(F.scaled_dot_product_attention(qq[:, t0:t1], kk[:, s0:t1], vv[:, s0:t1], attn_mask=bias,
                                                  scale=scale))
    return torch.cat(out, 1).to(v.dtype)


@torch.library.custom_op("lcsm::causal_attention", mutates_args=())
def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int,
                     slopes: Optional[List[float]]) -> torch.Tensor:
    """Causal softmax attention with an optional sliding window and ALiBi slopes (see above)."""
    return causal_attention_math(q, k, v, scale, window, slopes).contiguous()


@causal_attention.register_fake
def _causal_attention_fake(q, k, v, scale, window, slopes):
    return v.new_empty((*q.shape[:-1], v.shape[-1]))


_define("kv_attend(Tensor q, Tensor k, Tensor v, Tensor(a!) kcache, Tensor(b!) vcache, Tensor pos, "
            "float scale, int window, float[]? slopes, int kv_group) -> Tensor")
_define("kv_prefill(Tensor q, Tensor k, Tensor v, Tensor(a!) kcache, Tensor(b!) vcache, float scale, "
            "int window, float[]? slopes, int kv_group) -> Tensor")


def _fake_attend(q, k, v, *args):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


for _name in ("kv_attend", "kv_prefill"):
    torch.library.register_fake(f"lcsm::{_name}", _fake_attend, lib=_LIB)

__all__ += ["causal_attention", "causal_attention_math"]


# ---------------------------------------------------------------------------------------------
# Modal long convolutions (docs/streaming.md, "Modal filters"): a filter
# ``k[c, t] = Re(sum_n r[c, n] p[c, n] ** t)`` streams as the recurrence ``x_t = p x_{t-1} + u_t``,
# ``y_t = Re(sum_n r_n x_t[n])``. State ``state [2, B, C, N, 2]`` (fp64, complex as real pairs;
# two slots by position parity: step ``t`` reads slot ``(t - 1) % 2`` and writes slot ``t % 2``,
# so a step retried at the same position recomputes the same state: nothing to roll back);
# ``poles``, ``residues`` ``[C, N, 2]`` (fp64). Implementations in :mod:`lcsm_compile.runtime.modal`:
#
# * ``modal_step(u [B, C], state!, poles, residues, pos [1]) -> y [B, C]``;
# * ``modal_prefill(u [B, C, P], state!, poles, residues) -> y [B, C, P]`` (from position 0: the
#   outputs by one FFT convolution with ``h[:P]`` regenerated from the poles and residues, the
#   state at the prompt's end by a chunked Vandermonde sum).

_define("modal_step(Tensor u, Tensor(a!) state, Tensor poles, Tensor residues, Tensor pos) -> Tensor")
_define("modal_prefill(Tensor u, Tensor(a!) state, Tensor poles, Tensor residues) -> Tensor")
for _name in ("modal_step", "modal_prefill"):
    torch.library.register_fake(f"lcsm::{_name}", _fake_like_u, lib=_LIB)
