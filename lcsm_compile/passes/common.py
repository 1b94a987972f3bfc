"""FX helpers shared by the passes (no pass logic lives here).

* sizes and names (re-exported from :mod:`lcsm_compile.capture`): :func:`val`,
  :func:`size_exprs`, :func:`to_expr`, :func:`op_name`, :func:`user_source`, :func:`user_code`;
* :data:`LONG_CONV` / :data:`SHORT_CONV`: the ``lcsm`` ops the rewrite emits;
* :func:`topo_between`, :func:`subgraph_module`, :func:`nodes_of`, :func:`is_tensor_node`;
* :class:`ProbeInterpreter`: runs a graph on real tensors, replacing chosen nodes' values
  (probes) and recording chosen nodes' values; the verification pass is built on it;
* :func:`propagate_fake_nodes`: ``meta['val']`` of nodes a pass inserted;
* :func:`probe_threads`: tiny probe graphs run single-threaded, the thread count restored.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
import torch.fx as fx

from .. import ops as _ops  # noqa: F401 - registers torch.ops.lcsm
from ..capture.source import op_name, user_code, user_source
from ..capture.symbolic import size_exprs, to_expr, val

__all__ = ["LONG_CONV", "SHORT_CONV", "ProbeInterpreter", "is_tensor_node", "nodes_of", "op_name",
           "probe_threads", "propagate_fake_nodes", "size_exprs", "subgraph_module", "to_expr",
           "topo_between", "user_code", "user_source", "val"]

LONG_CONV = torch.ops.lcsm.long_conv.default
SHORT_CONV = torch.ops.lcsm.short_conv.default


def is_tensor_node(n: fx.Node) -> bool:
    """The node's value (``meta['val']``) is a tensor (not a SymInt, not a tuple)."""
    return isinstance(val(n), torch.Tensor)


def nodes_of(gm: fx.GraphModule, target) -> List[fx.Node]:
    """The call_function nodes of ``gm`` with this target, in graph order."""
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target == target]


def subgraph_module(gm: fx.GraphModule, outputs: Sequence[fx.Node]) -> fx.GraphModule:
    """A GraphModule with ``gm``'s placeholders returning ``outputs`` (dead code removed;
    placeholders are kept even when unused)."""
    g = fx.Graph()
    env = {}
    for n in gm.graph.nodes:
        if n.op == "output":
            break
        env[n] = g.node_copy(n, lambda a: env[a])
    g.output(tuple(env[o] for o in outputs))
    g.eliminate_dead_code()
    return fx.GraphModule(gm, g)


def topo_between(sources: Iterable[fx.Node], sink: fx.Node, allowed) -> List[fx.Node]:
    """Nodes on some path ``source -> ... -> sink`` (sources excluded), in graph order.

    ``allowed(node)`` limits the walk backwards from ``sink``.
    """
    sources = set(sources)
    back = set()
    stack = [sink]
    while stack:
        n = stack.pop()
        if n in back or n in sources or not allowed(n):
            continue
        back.add(n)
        stack.extend(n.all_input_nodes)
    fwd = set(sources)
    for n in sink.graph.nodes:  # graph order is topological
        if n in back and any(a in fwd for a in n.all_input_nodes):
            fwd.add(n)
    return [n for n in sink.graph.nodes if n in back and n in fwd]


class ProbeInterpreter(fx.Interpreter):
    """Run a graph on real tensors, with some node values replaced and some recorded.

    ``overrides``: ``{node: value_or_callable(original_value) -> value}``; ``record``: the nodes
    whose values to keep: ``self.recorded`` (after replacement) and ``self.recorded_pre``
    (as computed, before replacement: the value of a node that is both one region's output
    and another region's input).
    """

    def __init__(self, gm: fx.GraphModule, overrides: Optional[Dict[fx.Node, Any]] = None,
                 record: Iterable[fx.Node] = ()):
        super().__init__(gm, garbage_collect_values=True)
        self.overrides = overrides or {}
        self.to_record = set(record)
        self.recorded: Dict[fx.Node, Any] = {}
        self.recorded_pre: Dict[fx.Node, Any] = {}
        # keep recorded values alive
        for n in self.to_record:
            self.user_to_last_uses.setdefault(n, [])

    def run_node(self, n: fx.Node) -> Any:
        v = super().run_node(n)
        if n in self.to_record:
            self.recorded_pre[n] = v
        if n in self.overrides:
            o = self.overrides[n]
            v = o(v) if callable(o) else o
        if n in self.to_record:
            self.recorded[n] = v
        return v


def propagate_fake_nodes(fake_mode, nodes: Iterable[fx.Node]) -> None:
    """Compute ``meta['val']`` of ``nodes`` only (call_function nodes, in graph order), from the
    ``meta['val']`` of their inputs: the cheap version of :func:`propagate_fake` after a pass
    inserted a few nodes."""
    from torch._dispatch.python import enable_python_dispatcher

    with fake_mode, enable_python_dispatcher():
        for n in nodes:
            args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: a.meta["val"])
            n.meta["val"] = n.target(*args, **kwargs)


@contextlib.contextmanager
def probe_threads(n: int = 1):
    """Run tiny probe graphs with ``n`` intra-op threads (restored after): on a shared CPU two
    OpenMP threads on tiny tensors can be ~50x slower than one."""
    old = torch.get_num_threads()
    if old != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)
