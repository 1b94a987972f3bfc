"""kv_slots: where an attention layer's slot goes in the streaming programs (its KV cache).

Contract: pure functions. :func:`attention_slots` reads every ``lcsm::causal_attention`` node of
a lowered graph (its spec is in its arguments, its shapes in ``meta['val']``) and returns one
:class:`AttnSlot` per node at a given batch and ``max_len``; :func:`lower_attention_slot`
emits the stateful op a slot becomes (called by :func:`lcsm_compile.passes.step_graph.lower_slots`):

* step: ``lcsm::kv_attend(q [N, 1, D], k, v, kcache!, vcache!, pos, scale, window, slopes, group)``;
* prefill: ``lcsm::kv_prefill(q [N, P, D], k, v, kcache!, vcache!, scale, window, slopes, group)``.

The cache of a layer is ``kcache [N / g, S, D]`` and ``vcache [N / g, S, Dv]`` (``N`` = batch x
heads, ``g`` the query heads per kv head of grouped-query attention, ``S`` = ``max_len``, or the
window when it is shorter: a ring whose slot ``t % S`` holds position ``t``). The ops write a
position's keys and values to its own slot, so a step retried at the same position rewrites
what it wrote and nothing needs rolling back.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Sequence

import sympy
import torch
import torch.fx as fx

from .common import size_exprs, val
from .match_attention import ATTENTION

__all__ = ["AttnSlot", "attention_slots", "lower_attention_slot", "KV_STATE"]

#: the state tensors of an attention layer (``state_attr(node name, field)``)
KV_STATE = ("kcache", "vcache")


@dataclasses.dataclass(frozen=True)
class AttnSlot:
    """One attention layer's cache and spec: ``n`` rows (batch x heads), ``d`` / ``dv`` the key
    and value widths, ``positions`` the cache length, the op's ``scale``, ``window``, ``slopes``,
    and ``group``: rows of ``k``/``v`` repeated in blocks of ``group`` (grouped-query heads, found
    by the verification: ``node.meta["lcsm_kv_group"]``), kept once."""

    n: int
    d: int
    dv: int
    positions: int
    scale: float
    window: int
    slopes: Optional[tuple]
    dtype: torch.dtype
    device: torch.device
    group: int = 1

    @property
    def rows(self) -> int:
        """Rows of the cache: one per block of ``group`` rows of ``N`` (grouped-query heads)."""
        return self.n // self.group

    def cache_bytes(self) -> int:
        """Bytes of the layer's two cache tensors."""
        return self.rows * self.positions * (self.d + self.dv) * torch.empty((), dtype=self.dtype).element_size()


def _rows(e: Any, batch_symbol: Any, batch_size: int) -> int:
    if isinstance(e, sympy.Expr):
        if batch_symbol is not None and isinstance(batch_symbol, sympy.Symbol):
            e = e.subs(batch_symbol, batch_size)
        if not e.is_Integer:
            raise ValueError(f"attention rows {e} are not a number at batch {batch_size}")
    return int(e)


def attention_slots(gm: fx.GraphModule, batch_symbol: Any, batch_size: int, max_len: int) -> Dict[str, AttnSlot]:
    """One :class:`AttnSlot` per ``lcsm::causal_attention`` node of ``gm`` (module doc)."""
    out: Dict[str, AttnSlot] = {}
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target != ATTENTION:
            continue
        q, k, v, scale, window, slopes = n.args
        qv, vv = val(q), val(v)
        rows = _rows(size_exprs(q)[0], batch_symbol, batch_size)
        S = min(int(max_len), int(window)) if window else int(max_len)
        group = int(n.meta.get("lcsm_kv_group", 1))
        out[n.name] = AttnSlot(rows, int(qv.shape[-1]), int(vv.shape[-1]), S, float(scale), int(window),
                               tuple(slopes) if slopes else None, qv.dtype, qv.device,
                               group if group > 0 and rows % group == 0 else 1)
    return out


def lower_attention_slot(g: fx.Graph, mode: str, args: Sequence[fx.Node], state: Callable[[str], fx.Node],
                         pos: Optional[fx.Node], slot: AttnSlot) -> fx.Node:
    """Emit the stateful op of one attention slot into ``g`` (module doc); ``state(field)`` gives
    the ``get_attr`` node of the layer's ``kcache`` / ``vcache``."""
    q, k, v = args
    ops = torch.ops.lcsm
    slopes = list(slot.slopes) if slot.slopes else None
    if mode == "step":
        if pos is None:
            raise ValueError("lower_attention_slot: a step program needs its 'pos' placeholder")
        return g.call_function(ops.kv_attend.default, (q, k, v, state("kcache"), state("vcache"), pos, slot.scale,
                                                       slot.window, slopes, slot.group))
    return g.call_function(ops.kv_prefill.default, (q, k, v, state("kcache"), state("vcache"), slot.scale,
                                                    slot.window, slopes, slot.group))
