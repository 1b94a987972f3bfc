"""fold_filters: evaluate the time-invariant parts of a lowered graph once, at ``max_len``.

Contract: ``fold_filters(gm, analysis, make_input, max_len, check_lengths) -> Folded`` is a
pure function (``gm`` is not changed). The *frontier* is every tensor node that is computed
without the data input (class TIME_INVARIANT or TIME_SOURCE) and is used by a node that
depends on it (a position-wise op, a convolution, the output). Each frontier value is computed
once from an input of length ``max_len``:

* the filter ``k`` of every ``lcsm::long_conv`` -> ``Folded.filters[node] [C, max_len]``;
* TIME_SOURCE values with a time dim (``arange(L)``, ``pos_table[:L]``, features over
  positions) -> ``Folded.tables[node]`` (the step program reads one position of them);
* everything else (transposed weights, short-conv kernels, constants) ->
  ``Folded.constants[node]``.

Prefix consistency is checked, not assumed: the same values are computed at every length in
``check_lengths``; a value with a time dim must equal the ``max_len`` value cut to that length,
and a value without one must not change. Anything else (a filter normalized by the total
length, ``linspace(0, 1, L)`` positions, ...) is a refusal in ``Folded.refusals`` naming the
op, its source line and the reason (nothing raises).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.fx as fx

from ..report import Refusal
from .common import LONG_CONV, is_tensor_node, op_name, subgraph_module, user_code, user_source
from .lean_eval import LeanInterpreter

__all__ = ["Folded", "fold_filters", "frontier", "folded_frontier"]

_FOLDABLE = ("TIME_INVARIANT", "TIME_SOURCE")


@dataclasses.dataclass
class Folded:
    """Values of the frontier nodes at ``max_len`` (keys: node names)."""

    max_len: int
    filters: Dict[str, torch.Tensor]      # long_conv node name -> k [C, max_len]
    tables: Dict[str, tuple]              # frontier node name -> (value at max_len, time dim)
    constants: Dict[str, torch.Tensor]    # frontier node name -> value (no time dim)
    checked_lengths: List[int]
    refusals: List[Refusal] = dataclasses.field(default_factory=list)


def _cls(analysis, n: fx.Node) -> str:
    info = analysis.info.get(n.name)
    return getattr(info.cls, "value", str(info.cls)) if info is not None else "POINTWISE"


def frontier(gm: fx.GraphModule, analysis) -> List[fx.Node]:
    """Tensor nodes computed without the data input and used by a node that depends on it."""
    out = []
    for n in gm.graph.nodes:
        if n.op not in ("call_function", "get_attr") or not is_tensor_node(n):
            continue
        if _cls(analysis, n) not in _FOLDABLE:
            continue
        if any(u.op == "output" or _cls(analysis, u) not in _FOLDABLE for u in n.users):
            out.append(n)
    return out


def folded_frontier(gm: fx.GraphModule, analysis, skip: Sequence[str] = ()) -> List[fx.Node]:
    """:func:`frontier` without the values used only as the filter of a long convolution in
    ``skip`` (the modal ones, :mod:`.modal`: they are never folded)."""
    front = frontier(gm, analysis)
    if not skip:
        return front
    skip = set(skip)
    return [n for n in front if not all(u.op == "call_function" and u.target == LONG_CONV and u.name in skip
                                        and u.args[1] is n and n is not u.args[0]
                                        for u in n.users if _cls(analysis, u) not in _FOLDABLE)]


def _time_dim(n, analysis, k_nodes, v_full, v_probe, max_len) -> Optional[int]:
    """The time dim of a frontier value: the filter's last dim; else the analysis' answer;
    else the one dim whose size follows the length (``max_len`` at max_len, less below)."""
    if n in k_nodes:
        return v_full.dim() - 1
    td = getattr(analysis.info.get(n.name), "time_dim", None)
    if td is not None or not isinstance(v_full, torch.Tensor) or v_full.shape == v_probe.shape:
        return td
    diff = [d for d in range(v_full.dim()) if v_full.shape[d] != v_probe.shape[d]]
    if len(diff) == 1 and v_full.shape[diff[0]] == max_len:
        return diff[0]
    return None


def fold_filters(gm: fx.GraphModule, analysis, make_input: Callable[[int], torch.Tensor],
                 max_len: int, check_lengths: Sequence[int] = (2, 3, 7), skip: Sequence[str] = ()) -> Folded:
    """Evaluate the frontier at ``max_len`` and check prefix consistency (module docstring).
    ``skip``: long convolutions whose filters are not folded (modal ones: a value used only as
    their filter is left out, see :mod:`.modal`)."""
    front = folded_frontier(gm, analysis, skip)
    k_nodes = {n.args[1]: n for n in gm.graph.nodes if n.op == "call_function" and n.target == LONG_CONV}
    sub = subgraph_module(gm, front)
    with torch.no_grad():
        full = LeanInterpreter(sub).run(make_input(max_len))  # the same values in less memory
    lengths = sorted({int(x) for x in check_lengths if 1 <= int(x) < max_len})
    filters, tables, constants = {}, {}, {}
    tdims = {}
    probe = sub(make_input(lengths[0])) if lengths else full
    for i, n in enumerate(front):
        tdims[n] = _time_dim(n, analysis, k_nodes, full[i], probe[i], max_len)
    for i, n in enumerate(front):
        v = full[i]
        td = tdims[n]
        if n in k_nodes:
            filters[k_nodes[n].name] = v
        if td is not None:
            tables[n.name] = (v, td)
        else:
            constants[n.name] = v
    refusals: List[Refusal] = []
    for L in lengths:
        with torch.no_grad():
            part = sub(make_input(L))
        for i, n in enumerate(front):
            v_full, v_L = full[i], part[i]
            td = tdims[n]
            want = v_full if td is None else v_full.narrow(td, 0, v_L.shape[td]) if v_L.dim() > td else v_full
            ok = want.shape == v_L.shape
            if ok and v_L.is_floating_point() or (ok and v_L.is_complex()):
                scale = want.abs().max().clamp_min(1e-30)
                ok = bool(((want - v_L).abs().max() <= 1e-4 * scale).item()) if v_L.numel() else True
            elif ok:
                ok = torch.equal(want, v_L)
            if not ok and not any(r.node == n.name for r in refusals):
                what = "the filter" if n in k_nodes else "this value"
                at = k_nodes.get(n, n)  # a filter is reported at its convolution's line
                refusals.append(Refusal(
                    op_name(at) if at.op == "call_function" else str(at.target), user_source(at),
                    f"not prefix consistent: {what} computed for length {L} differs from the one "
                    f"computed for max_len={max_len} cut to {L} (it depends on the total length, "
                    f"e.g. positions from linspace(0, 1, L) or a normalization by L)",
                    n.name, user_code(at)))
    return Folded(max_len, filters, tables, constants, lengths, refusals)
