"""The streaming program: a plan instantiated with state (engines, ring buffers).

:func:`instantiate` turns a :class:`~lcsm_compile.pipeline.ProgramPlan` into a
:class:`StreamProgram`: one engine per cross-layer group (the online engine, or a baseline of
:mod:`.baselines` for benchmarks), one member per ``lcsm`` op, and the plan's prefill and step
programs with their slots bound to the members. A step runs the step program (diagonal terms
layer by layer), then one ``advance()`` per group (all tiles of the step in one batched call
per group). State changes of a step that fails half-way are rolled back, so the program stays
usable.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.fx as fx

from ..errors import SessionError
from ..passes.common import SHORT_CONV
from ..passes.step_graph import bind_slots
from .baselines import EagerConv, LazyConv, NullConv
from .engine import OnlineConv
from .members import LongMember, ShortMember

__all__ = ["StreamProgram", "instantiate", "ENGINES"]

#: engines a program can use for its long convolutions (``engine=`` option); each implements
#: :class:`lcsm_compile.runtime.baselines.Engine`
ENGINES = {"online": OnlineConv, "lazy": LazyConv, "eager": EagerConv, "none": NullConv}


@dataclasses.dataclass
class StreamProgram:
    """A model turned into prefill + step programs with their state (see module docstring)."""

    plan: Any
    engines: List[Any]
    longs: Dict[str, LongMember]
    shorts: Dict[str, ShortMember]
    prefill_gm: fx.GraphModule
    step_gm: fx.GraphModule
    engine_kind: str
    step_fn: Callable
    #: ``(hi, prefill program)`` for prompts of length ``<= hi`` (models whose graph branches on L)
    short_prefills: List[Any] = dataclasses.field(default_factory=list)

    @property
    def lowered(self):
        return self.plan.lowered

    @property
    def max_len(self) -> int:
        return self.plan.max_len

    @property
    def batch_size(self) -> int:
        return self.plan.batch_size

    def reset(self) -> None:
        for e in self.engines:
            e.reset()
        for s in self.shorts.values():
            s.reset()

    def prefill(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Run the prefill graph on ``x [B, P, ...]`` (position 0); returns the tensor outputs."""
        P = x.shape[1]
        gm = next((g for hi, g in self.short_prefills if P <= hi), self.prefill_gm)
        if gm is self.prefill_gm and P < self.plan.lowered.valid_range[0] and self.short_prefills:
            return self._prefill_then_steps(x)
        try:
            outs = gm(x)
        except BaseException:
            self.reset()
            raise
        for e in self.engines:
            e.finish_prefill(x.shape[1])
        for s in self.shorts.values():
            s.commit()
        return list(outs)

    def _prefill_then_steps(self, x: torch.Tensor) -> List[torch.Tensor]:
        """A prompt between the lengths the short and the long graph hold for: the longest
        short prefill, then one step per remaining position (exact by construction)."""
        hi = max(h for h, _ in self.short_prefills)
        outs = [self.prefill(x[:, :hi])]
        pos = torch.zeros(1, dtype=torch.long, device=x.device)
        try:
            for t in range(hi, x.shape[1]):
                pos.fill_(t)
                outs.append(self.step(x[:, t:t + 1].contiguous(), pos))
        except BaseException:
            self.reset()
            raise
        return [torch.cat([o[i] for o in outs], 1) for i in range(len(outs[0]))]

    def step(self, x_t: torch.Tensor, pos: torch.Tensor) -> List[torch.Tensor]:
        """Run one position; on any error, the state is rolled back to before the call."""
        try:
            outs = self.step_fn(x_t, pos)
        except BaseException:
            for e in self.engines:
                e.rollback()
            for s in self.shorts.values():
                s.rollback()
            raise
        for e in self.engines:
            e.advance()
        for s in self.shorts.values():
            s.commit()
        return list(outs)

    def state_dict(self) -> dict:
        return {"engines": [e.state_dict() for e in self.engines],
                "shorts": {k: s.buf.clone() for k, s in self.shorts.items()}}

    def load_state_dict(self, state: dict) -> None:
        if len(state["engines"]) != len(self.engines) or set(state["shorts"]) != set(self.shorts):
            raise SessionError("state does not belong to this model (different convolutions)")
        for e, s in zip(self.engines, state["engines"]):
            e.load_state_dict(s)
        for k, s in self.shorts.items():
            s.buf.copy_(state["shorts"][k])
            s._pending = None


def instantiate(plan, engine: str = "online", compile_step: bool = False,
                engine_options: Optional[dict] = None, kernels: str = "auto") -> StreamProgram:
    """State for ``plan`` and its programs bound to it (module doc).

    ``kernels`` ("auto" | "torch") picks the online engine's per-step kernels: the native CPU
    kernels of :mod:`lcsm_compile.codegen` where they build, or their torch twins.
    """
    if engine not in ENGINES:
        raise SessionError(f"engine={engine!r} is not one of {sorted(ENGINES)}")
    cls = ENGINES[engine]
    gm, folded, shapes = plan.lowered.gm, plan.folded, plan.shapes
    engines, longs, shorts = [], {}, {}
    for group in plan.groups.groups:
        ks = [folded.filters[m] for m in group.members]
        k = torch.cat([kk.reshape(-1, kk.shape[-1]) for kk in ks], 0)
        extra = {"kernels": kernels} if cls is OnlineConv else {}
        eng = cls(k, max_len=plan.max_len, batch_size=group.batch, dtype=group.dtype, **extra,
                  **(engine_options or {}))
        engines.append(eng)
        for m in group.members:
            lead, C, dtype, device = shapes[m]
            longs[m] = LongMember(m, eng, group.slices[m], lead, C)
    by_name = {n.name: n for n in gm.graph.nodes}
    for name, (lead, C, dtype, device) in shapes.items():
        n = by_name[name]
        if n.target != SHORT_CONV:
            continue
        w = folded.constants.get(n.args[1].name) if isinstance(n.args[1], fx.Node) else None
        b_arg = n.args[2] if len(n.args) > 2 else None
        b = folded.constants.get(b_arg.name) if isinstance(b_arg, fx.Node) else None
        if w is None:
            w = _eval_attr(gm, n.args[1])
        if isinstance(b_arg, fx.Node) and b is None:
            b = _eval_attr(gm, b_arg)
        shorts[name] = ShortMember(name, w, b, lead, C, dtype, device)
    members = {**longs, **shorts}
    prefill_gm = bind_slots(plan.prefill_gm, members)
    step_gm = bind_slots(plan.step_gm, members)
    step_fn = _compile(step_gm) if compile_step else step_gm
    short = [(hi, bind_slots(g, members)) for hi, g in sorted(plan.short_prefills)]
    return StreamProgram(plan, engines, longs, shorts, prefill_gm, step_gm, engine, step_fn, short)


def _eval_attr(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    if node.op != "get_attr":
        raise SessionError(f"short-conv weight {node.name} is not a constant")
    obj = gm
    for p in node.target.split("."):
        obj = getattr(obj, p)
    return obj


def _compile(step_gm: fx.GraphModule) -> Callable:
    """Compile the step program with Inductor (CPU C++/OpenMP kernels for the position-wise
    work). The stateful members stay opaque Python calls (``torch._dynamo.disable``): the graph
    is compiled as the segments between them."""
    import torch._dynamo

    for n in step_gm.graph.nodes:
        if n.op == "call_function" and isinstance(getattr(n.target, "__self__", None), (LongMember, ShortMember)):
            n.target = torch._dynamo.disable(n.target)
    step_gm.recompile()
    return torch.compile(step_gm, backend="inductor", dynamic=False, options={"cpp.threads": 1})
