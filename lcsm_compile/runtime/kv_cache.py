"""The KV cache of a streamed attention layer, and the implementations of ``lcsm::kv_attend`` /
``lcsm::kv_prefill`` (schemas in :mod:`lcsm_compile.ops`; slots in :mod:`lcsm_compile.passes.kv_slots`).

State per attention layer: ``k [N / g, S, D]`` and ``v [N / g, S, Dv]`` (``N`` = batch x heads,
batch-major; ``g`` the query heads that share one key/value head, 1 without grouped-query
heads: the model's keys and values, repeated ``g`` times by ``repeat_interleave`` / ``expand``,
are kept once; ``S`` = ``max_len``, or the sliding window when it is shorter: a ring, slot
``t % S`` holds position ``t``). Which slots are valid follows from the position alone, so
``reset`` needs no clearing, a step retried at the same position rewrites its own slot, and a
``state_dict`` is the two tensors.

* ``kv_attend`` (one position ``t``): writes ``k_t``, ``v_t`` (one row per group) to slot ``t % S``, then attends
  over the ``min(t + 1, S)`` valid slots: the distance of slot ``i`` is ``(t - i) mod S`` (a
  ring holds exactly the window), which gives the ALiBi bias ``-m_h * distance``: scores by one
  batched matrix-vector product over the cache, softmax, a second one with the values (O(t) per
  step, O(W) with a window; measured faster than ``F.scaled_dot_product_attention`` for one
  query on this CPU).
* ``kv_prefill`` (positions ``0 .. P-1``): the prompt's attention by the full-sequence math
  (:func:`lcsm_compile.ops.causal_attention_math`) and its last ``S`` keys/values written.

Importing this module registers the implementations (the runtime's program module imports it).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import torch

from ..errors import SessionError
from ..ops import causal_attention_math, compute_dtype, register_stateful_impl
from ..passes.kv_slots import AttnSlot, attention_slots

__all__ = ["KVCache", "kv_caches", "kv_attend_reference"]


@dataclasses.dataclass
class KVCache:
    """One attention layer's state (module doc) and its :class:`~lcsm_compile.passes.kv_slots.AttnSlot`."""

    k: torch.Tensor
    v: torch.Tensor
    slot: AttnSlot

    def reset(self) -> None:
        """Nothing to clear: which slots are valid follows from the position."""

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


def kv_caches(plan) -> Dict[str, KVCache]:
    """A zeroed KV cache for every attention layer of ``plan`` (at its batch and ``max_len``)."""
    low = plan.lowered
    out = {}
    for name, s in attention_slots(low.gm, low.ta.batch if low.ta is not None else None, plan.batch_size,
                                   plan.max_len).items():
        k = torch.zeros(s.rows, s.positions, s.d, dtype=s.dtype, device=s.device)
        v = torch.zeros(s.rows, s.positions, s.dv, dtype=s.dtype, device=s.device)
        out[name] = KVCache(k, v, s)
    return out


def _bias(slopes, n_rows: int, dist: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """The ALiBi bias ``-m[row % H] * dist`` as ``[N, n]`` (None without slopes)."""
    if not slopes:
        return None
    m = torch.tensor(list(slopes), dtype=dtype, device=dist.device)
    m = m[torch.arange(n_rows, device=dist.device) % m.numel()]
    return -m[:, None] * dist.to(dtype)[None, :]


def kv_attend_reference(q: torch.Tensor, kcache: torch.Tensor, vcache: torch.Tensor, t: int, scale: float,
                        window: int, slopes, kv_group: int = 1) -> torch.Tensor:
    """Attention of position ``t``'s queries ``q [N, 1, D]`` over the valid slots of the cache
    (already holding position ``t``; ``N / kv_group`` rows, query rows ``n`` use cache row
    ``n // kv_group``): ``[N, 1, Dv]`` in ``vcache``'s dtype."""
    N = q.shape[0]
    S = kcache.shape[1]
    n = min(t + 1, S)
    cd = compute_dtype(q.dtype)
    idx = torch.arange(n, device=q.device)
    dist = (t - idx) % S if window else t - idx
    K, V = kcache[:, :n], vcache[:, :n]
    if K.dtype != cd:
        K, V = K.to(cd), V.to(cd)
    g = kv_group
    qg = q.to(cd).reshape(N // g, g, q.shape[-1])                     # the queries of one kv row together
    s = torch.bmm(qg, K.transpose(1, 2)) if g > 1 else torch.bmm(K, qg.transpose(1, 2)).transpose(1, 2)
    s = s.reshape(N, n).mul_(scale)                                    # [N, n]
    bias = _bias(slopes, N, dist, cd)
    if bias is not None:
        s.add_(bias)
    p = torch.softmax(s, -1).reshape(N // g, g, n)
    y = torch.bmm(p, V).reshape(N, 1, V.shape[-1])                     # [N, 1, Dv]
    return y.to(vcache.dtype)


def _kv_attend(q, k, v, kcache, vcache, pos, scale: float, window: int, slopes, kv_group: int):
    t = int(pos.reshape(-1)[0])
    S = kcache.shape[1]
    if not window and t >= S:
        raise SessionError(f"kv_attend: position {t} is past the KV cache of {S} positions")
    s = t % S
    kcache[:, s] = k[::kv_group, 0]
    vcache[:, s] = v[::kv_group, 0]
    return kv_attend_reference(q, kcache, vcache, t, scale, window, slopes, kv_group)


def _kv_prefill(q, k, v, kcache, vcache, scale: float, window: int, slopes, kv_group: int):
    P = q.shape[1]
    S = kcache.shape[1]
    if not window and P > S:
        raise SessionError(f"kv_prefill: {P} positions do not fit the KV cache of {S} positions")
    y = causal_attention_math(q, k, v, scale, window, slopes)
    lo = max(0, P - S)
    slots = torch.arange(lo, P, device=q.device) % S
    kcache[:, slots] = k[::kv_group, lo:P].to(kcache.dtype)
    vcache[:, slots] = v[::kv_group, lo:P].to(vcache.dtype)
    return y


register_stateful_impl("kv_attend", _kv_attend)
register_stateful_impl("kv_prefill", _kv_prefill)
