"""Small FX helpers shared by the streaming passes (fold_filters, step_graph, groups)."""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.fx as fx

from .. import ops as _ops  # noqa: F401  (registers torch.ops.lcsm)

LONG_CONV = torch.ops.lcsm.long_conv.default
SHORT_CONV = torch.ops.lcsm.short_conv.default


def is_tensor_node(n: fx.Node) -> bool:
    """The node's value (``meta['val']``) is a tensor (not a SymInt, not a tuple)."""
    v = n.meta.get("val", n.meta.get("example_value"))
    return isinstance(v, torch.Tensor)


def subgraph_module(gm: fx.GraphModule, outputs: Sequence[fx.Node]) -> fx.GraphModule:
    """A GraphModule with ``gm``'s placeholders returning ``outputs`` (dead code removed)."""
    g = fx.Graph()
    env = {}
    for n in gm.graph.nodes:
        if n.op == "output":
            break
        env[n] = g.node_copy(n, lambda a: env[a])
    g.output(tuple(env[o] for o in outputs))
    g.eliminate_dead_code()
    # placeholders are kept even when unused (eliminate_dead_code leaves them)
    return fx.GraphModule(gm, g)


def nodes_of(gm: fx.GraphModule, target) -> List[fx.Node]:
    """The call_function nodes of ``gm`` with this target, in graph order."""
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target == target]

