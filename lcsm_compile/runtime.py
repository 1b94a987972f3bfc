"""Runtime: the stateful members a streaming program calls, and the program builder.

:func:`build_program` turns a lowered model (``pipeline.lower``) into a :class:`StreamProgram`:

    fold_filters -> shapes -> groups -> members (engines, ring buffers) -> prefill/step graphs

* :class:`LongMember`: one ``lcsm::long_conv`` of the model, a channel slice of its group's
  engine (:class:`lcsm_compile.OnlineConv`, or a baseline engine for benchmarks).
* :class:`ShortMember`: one ``lcsm::short_conv``, a ring buffer of its last ``K - 1`` inputs.

A step runs the step graph (diagonal terms layer by layer), then one ``advance()`` per group
(all tiles of the step in one batched call per group). State changes of a step that fails
half-way are rolled back, so the program stays usable.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.fx as fx

from .engine import OnlineConv
from .errors import SessionError
from .passes.fold_filters import Folded, fold_filters
from .passes.graph_utils import LONG_CONV, SHORT_CONV
from .passes.groups import GroupPlan, plan_groups
from .passes.step_graph import build_prefill_graph, build_step_graph
from .reference import EagerConv, LazyConv

__all__ = ["StreamProgram", "build_program", "group_plan", "LongMember", "ShortMember", "ENGINES"]


class _NullConv:
    """A long convolution that costs nothing: ``y = k[0] * u`` (benchmark floor, not exact)."""

    def __init__(self, k, max_len, batch_size=1, dtype=None, **_):
        self.k0 = k[:, 0].to(dtype or k.dtype)
        self.position = 0
        self.max_len = max_len

    def prefill_member(self, u, channels=slice(None)):
        return u * self.k0[channels, None]

    def finish_prefill(self, P):
        self.position = P

    def diag(self, u, channels=slice(None)):
        return u * self.k0[channels]

    def advance(self):
        self.position += 1

    def reset(self):
        self.position = 0

    def rollback(self):
        pass

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, s):
        self.position = s["position"]


#: engines a program can use for its long convolutions (``engine=`` option)
ENGINES = {"online": OnlineConv, "lazy": LazyConv, "eager": EagerConv, "none": _NullConv}


class LongMember:
    """One long convolution: ``u [*lead, C, L]`` through channels ``sl`` of a group engine."""

    def __init__(self, name: str, engine, sl: slice, lead: tuple, C: int):
        self.name, self.engine, self.sl, self.lead, self.C = name, engine, sl, lead, C
        self.batch = math.prod(lead) if lead else 1

    def prefill(self, u: torch.Tensor) -> torch.Tensor:
        P = u.shape[-1]
        y = self.engine.prefill_member(u.reshape(self.batch, self.C, P), self.sl)
        return y.reshape(u.shape)

    def step(self, u: torch.Tensor) -> torch.Tensor:
        y = self.engine.diag(u.reshape(self.batch, self.C), self.sl)
        return y.reshape(u.shape)


class ShortMember:
    """One short causal depthwise convolution as a ring buffer of its last ``K - 1`` inputs."""

    def __init__(self, name: str, w: torch.Tensor, bias: Optional[torch.Tensor], lead: tuple, C: int,
                 dtype: torch.dtype, device: torch.device):
        self.name, self.lead, self.C = name, lead, C
        self.batch = math.prod(lead) if lead else 1
        self.w = w.to(device=device, dtype=dtype)          # [C, K]
        self.bias = None if bias is None else bias.to(device=device, dtype=dtype)
        self.K = self.w.shape[-1]
        self.buf = torch.zeros(self.batch, C, self.K - 1, dtype=dtype, device=device)
        self._pending: Optional[torch.Tensor] = None

    def prefill(self, u: torch.Tensor) -> torch.Tensor:
        from .ops import short_conv

        u3 = u.reshape(self.batch, self.C, u.shape[-1])
        y = short_conv(u3, self.w, self.bias)
        tail = torch.cat([self.buf, u3], -1)[..., -(self.K - 1):] if self.K > 1 else self.buf
        self._pending = tail
        return y.reshape(u.shape)

    def step(self, u: torch.Tensor) -> torch.Tensor:
        u3 = u.reshape(self.batch, self.C, 1)
        window = torch.cat([self.buf, u3], -1)                      # [B, C, K]
        y = (window * self.w).sum(-1, keepdim=True)
        if self.bias is not None:
            y = y + self.bias[:, None]
        self._pending = window[..., 1:]
        return y.reshape(u.shape)

    def commit(self) -> None:
        if self._pending is not None:
            self.buf.copy_(self._pending)
            self._pending = None

    def rollback(self) -> None:
        self._pending = None

    def reset(self) -> None:
        self.buf.zero_()
        self._pending = None


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


@dataclasses.dataclass
class StreamProgram:
    """A model turned into prefill + step programs with their state (see module docstring)."""

    lowered: Any
    folded: Folded
    plan: GroupPlan
    engines: List[Any]
    longs: Dict[str, LongMember]
    shorts: Dict[str, ShortMember]
    prefill_gm: fx.GraphModule
    step_gm: fx.GraphModule
    max_len: int
    batch_size: int
    engine_kind: str
    step_fn: Callable = None

    def reset(self) -> None:
        for e in self.engines:
            e.reset()
        for s in self.shorts.values():
            s.reset()

    def prefill(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Run the prefill graph on ``x [B, P, ...]`` (position 0); returns the tensor outputs."""
        try:
            outs = self.prefill_gm(x)
        except BaseException:
            self.reset()
            raise
        for e in self.engines:
            e.finish_prefill(x.shape[1])
        for s in self.shorts.values():
            s.commit()
        return list(outs)

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


def _make_input(example: torch.Tensor, B: int, L: int) -> torch.Tensor:
    shape = list(example.shape)
    shape[0], shape[1] = B, L
    return torch.zeros(shape, dtype=example.dtype, device=example.device)


def _record_shapes(lowered, batch_size: int) -> Dict[str, tuple]:
    """Input shape/dtype/device of every lcsm op, from one run at length 2."""
    rec = _ShapeRecorder(lowered.gm)
    with torch.no_grad():
        rec.run(_make_input(lowered.example, batch_size, 2))
    return rec.shapes


def group_plan(lowered, batch_size: int = 1) -> GroupPlan:
    """The mixer DAG and cross-layer groups of a streamable lowered model (for ``explain``)."""
    return plan_groups(lowered.gm, _record_shapes(lowered, batch_size))


def build_program(lowered, max_len: int, batch_size: int, engine: str = "online",
                  compile_step: bool = False, engine_options: Optional[dict] = None,
                  kernels: str = "auto") -> StreamProgram:
    """Build the streaming program of a streamable lowered model (module docstring).

    ``kernels`` ("auto" | "torch") picks the online engine's per-step kernels: the native CPU
    kernels of :mod:`lcsm_compile.codegen.red_cells` where they build, or torch ops.
    """
    gm = lowered.gm
    example = lowered.example
    folded = fold_filters(gm, lowered.analysis, lambda L: _make_input(example, 1, L), max_len,
                          check_lengths=sorted({2, 3, 7, max(2, max_len // 3)}))
    shapes = _record_shapes(lowered, batch_size)
    plan = plan_groups(gm, shapes)
    cls = ENGINES[engine]
    engines, longs, shorts = [], {}, {}
    for group in plan.groups:
        ks = [folded.filters[m] for m in group.members]
        k = torch.cat([kk.reshape(-1, kk.shape[-1]) for kk in ks], 0)
        extra = {"kernels": kernels} if cls is OnlineConv else {}
        eng = cls(k, max_len=max_len, batch_size=group.batch, dtype=group.dtype, **extra, **(engine_options or {}))
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
    bindings = {**longs, **shorts}
    prefill_gm = build_prefill_graph(gm, bindings)
    step_gm = build_step_graph(gm, folded, bindings)
    prog = StreamProgram(lowered, folded, plan, engines, longs, shorts, prefill_gm, step_gm,
                         max_len, batch_size, engine)
    prog.step_fn = _compile(step_gm) if compile_step else step_gm
    return prog


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
