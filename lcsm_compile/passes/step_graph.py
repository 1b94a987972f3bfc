"""step_graph: the prefill and one-position step programs of a lowered graph.

Contract: both builders are pure functions of ``(gm, folded)`` returning a new
``GraphModule``; ``gm`` is not changed. This pass knows nothing about state: every ``lcsm`` op
becomes a call of a :class:`Slot` (the op's node name and ``"prefill"`` or ``"step"``), which
the runtime binds to its stateful member (:func:`bind_slots`); an unbound slot raises.

``build_prefill_graph``: ``gm`` with every ``long_conv(u, k)`` / ``short_conv(u, w, b)`` ->
``Slot(node, "prefill")(u)``; the filter generators become dead code (the runtime holds the
filters folded at ``max_len``) and are removed. Signature ``(x)``.

``build_step_graph``: the program for ONE position, signature ``(x_t, pos)`` with ``x_t`` of
length 1 and ``pos`` a ``LongTensor [1]`` holding the absolute position:

* frontier values (see ``fold_filters``) become constants: tables with a time dim are read at
  ``pos`` (``index_select`` along their time dim), the rest are used as they are;
* ``long_conv`` / ``short_conv`` -> ``Slot(node, "step")(u)`` (bound to the online engine's
  diagonal for that member / a ring buffer);
* every other node is copied: position-wise ops run at length 1 because every size is read
  from the input (``sym_size``) at run time;
* dead code (filter generators, positional features) is removed.
The model's Python code is never run again: only these graphs are.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict

import torch
import torch.fx as fx

from .common import LONG_CONV, SHORT_CONV
from .fold_filters import Folded

__all__ = ["Slot", "build_prefill_graph", "build_step_graph", "bind_slots", "rename_slots"]


class Slot:
    """A stateful call the runtime binds: ``member(node name).<mode>(u)``."""

    def __init__(self, name: str, mode: str):
        self.name, self.mode = name, mode
        self.__name__ = f"{mode}_{name}"  # how FX prints the call

    def __call__(self, *args: Any) -> Any:
        raise RuntimeError(f"slot {self.mode}({self.name}) is not bound to a runtime member")

    def __repr__(self) -> str:
        return f"Slot({self.name!r}, {self.mode!r})"


def _map_slots(gm: fx.GraphModule, target: Callable[[Slot], Any]) -> fx.GraphModule:
    """A copy of ``gm`` (sharing its constants) whose slot calls call ``target(slot)``."""
    g = copy.deepcopy(gm.graph)
    for n in g.nodes:
        if n.op == "call_function" and isinstance(n.target, Slot):
            n.target = target(n.target)
    out = fx.GraphModule(gm, g)
    out.recompile()
    return out


def rename_slots(gm: fx.GraphModule, names: Dict[str, str]) -> fx.GraphModule:
    """A copy of ``gm`` whose slots name ``names[slot name]`` instead."""
    return _map_slots(gm, lambda s: Slot(names[s.name], s.mode))


def bind_slots(gm: fx.GraphModule, members: Dict[str, Any]) -> fx.GraphModule:
    """A copy of ``gm`` whose slots call ``members[name].<mode>``."""
    return _map_slots(gm, lambda s: getattr(members[s.name], s.mode))


class _Holder(torch.nn.Module):
    """Owns the folded constants of a step graph (as buffers, so ``.to()`` moves them)."""


def build_prefill_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """The prefill program: ``gm`` with the convolutions replaced by prefill slots."""
    g = fx.Graph()
    env: Dict[fx.Node, fx.Node] = {}
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target in (LONG_CONV, SHORT_CONV):
            new = g.call_function(Slot(n.name, "prefill"), (env[n.args[0]],))
            new.meta = dict(n.meta)
            env[n] = new
            continue
        env[n] = g.node_copy(n, lambda a: env[a])
    g.eliminate_dead_code()
    out = fx.GraphModule(gm, g)
    out.recompile()
    return out


def build_step_graph(gm: fx.GraphModule, folded: Folded) -> fx.GraphModule:
    """The one-position step program (see the module docstring); signature ``(x_t, pos)``."""
    holder = _Holder()
    for name, sub in gm.named_children():
        holder.add_module(name, sub)
    g = fx.Graph()
    env: Dict[fx.Node, fx.Node] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    pos = None
    consts = 0

    def const(value: torch.Tensor, hint: str) -> fx.Node:
        nonlocal consts
        attr = f"_lcsm_const{consts}_{hint}"[:60]
        consts += 1
        holder.register_buffer(attr, value.detach(), persistent=False)
        return g.get_attr(attr)

    for n in gm.graph.nodes:
        if n.op == "placeholder":
            env[n] = g.placeholder(n.name)
            env[n].meta = dict(n.meta)
            if n is placeholders[-1]:
                pos = g.placeholder("pos")
            continue
        if n.op == "output":
            g.output(fx.map_arg(n.args[0], lambda a: env[a]))
            continue
        if n.name in folded.tables:
            value, td = folded.tables[n.name]
            env[n] = g.call_function(torch.ops.aten.index_select.default, (const(value, n.name), td, pos))
            continue
        if n.name in folded.constants:
            env[n] = const(folded.constants[n.name], n.name)
            continue
        if n.op == "call_function" and n.target in (LONG_CONV, SHORT_CONV):
            new = g.call_function(Slot(n.name, "step"), (env[n.args[0]],))
            new.meta = dict(n.meta)
            env[n] = new
            continue
        if n.op == "get_attr" and not any(True for _ in n.users):
            continue
        env[n] = g.node_copy(n, lambda a: env[a])
    g.eliminate_dead_code()
    for n in list(g.nodes):  # attributes of the original module used by copied get_attr nodes
        if n.op == "get_attr" and not hasattr(holder, n.target.split(".")[0]):
            obj = gm
            for part in n.target.split("."):
                obj = getattr(obj, part)
            _set_attr(holder, n.target, obj)
    out = fx.GraphModule(holder, g)
    out.recompile()
    return out


def _set_attr(root: torch.nn.Module, target: str, obj) -> None:
    parts = target.split(".")
    mod = root
    for p in parts[:-1]:
        if not hasattr(mod, p):
            mod.add_module(p, torch.nn.Module())
        mod = getattr(mod, p)
    if isinstance(obj, torch.nn.Parameter):
        mod.register_parameter(parts[-1], obj)
    elif isinstance(obj, torch.Tensor):
        mod.register_buffer(parts[-1], obj, persistent=False)
    else:
        setattr(mod, parts[-1], obj)
