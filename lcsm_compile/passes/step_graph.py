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

import contextlib
import copy
import dataclasses
from typing import Any, Callable, Dict, Optional

import torch
import torch.fx as fx

from .common import LONG_CONV, SHORT_CONV
from .fold_filters import Folded
from .kv_slots import lower_attention_slot
from .match_attention import ATTENTION

__all__ = ["lift_attributes", "split_tile_work", "AttrRef", "HOST_POSITION_OPS", "Slot", "build_prefill_graph", "build_step_graph", "bind_slots", "rename_slots", "LongSlot",
           "ShortSlot", "lower_slots", "state_attr", "GROUP_STATE", "SHORT_STATE"]


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
        if n.op == "call_function" and n.target in (LONG_CONV, SHORT_CONV, ATTENTION):
            new = g.call_function(Slot(n.name, "prefill"), _slot_args(n, env))
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
        if n.op == "call_function" and n.target in (LONG_CONV, SHORT_CONV, ATTENTION):
            new = g.call_function(Slot(n.name, "step"), _slot_args(n, env))
            new.meta = dict(n.meta)
            env[n] = new
            continue
        if n.op == "get_attr" and not any(True for _ in n.users):
            continue
        env[n] = g.node_copy(n, lambda a: env[a])
    g.eliminate_dead_code()
    used = {n.target for n in g.nodes if n.op == "get_attr"}
    for name in [b for b, _ in holder.named_buffers(recurse=False) if b.startswith("_lcsm_const") and b not in used]:
        delattr(holder, name)  # a folded value no step reads (a filter whose convolution became a slot)
    for n in list(g.nodes):  # attributes of the original module used by copied get_attr nodes
        if n.op == "get_attr" and not hasattr(holder, n.target.split(".")[0]):
            obj = gm
            for part in n.target.split("."):
                obj = getattr(obj, part)
            _set_attr(holder, n.target, obj)
    out = fx.GraphModule(holder, g)
    out.recompile()
    return out


def _slot_args(n: fx.Node, env: Dict[fx.Node, fx.Node]) -> tuple:
    """The data arguments of a slot: ``u`` of a convolution, ``(q, k, v)`` of an attention."""
    return tuple(env[a] for a in n.args[:3]) if n.target == ATTENTION else (env[n.args[0]],)


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


# ---------------------------------------------------------------------------------------------
# Slots -> stateful lcsm ops (the programs of the online engine)

@dataclasses.dataclass(frozen=True)
class LongSlot:
    """Where one long convolution's slot goes: channels ``c0 .. c0 + n`` of group ``group``,
    its input reshaped to ``[batch, n]`` (step) / ``[batch, n, P]`` (prefill)."""
    group: int
    c0: int
    n: int
    batch: int


@dataclasses.dataclass(frozen=True)
class ShortSlot:
    """One short convolution's ring buffer: input reshaped to ``[batch, n]`` / ``[batch, n, P]``."""
    batch: int
    n: int
    has_bias: bool


#: the attributes a program module holding the state must have, per group ``g`` / short conv
GROUP_STATE = ("hist", "acc", "blk_hist", "blk_acc", "meta", "k", "kb")
SHORT_STATE = ("buf", "w", "bias")


def state_attr(owner: str, field: str) -> str:
    """The attribute name of a state tensor: ``owner`` is ``g<i>`` (a group) or a short conv's
    node name."""
    return f"{owner}_{field}"


def lower_slots(gm: fx.GraphModule, mode: str, longs: Dict[str, LongSlot], shorts: Dict[str, ShortSlot],
                configs: "list[list[int]]", attns: Optional[Dict[str, Any]] = None) -> fx.Graph:
    """The graph of a program whose slots run as stateful ``lcsm`` ops (pure: ``gm`` unchanged).

    ``mode`` is ``"step"`` (``gm`` from :func:`build_step_graph`, signature ``(x_t, pos)``) or
    ``"prefill"`` (:func:`build_prefill_graph`, ``(x)``). A long slot becomes
    ``lcsm::online_diag`` / ``online_prefill`` on its group's state, a short slot
    ``lcsm::ring_step`` / ``ring_prefill`` on its ring buffer; state tensors are ``get_attr``
    nodes named by :func:`state_attr` (the runtime's module owns them). After the last
    computation, just before the output (so that an error anywhere in the model leaves every
    position unmoved), one ``online_advance`` / ``online_finish_prefill`` per group (``configs[g]``
    its schedule). An attention slot named in ``attns`` (:class:`~.kv_slots.AttnSlot`) becomes
    ``lcsm::kv_attend`` / ``kv_prefill`` on its KV cache (:mod:`.kv_slots`). Slots not named in
    ``longs``/``shorts``/``attns`` are kept (bound by the runtime).
    """
    ops = torch.ops.lcsm
    g = fx.Graph()
    env: Dict[fx.Node, fx.Node] = {}
    attrs: Dict[str, fx.Node] = {}
    pos = None
    group_len: Dict[int, fx.Node] = {}

    def attr(name: str) -> fx.Node:
        if name not in attrs:
            with g.inserting_before(first_compute[0]) if first_compute else contextlib.nullcontext():
                attrs[name] = g.get_attr(name)
        return attrs[name]

    first_compute: list = []
    out_node = None
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            env[n] = g.node_copy(n)
            if n.name == "pos":
                pos = env[n]
            continue
        if n.op == "output":
            out_node = n
            continue
        if n.op == "call_function" and isinstance(n.target, Slot) and attns and n.target.name in attns:
            name = n.target.name
            env[n] = lower_attention_slot(g, mode, [env[a] for a in n.args], lambda f, nm=name: attr(state_attr(nm, f)),
                                          pos, attns[name])
            env[n].meta = dict(n.meta)
            continue
        if n.op == "call_function" and isinstance(n.target, Slot) and (n.target.name in longs or
                                                                        n.target.name in shorts):
            u = env[n.args[0]]
            name = n.target.name
            if name in longs:
                s = longs[name]
                gn = f"g{s.group}"
                if mode == "step":
                    u2 = g.call_method("reshape", (u, s.batch, s.n))
                    y = g.call_function(ops.online_diag.default, (u2, attr(state_attr(gn, "blk_hist")),
                                        attr(state_attr(gn, "blk_acc")), attr(state_attr(gn, "kb")),
                                        attr(state_attr(gn, "meta")), s.c0))
                else:
                    u2 = g.call_method("reshape", (u, s.batch, s.n, -1))
                    y = g.call_function(ops.online_prefill.default, (u2, attr(state_attr(gn, "hist")),
                                        attr(state_attr(gn, "acc")), attr(state_attr(gn, "meta")),
                                        attr(state_attr(gn, "k")), s.c0))
                    group_len.setdefault(s.group, g.call_function(torch.ops.aten.sym_size.int, (u2, 2)))
            else:
                s = shorts[name]
                bias = attr(state_attr(name, "bias")) if s.has_bias else None
                if mode == "step":
                    u2 = g.call_method("reshape", (u, s.batch, s.n))
                    y = g.call_function(ops.ring_step.default, (u2, attr(state_attr(name, "buf")),
                                        attr(state_attr(name, "w")), bias, pos))
                else:
                    u2 = g.call_method("reshape", (u, s.batch, s.n, -1))
                    y = g.call_function(ops.ring_prefill.default, (u2, attr(state_attr(name, "buf")),
                                        attr(state_attr(name, "w")), bias))
            if not first_compute:
                first_compute.append(u2)
            env[n] = g.call_method("reshape_as", (y, u))
            env[n].meta = dict(n.meta)
            continue
        env[n] = g.node_copy(n, lambda a: env[a])
    if mode == "step" and pos is None and longs:
        raise ValueError("lower_slots: a step program needs its 'pos' placeholder")
    for gi, cfg in enumerate(configs):
        gn = f"g{gi}"
        state = [attr(state_attr(gn, f)) for f in ("hist", "acc", "blk_hist", "blk_acc", "meta")]
        if mode == "step":
            g.call_function(ops.online_advance.default, (*state, attr(state_attr(gn, "k")), list(cfg)))
        elif gi in group_len:
            g.call_function(ops.online_finish_prefill.default, (*state, attr(state_attr(gn, "k")), list(cfg),
                                                                group_len[gi]))
    g.output(fx.map_arg(out_node.args[0], lambda a: env[a]))
    return g


def lift_attributes(gm: fx.GraphModule) -> tuple:
    """A copy of ``gm`` whose ``get_attr`` tensors (weights, folded constants, state) are inputs
    after its own inputs; returns ``(graph module, attribute names in input order)``.

    Pure. What compilers and exporters that must not treat the state as constants take: the
    compiled step (:class:`lcsm_compile.runtime.program.CompiledStep`, Inductor without dynamo's
    guards) and :func:`lcsm_compile.export` (``torch.export``)."""
    g = copy.deepcopy(gm.graph)
    last = [n for n in g.nodes if n.op == "placeholder"][-1]
    names = []
    seen: Dict[str, fx.Node] = {}
    for n in list(g.nodes):
        if n.op != "get_attr":
            continue
        if n.target not in seen:
            with g.inserting_after(last):
                p = g.placeholder("in_" + n.target.replace(".", "_"))
            p.meta = dict(n.meta)
            last = seen[n.target] = p
            names.append(n.target)
        n.replace_all_uses_with(seen[n.target])
        g.erase_node(n)
    out = fx.GraphModule(torch.nn.Module(), g)
    out.recompile()
    return out, names


@dataclasses.dataclass(frozen=True)
class AttrRef:
    """An argument of a call :func:`split_tile_work` took out: the program's attribute ``name``."""

    name: str


#: lcsm ops whose step reads the absolute position on the host (their work changes with it in a
#: way a kernel argument fixed at capture cannot follow): a step holding one is not captured as
#: a CUDA graph (runtime/cuda_graphs.py); ``online_diag`` reads only the row in its block
#: (the graph key) and ``ring_step``'s Triton kernel reads the position on the device
HOST_POSITION_OPS = {
    "kv_attend": "attends over a KV cache whose length grows with the position (shapes change per step)",
    "modal_step": "reads the position on the host",
    "online_advance": "runs the position's tile work from the host schedule",
}


def split_tile_work(gm: fx.GraphModule) -> tuple:
    """The step program without its ``lcsm::online_advance`` calls, and those calls.

    Pure (``gm`` unchanged). Returns ``(body, calls, blockers)``: ``body`` a new GraphModule
    with the same signature and outputs and every other node; ``calls`` a list of
    ``(op, args)`` in graph order, each argument a constant or an :class:`AttrRef` (the
    advances take only state, filters and their schedule); ``blockers`` the ``(node name,
    why)`` of ``body``'s ops in :data:`HOST_POSITION_OPS` (empty: every kernel of ``body``
    takes the same arguments at every position with the same red-cell row).

    Exact to run as ``body(x_t, pos)`` then the calls in order: an advance reads and writes
    only its group's state, which ``body`` reads (the red cells) before any advance in the
    original program too, since :func:`lower_slots` puts the advances after the last
    computation. What the CUDA-graph step (``runtime/cuda_graphs.py``) captures is ``body``."""
    g = copy.deepcopy(gm.graph)
    adv = torch.ops.lcsm.online_advance.default
    calls = []
    for n in list(g.nodes):
        if n.op == "call_function" and n.target is adv:
            if n.users:
                raise ValueError(f"split_tile_work: {n.name} has users")
            args = []
            for a in n.args:
                if isinstance(a, fx.Node):
                    if a.op != "get_attr":
                        raise ValueError(f"split_tile_work: {n.name} takes {a.name}, not an attribute")
                    args.append(AttrRef(a.target))
                else:
                    args.append(a)
            calls.append((n.target, tuple(args)))
            g.erase_node(n)
    for n in list(g.nodes):  # the attributes only the advances read
        if n.op == "get_attr" and not n.users:
            g.erase_node(n)
    blockers = []
    for n in g.nodes:
        if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload) \
                and n.target.namespace == "lcsm" and n.target._opname in HOST_POSITION_OPS:
            blockers.append((n.name, f"lcsm::{n.target._opname} {HOST_POSITION_OPS[n.target._opname]}"))
    body = fx.GraphModule(gm, g, class_name=type(gm).__name__ + "Body")
    return body, calls, blockers
