"""groups: the mixer dependency DAG and the cross-layer parallel groups.

Contract: ``plan_groups(gm, shapes) -> GroupPlan`` is a pure function; ``record_shapes(gm, x)``
runs ``gm`` once on ``x`` and returns the ``shapes`` it needs. ``shapes`` maps each
``lcsm`` op node name to ``(lead_shape, channels, dtype, device)`` of its input ``u`` (``u`` is
``[*lead, C, L]``; ``lead`` flattens into the engine's batch).

* ``GroupPlan.dag``: a ``networkx.DiGraph`` over the long and short convolutions, with an edge
  ``a -> b`` when ``b``'s input depends on ``a``'s output; ``depth[name]`` is the length of the
  longest chain of mixers before it (its "layer").
* ``GroupPlan.groups``: the long convolutions partitioned by ``(batch, dtype, device)``. A tile
  of step t reads inputs <= t only, which every member has once token t has passed all
  layers: the members' tiles of a step run in ONE batched call (their channels are
  concatenated), and only the diagonal terms run layer by layer. Members keep graph order;
  ``Group.slices[name]`` is the member's channel range in the group.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Tuple

import networkx as nx
import torch
import torch.fx as fx

from .common import LONG_CONV, SHORT_CONV

__all__ = ["Group", "GroupPlan", "plan_groups", "record_shapes"]


@dataclasses.dataclass
class Group:
    """One cross-layer parallel group: long convs sharing batch, dtype and device."""

    batch: int
    dtype: torch.dtype
    device: torch.device
    members: List[str]
    slices: Dict[str, slice]
    depths: Dict[str, int]

    @property
    def channels(self) -> int:
        """Total channels of the group (the engine's C)."""
        return sum(s.stop - s.start for s in self.slices.values())

    def describe(self) -> str:
        """One line for reports."""
        layers = sorted(set(self.depths.values()))
        return (f"{len(self.members)} long convs, {self.channels} channels, batch {self.batch}, "
                f"{str(self.dtype).replace('torch.', '')}, {self.device}, mixer depths {layers}")


@dataclasses.dataclass
class GroupPlan:
    """The mixer DAG, each mixer's depth, and the groups (module doc)."""

    dag: nx.DiGraph
    depth: Dict[str, int]
    groups: List[Group]


def _mixers(gm: fx.GraphModule) -> List[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (LONG_CONV, SHORT_CONV)]


def plan_groups(gm: fx.GraphModule, shapes: Dict[str, Tuple[tuple, int, torch.dtype, torch.device]]) -> GroupPlan:
    """Build the mixer DAG and the groups (module docstring)."""
    mixers = _mixers(gm)
    mixer_set = set(mixers)
    # nearest mixer ancestors of every node, propagated in topological (graph) order
    near: Dict[fx.Node, frozenset] = {}
    dag = nx.DiGraph()
    for n in gm.graph.nodes:
        anc = frozenset()
        for a in n.all_input_nodes:
            anc |= ({a} if a in mixer_set else near.get(a, frozenset()))
        if n in mixer_set:
            kind = "long" if n.target == LONG_CONV else "short"
            dag.add_node(n.name, kind=kind)
            # only the data input matters for the dependency; filters are time-invariant
            data_anc = frozenset()
            u = n.args[0]
            data_anc |= ({u} if u in mixer_set else near.get(u, frozenset()))
            for a in data_anc:
                dag.add_edge(a.name, n.name)
        near[n] = anc
    depth: Dict[str, int] = {}
    for name in nx.topological_sort(dag):
        preds = list(dag.predecessors(name))
        depth[name] = 1 + max((depth[p] for p in preds), default=-1)
    groups: Dict[tuple, Group] = {}
    for n in mixers:
        if n.target != LONG_CONV:
            continue
        lead, C, dtype, device = shapes[n.name]
        batch = math.prod(lead) if lead else 1
        key = (batch, dtype, torch.device(device))
        g = groups.get(key)
        if g is None:
            g = groups[key] = Group(batch, dtype, torch.device(device), [], {}, {})
        start = g.channels
        g.members.append(n.name)
        g.slices[n.name] = slice(start, start + C)
        g.depths[n.name] = depth[n.name]
    return GroupPlan(dag, depth, list(groups.values()))


class _ShapeRecorder(fx.Interpreter):
    """Runs ``gm`` once and records the input shape/dtype/device of every lcsm op."""

    def __init__(self, gm):
        super().__init__(gm)
        self.shapes: Dict[str, tuple] = {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.op == "call_function" and n.target in (LONG_CONV, SHORT_CONV):
            u = self.env[n.args[0]]
            self.shapes[n.name] = (tuple(u.shape[:-2]), u.shape[-2], u.dtype, u.device)
        return out


def record_shapes(gm: fx.GraphModule, x: torch.Tensor) -> Dict[str, Tuple[tuple, int, torch.dtype, torch.device]]:
    """``{lcsm op node name: (lead shape, channels, dtype, device)}`` of each op's input ``u``,
    from one run of ``gm`` on ``x`` (whose batch is the program's)."""
    rec = _ShapeRecorder(gm)
    with torch.no_grad():
        rec.run(x)
    return rec.shapes
