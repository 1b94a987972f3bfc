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

from typing import Optional

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
# on the CPU = position, prefill length, block start, state id, native flag; ``k`` [C, max_len]
# the filters; ``config`` = block, fft_from, delay_from, chunk_flops, kernels (0 auto, 1 torch)):
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
    _LIB.define(_schema)


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
