"""Small graph utilities shared by the front-end passes (no pass logic lives here).

* :func:`op_name` / :func:`user_source` - how a node is named in reports: the aten op and the
  ``file:line`` of the user's code that produced it (from the node's ``stack_trace``).
* :func:`val` / :func:`size_exprs` - the fake value of a node and its sizes as sympy expressions.
* :class:`ProbeInterpreter` - runs a graph on real tensors, replacing chosen nodes' values
  (probes) and recording chosen nodes' values; the verification pass is built on it.
* :func:`propagate_fake` - re-computes ``meta['val']`` of every node under the capture's fake
  mode (symbolic sizes), after a pass added nodes.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any, Dict, Iterable, List, Optional

import sympy
import torch
import torch.fx as fx

_INTERNAL = (os.sep + "torch" + os.sep, os.sep + "lcsm_compile" + os.sep, "<eval_with_key>",
             os.sep + "contextlib.py", os.sep + "functools.py")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)')


def op_name(node: fx.Node) -> str:
    """``aten._fft_c2r`` style name of a call_function node (its overload dropped)."""
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        ns = t.namespace
        return f"{ns}.{t._schema.name.split('::')[-1]}"
    if isinstance(t, torch._ops.OpOverloadPacket):
        return f"{t._qualified_op_name.replace('::', '.')}"
    return getattr(t, "__name__", str(t))


def user_frames(node: fx.Node) -> List[tuple]:
    """The frames of the node's stack trace that are user code: ``(file, line, func, code)``."""
    st = node.meta.get("stack_trace") or ""
    frames = [(f, int(l), fn, code.strip()) for f, l, fn, code in _FRAME.findall(st)]
    return [fr for fr in frames if not any(s in fr[0] for s in _INTERNAL)]


def user_source(node: fx.Node) -> Optional[str]:
    """``file:line`` of the innermost user frame that produced ``node`` (None if unknown)."""
    fr = user_frames(node)
    if not fr:
        return None
    f, line, _, _ = fr[-1]
    return f"{os.path.relpath(f) if not os.path.relpath(f).startswith('..') else f}:{line}"


def user_code(node: fx.Node) -> Optional[str]:
    """The source text of the innermost user frame (one line)."""
    fr = user_frames(node)
    return fr[-1][3] if fr else None


def val(node: Any) -> Any:
    """The fake value of a node (``meta['val']``), or the argument itself if not a node."""
    if isinstance(node, fx.Node):
        return node.meta.get("val", node.meta.get("example_value"))
    return node


def is_tensor(node: Any) -> bool:
    return isinstance(val(node), torch.Tensor)


def to_expr(s: Any) -> sympy.Expr:
    """A size (int or SymInt) as a sympy expression."""
    if isinstance(s, torch.SymInt):
        return s.node.expr
    return sympy.Integer(int(s))


def size_exprs(node: Any) -> Optional[List[sympy.Expr]]:
    """Sizes of a tensor node as sympy expressions (None if it is no tensor)."""
    v = val(node)
    if not isinstance(v, torch.Tensor):
        return None
    return [to_expr(s) for s in v.shape]


def tensor_args(node: fx.Node) -> List[fx.Node]:
    """The argument nodes of ``node`` that hold tensors, in order, without repeats."""
    out: List[fx.Node] = []
    for a in node.all_input_nodes:
        if a not in out:
            out.append(a)
    return out


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


def propagate_fake(gm: fx.GraphModule, fake_mode, inputs: List[Any]) -> None:
    """Re-compute ``meta['val']`` of every node of ``gm`` under ``fake_mode``.

    ``inputs``: fake values of the placeholders (usually their current ``meta['val']``).
    get_attr tensors are converted to fake tensors of the same mode.
    """
    consts: Dict[int, Any] = {}

    class _Prop(fx.Interpreter):
        def run_node(self, n):
            r = super().run_node(n)
            n.meta["val"] = r
            return r

        def get_attr(self, target, args, kwargs):
            t = super().get_attr(target, args, kwargs)
            if isinstance(t, torch.Tensor):
                if id(t) not in consts:
                    consts[id(t)] = fake_mode.from_tensor(t, static_shapes=True)
                return consts[id(t)]
            return t

    from torch._dispatch.python import enable_python_dispatcher

    with fake_mode, enable_python_dispatcher():
        _Prop(gm).run(*inputs)


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


def replace_all_uses(old: fx.Node, new: fx.Node) -> None:
    """Replace every use of ``old`` by ``new``, except inside ``new`` itself."""
    old.replace_all_uses_with(new, delete_user_cb=lambda u: u is not new)
