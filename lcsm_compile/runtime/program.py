"""The streaming program: a plan instantiated with state.

:func:`instantiate` turns a :class:`~lcsm_compile.pipeline.ProgramPlan` into a
:class:`StreamProgram`: one engine per cross-layer group and the plan's prefill and step
programs lowered to the stateful ``lcsm::`` ops (:func:`lcsm_compile.passes.step_graph.lower_slots`)
on the state as tensors, buffers of the programs' modules:

* the online engine (default): the step program is ONE FX graph ``step(x_t, pos)``: the red
  cells of each long convolution (``lcsm::online_diag``) layer by layer, the short
  convolutions as position-indexed ring buffers (``lcsm::ring_step``), and at the end one
  ``lcsm::online_advance`` per group (all tiles of the step in one batched call per group).
  ``torch.compile(program.step_gm, fullgraph=True)`` compiles it whole and ``torch.export``
  exports it with the ops as nodes. Before the advances nothing changes any position: a step
  that fails half-way is retried at the same position, nothing to roll back.
* a baseline engine (``engine="lazy" | "eager" | "none"``, for benchmarks and tests): the
  long convolutions stay Python calls of :class:`~lcsm_compile.runtime.members.LongMember`
  (slots), advanced after the graph; the short convolutions are the same ring-buffer ops.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import logging
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.fx as fx

from ..codegen import select_kernels
from ..codegen.ring import prefer_kernels
from ..errors import SessionError
from ..ops import compute_dtype
from ..passes.common import SHORT_CONV
from ..passes.step_graph import LongSlot, ShortSlot, bind_slots, lift_attributes, lower_slots, state_attr
from . import state_ops as _state_ops  # registers the implementations of the lcsm ops
from .baselines import EagerConv, LazyConv, NullConv
from .engine import OnlineConv
from .kv_cache import kv_caches  # also registers the implementations of lcsm::kv_attend / kv_prefill
from .members import LongMember
from .memory import group_filters
from .modal import modal_states  # also registers the implementations of lcsm::modal_step / modal_prefill
from ..passes.modal import lower_modal_slots

__all__ = ["StreamProgram", "instantiate", "ENGINES", "Ring", "CompiledStep", "InductorStep"]

log = logging.getLogger("lcsm_compile")

#: engines a program can use for its long convolutions (``engine=`` option); each implements
#: :class:`lcsm_compile.runtime.baselines.Engine`
ENGINES = {"online": OnlineConv, "lazy": LazyConv, "eager": EagerConv, "none": NullConv}


@dataclasses.dataclass
class Ring:
    """A short convolution's state: ``buf [B, C, K]`` (slot ``t % K`` = input of position
    ``t``), its weights ``w [C, K]`` and ``bias [C]`` (or None)."""

    buf: torch.Tensor
    w: torch.Tensor
    bias: Optional[torch.Tensor]

    def reset(self) -> None:
        self.buf.zero_()


@dataclasses.dataclass
class StreamProgram:
    """A model turned into prefill + step programs with their state (see module docstring)."""

    plan: Any
    engines: List[Any]
    longs: Dict[str, Any]
    shorts: Dict[str, Ring]
    prefill_gm: fx.GraphModule
    step_gm: fx.GraphModule
    engine_kind: str
    step_fn: Callable
    #: ``(hi, prefill program)`` for prompts of length ``<= hi`` (models whose graph branches on L)
    short_prefills: List[Any] = dataclasses.field(default_factory=list)
    #: the KV cache of every attention layer (:class:`~lcsm_compile.runtime.kv_cache.KVCache`)
    attention: Dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the state of every modal long convolution (:class:`~lcsm_compile.runtime.modal.ModalState`)
    modal: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def lowered(self):
        return self.plan.lowered

    @property
    def max_len(self) -> int:
        return self.plan.max_len

    @property
    def batch_size(self) -> int:
        return self.plan.batch_size

    @property
    def _python_engines(self) -> List[Any]:
        """Engines driven from Python around the graphs (the baselines); the online engines
        run inside the graphs as ops."""
        return [] if self.engine_kind == "online" else self.engines

    def reset(self) -> None:
        for e in self.engines:
            e.reset()
        for s in self.shorts.values():
            s.reset()
        for m in self.modal.values():
            m.reset()

    def prefill(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Run the prefill graph on ``x [B, P, ...]`` (position 0); returns the tensor outputs."""
        P = x.shape[1]
        gm = next((g for hi, g in self.short_prefills if P <= hi), self.prefill_gm)
        if gm is self.prefill_gm and P < self.plan.lowered.valid_range[0] and self.short_prefills:
            return self._prefill_then_steps(x)
        try:
            outs = gm(x)
            for e in self._python_engines:
                e.finish_prefill(P)
        except BaseException:
            self.reset()
            raise
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
        """Run one position. On an error in the model's computation nothing has moved (the
        advances come last; the red cells and ring slots of a position are rewritten when it
        is run again); an error inside the tile work itself resets the program."""
        try:
            outs = self.step_fn(x_t, pos)
        except BaseException:
            for e in self._python_engines:
                e.rollback()
            moved = [e for e in self.engines if isinstance(e, OnlineConv) and _moved(e, int(pos))]
            if moved:
                self.reset()
                err = SessionError(f"a step failed inside the tile work of position {int(pos)}; the state "
                                   f"was reset to position 0 (prefill again)")
                err.state_reset = True
                raise err from None
            for e in self.engines:  # nothing moved: the objects read the position from the state
                if isinstance(e, OnlineConv):
                    e.sync()
            raise
        for e in self._python_engines:
            e.advance()
        return list(outs)

    def state_dict(self, copy: bool = True) -> dict:
        """The state of every engine, ring buffer, KV cache and modal state; ``copy=False``:
        the online engines' large buffers as views (write them out before the next step)."""
        out = {"engines": [e.state_dict() if copy or not isinstance(e, OnlineConv) else e.state_dict(copy=False)
                           for e in self.engines],
               "shorts": {k: s.buf.clone() for k, s in self.shorts.items()}}
        if self.attention:
            out["attention"] = {k: (c.k.clone(), c.v.clone()) for k, c in self.attention.items()}
        if self.modal:
            out["modal"] = {k: m.state.clone() for k, m in self.modal.items()}
        return out

    def load_state_dict(self, state: dict) -> None:
        if len(state["engines"]) != len(self.engines) or set(state["shorts"]) != set(self.shorts):
            raise SessionError("state does not belong to this model (different convolutions)")
        for k, s in self.shorts.items():
            if tuple(state["shorts"][k].shape) != tuple(s.buf.shape):
                raise SessionError(f"state of short convolution {k} has shape {tuple(state['shorts'][k].shape)}, "
                                   f"expected {tuple(s.buf.shape)}")
        kv = state.get("attention", {})
        if set(kv) != set(self.attention) or any(tuple(kv[k][0].shape) != tuple(c.k.shape) or
                                                 tuple(kv[k][1].shape) != tuple(c.v.shape)
                                                 for k, c in self.attention.items()):
            raise SessionError("state does not belong to this model (different attention layers or KV caches)")
        ms = state.get("modal", {})
        if set(ms) != set(self.modal) or any(tuple(ms[k].shape) != tuple(m.state.shape) for k, m in self.modal.items()):
            raise SessionError("state does not belong to this model (different modal convolutions or modes)")
        for e, s in zip(self.engines, state["engines"]):
            e.load_state_dict(s)
        for k, c in self.attention.items():
            c.k.copy_(kv[k][0])
            c.v.copy_(kv[k][1])
        for k, s in self.shorts.items():
            s.buf.copy_(state["shorts"][k])
        for k, m in self.modal.items():
            m.state.copy_(ms[k])


def instantiate(plan, engine: str = "online", compile_step: bool = False,
                engine_options: Optional[dict] = None, kernels: str = "auto") -> StreamProgram:
    """State for ``plan`` and its programs lowered to the stateful ops on it (module doc).

    ``kernels`` ("auto" | "torch" | "native" | "triton") picks the kernels of the online
    engine and of the short convolutions' ring steps (:func:`lcsm_compile.codegen.select_kernels`:
    "auto" is Triton on CUDA, native C on the CPU; "native"/"triton" raise SessionError where
    they cannot run).
    """
    if engine not in ENGINES:
        raise SessionError(f"engine={engine!r} is not one of {sorted(ENGINES)}")
    cls = ENGINES[engine]
    online = cls is OnlineConv
    gm, folded, shapes = plan.lowered.gm, plan.folded, plan.shapes
    engines: List[Any] = []
    members: Dict[str, Any] = {}
    long_slots: Dict[str, LongSlot] = {}
    tensors: Dict[str, Any] = {}
    configs: List[List[int]] = []
    for gi, group in enumerate(plan.groups.groups):
        if online:  # the group's filters written once; the folded ones become its views (runtime/memory.py)
            k = group_filters(folded, group.members, plan.max_len, group.dtype)
            extra = {"kernels": kernels, "copy_filters": False}
        else:
            ks = [folded.filters[m] for m in group.members]
            k = torch.cat([kk.reshape(-1, kk.shape[-1]) for kk in ks], 0)
            extra = {}
        eng = cls(k, max_len=plan.max_len, batch_size=group.batch, dtype=group.dtype, **extra,
                  **(engine_options or {}))
        engines.append(eng)
        if online:
            configs.append(eng.config)
            for f, t in {**eng.state_tensors(), "k": eng.k, "kb": eng._kb}.items():
                tensors[state_attr(f"g{gi}", f)] = t
        for m in group.members:
            lead, C, dtype, device = shapes[m]
            sl = group.slices[m]
            if online:
                long_slots[m] = LongSlot(gi, sl.indices(eng.channels)[0], C, math.prod(lead) if lead else 1)
            else:
                members[m] = LongMember(m, eng, sl, lead, C)
    short_slots: Dict[str, ShortSlot] = {}
    shorts: Dict[str, Ring] = {}
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
        batch = math.prod(lead) if lead else 1
        w = w.detach().to(device=device, dtype=dtype).reshape(C, -1).contiguous()
        b = None if b is None else b.detach().to(device=device, dtype=dtype).reshape(C).contiguous()
        if kernels != "auto":  # the ring op finds the option through its own copy of the weights
            select_kernels(kernels, compute_dtype(dtype), device)  # SessionError: unavailable here
            w = w.clone()
            prefer_kernels(w, kernels)
        ring = Ring(torch.zeros(batch, C, w.shape[-1], dtype=dtype, device=device), w, b)
        shorts[name] = ring
        short_slots[name] = ShortSlot(batch, C, b is not None)
        tensors[state_attr(name, "buf")] = ring.buf
        tensors[state_attr(name, "w")] = w
        if b is not None:
            tensors[state_attr(name, "bias")] = b

    caches = kv_caches(plan)
    for name, c in caches.items():
        tensors[state_attr(name, "kcache")], tensors[state_attr(name, "vcache")] = c.k, c.v

    modal = modal_states(plan, shapes, kernels)  # modal long convolutions: recurrences (docs/streaming.md)
    for name, (m, _) in modal.items():
        tensors.update(m.tensors(name))

    def program(slot_gm: fx.GraphModule, mode: str) -> fx.GraphModule:
        slot_gm = lower_modal_slots(slot_gm, mode, {n: sl for n, (_, sl) in modal.items()})
        graph = lower_slots(slot_gm, mode, long_slots, short_slots, configs,
                            attns={n: c.slot for n, c in caches.items()})
        root = {}
        for node in graph.nodes:
            if node.op == "get_attr":
                root[node.target] = tensors[node.target] if node.target in tensors else _resolve(slot_gm, node.target)
        out = fx.GraphModule(root, graph, class_name=f"Lcsm{mode.capitalize()}Program")
        return bind_slots(out, members) if members else out

    prefill_gm = program(plan.prefill_gm, "prefill")
    step_gm = program(plan.step_gm, "step")
    step_fn = CompiledStep(step_gm, online, engines) if compile_step else step_gm
    short = [(hi, program(g, "prefill")) for hi, g in sorted(plan.short_prefills)]
    return StreamProgram(plan, engines, long_slots if online else members, shorts, prefill_gm, step_gm, engine,
                         step_fn, short, attention=caches, modal={n: m for n, (m, _) in modal.items()})


def _resolve(gm: fx.GraphModule, target: str) -> Any:
    obj = gm
    for p in target.split("."):
        obj = getattr(obj, p)
    return obj


def _eval_attr(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    if node.op != "get_attr":
        raise SessionError(f"short-conv weight {node.name} is not a constant")
    return _resolve(gm, node.target)


class CompiledStep:
    """The step program compiled with Inductor (:func:`_compile`), compiled on its first call.

    The first call's time (compile + one step) is kept in ``setup_s`` and logged. If that call
    fails and no position moved, the same position runs on the uncompiled graph: when that
    works, the compiler was at fault, and the program keeps running the graph (``failed`` says
    why, logged as a warning); when it fails too, the input was, and its error is raised.
    """

    def __init__(self, gm: fx.GraphModule, whole: bool, engines: List[Any]):
        self.gm, self.whole, self.engines = gm, whole, engines
        self.fn = _compile(gm, whole)
        self.setup_s: Optional[float] = None
        self.failed: Optional[str] = None

    def __call__(self, x_t: torch.Tensor, pos: torch.Tensor):
        if self.setup_s is not None:
            return self.fn(x_t, pos)
        if self.failed is not None:
            return self.gm(x_t, pos)
        t0 = time.perf_counter()
        log.info("lcsm: compiling the step program with Inductor (once per model and shapes; Inductor's "
                 "cache keeps it across processes)")
        try:
            out = self.fn(x_t, pos)
        except Exception as e:  # the compiler, or the input?
            if any(isinstance(g, OnlineConv) and _moved(g, int(pos)) for g in self.engines):
                raise
            out = self.gm(x_t, pos)  # raises the input's own error
            self.failed = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            log.warning("lcsm: compiling the step program failed (%s); running it uncompiled", self.failed)
            return out
        self.setup_s = time.perf_counter() - t0
        log.info("lcsm: step program compiled in %.1f s", self.setup_s)
        return out


def _moved(e: OnlineConv, pos: int) -> bool:
    """Whether a failed step at ``pos`` moved the engine ``e``: its state (``meta``) is elsewhere,
    or its advance got past ``pos`` before it failed (the object's position runs ahead of
    ``meta`` until the advance publishes it). The object's position may also lag ``meta``: the
    C++ advance (codegen/cpu_ops.cpp) moves only ``meta`` over steps without tile work."""
    return e.state_position() != pos or e.position > pos


def _compile(step_gm: fx.GraphModule, whole: bool) -> Callable:
    """Compile the step program with Inductor (CPU C++ kernels for the position-wise work, the
    ``lcsm`` ops extern calls), on the first call.

    With the online engine the program is one graph, already captured with static shapes:
    :class:`InductorStep` hands it to Inductor directly (``torch._inductor.compile``, its tensors
    lifted to inputs), with no dynamo frame around it, so a call pays no guard check (0.4-0.5 ms
    per token on this project's CPU for a 4 x 256 model: docs/benchmarks.md section 6). With a
    baseline engine its Python members stay opaque calls (``torch._dynamo.disable``) and
    ``torch.compile`` compiles the graph as the segments between them."""
    if whole:
        if _on_cuda(step_gm):  # the body replayed as CUDA graphs, the tile work launched after it
            from .cuda_graphs import CudaGraphStep
            return CudaGraphStep(step_gm, InductorStep)
        return InductorStep(step_gm)
    import torch._dynamo

    step_gm = fx.GraphModule(step_gm, copy.deepcopy(step_gm.graph))
    for n in step_gm.graph.nodes:
        if n.op == "call_function" and isinstance(getattr(n.target, "__self__", None), LongMember):
            n.target = torch._dynamo.disable(n.target)
    step_gm.recompile()
    return torch.compile(step_gm, backend="inductor", dynamic=False, fullgraph=False,
                         options={"cpp.threads": 1})


def _on_cuda(gm: fx.GraphModule) -> bool:
    """Whether the program's state (its attribute tensors) lives on a CUDA device."""
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            t = _resolve(gm, n.target)
            if isinstance(t, torch.Tensor) and t.device.type == "cuda":
                return True
    return False


class InductorStep:
    """The one-graph step program compiled by Inductor without dynamo (:func:`_compile`).

    Its weights, folded constants and state tensors are inputs of the compiled graph
    (:func:`~lcsm_compile.passes.step_graph.lift_attributes`: never constants, the state ops
    mutate them), passed on every call. Inputs are checked where dynamo's guards used to be:
    token ids of another integer dtype are converted (exact), an input of another layout made
    compact; anything else the session's own checks refuse before a step runs. Compiled on the
    first call (Inductor's cache keeps it across processes)."""

    def __init__(self, gm: fx.GraphModule):
        self.lifted, names = lift_attributes(gm)
        self.tensors = tuple(_resolve(gm, n) for n in names)
        self.fn: Optional[Callable] = None
        self._x: Optional[tuple] = None
        #: "C++" (Inductor's C++ wrapper around the kernels), "Python", or None before the compile
        self.wrapper: Optional[str] = None
        self.wrapper_note = ""

    def __call__(self, x_t: torch.Tensor, pos: torch.Tensor):
        if self.fn is None:
            inductor = importlib.import_module("torch._inductor")  # loaded when first needed
            if x_t.device.type == "cpu":  # the per-step ops as C++ kernels (codegen/cpu_ops.py)
                _state_ops.use_cpp_step_ops()
            x_t = x_t.clone(memory_format=torch.contiguous_format)
            inputs = [x_t, pos, *self.tensors]
            # no size/stride asserts on the ~80 inputs per call (76 us of a 1.6 ms step, 4 x 256):
            # the lifted tensors are fixed and x_t is checked here
            opts = {"cpp.threads": 1, "size_asserts": False}
            fn = None
            if x_t.device.type == "cpu" and cpp_wrapper_enabled():
                try:  # the C++ wrapper: no Python between the kernels (docs/streaming.md, compile_step)
                    fn = inductor.compile(self._with_fake_values(inputs), inputs, options={**opts, "cpp_wrapper": True})
                    self.wrapper = "C++"
                except Exception as e:  # noqa: BLE001 - the Python wrapper still compiles
                    self.wrapper_note = f"C++ wrapper failed ({type(e).__name__}: {str(e).strip()[:160]})"
                    log.warning("lcsm: %s; compiling the step with Inductor's Python wrapper", self.wrapper_note)
            if fn is None:
                fn = inductor.compile(self.lifted, inputs, options=opts)
                self.wrapper = "Python"
            self.fn, self._x = fn, (x_t.dtype, x_t.shape, x_t.stride())
        elif (x_t.dtype, x_t.shape, x_t.stride()) != self._x:
            dtype, shape, _ = self._x
            if x_t.shape != shape or (x_t.dtype != dtype and (x_t.is_floating_point() or x_t.is_complex())):
                raise SessionError(f"step input {tuple(x_t.shape)} {x_t.dtype}: the step program was compiled "
                                   f"for {tuple(shape)} {dtype}")
            x_t = x_t.to(dtype).clone(memory_format=torch.contiguous_format)
        return self.fn(x_t, pos, *self.tensors)

    def _with_fake_values(self, inputs: list) -> fx.GraphModule:
        """The lifted graph with a fake ``meta["val"]`` on every placeholder: Inductor's C++
        wrapper takes its inputs' metadata from there (the lifted tensors have none)."""
        from torch._subclasses.fake_tensor import FakeTensorMode

        mode = FakeTensorMode()
        for ph, ex in zip(self.lifted.graph.find_nodes(op="placeholder"), inputs):
            if isinstance(ex, torch.Tensor):
                ph.meta["val"] = mode.from_tensor(ex)
        return self.lifted


def cpp_wrapper_enabled() -> bool:
    """Whether compiled CPU steps use Inductor's C++ wrapper (``LCSM_CPP_WRAPPER``, default on;
    ``0`` for the Python wrapper: a faster first compile, ~3-10 s instead of ~20-30 s)."""
    return os.environ.get("LCSM_CPP_WRAPPER", "1") != "0"
