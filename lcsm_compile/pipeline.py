"""The compiler pipeline: named stages in two straight lines, and the one runner that runs them.

    lower: capture -> analyze -> match -> verify -> rewrite -> classify -> check
    plan:  fold -> shapes -> groups -> programs

Each stage is a pure function ``state -> state`` on a frozen record (:class:`Lowered` for
``lower``, :class:`ProgramPlan` for ``plan``): it reads the fields earlier stages filled and
returns a copy with its own fields filled (``dataclasses.replace``); nothing else changes.
:func:`run_stages` runs a list of stages in order, times each one, logs it to
``logging.getLogger("lcsm_compile")`` and, with ``debug_dir``, writes the stage's graph and
notes to ``debug_dir/NN_stage.txt`` (default ``$LCSM_DEBUG_DIR``) and, with ``TORCH_TRACE``
set, emits them as structured trace artifacts ``lcsm_<stage>`` (docs/debugging.md); ``until=``
stops after a named stage (tests run the pipeline up to the stage they check). A stage that
finds the model unsupported records refusals (data: op, user's ``file:line``, reason); no stage
raises for an unsupported model.
Only the public entry points (``session``, ``generate``) turn refusals into
:class:`~lcsm_compile.UnsupportedModelError`.

The contract of :func:`lower` (see docs/frontend.md): ``Lowered.gm`` is a
``torch.fx.GraphModule`` at aten level, functional, with ONE placeholder (the model input: ids
``[B, L]`` or ``[B, L, Din]``); parameters, buffers and tensor constants are ``get_attr`` nodes
pointing at the user's tensors. Every size is computed from the input with
``aten.sym_size.int`` nodes, so ``gm(x)`` at any length ``L >= 1`` (within ``valid_range``)
recomputes everything at that length. It returns the tensor leaves of the model output
(``out_spec.unflatten(gm(x))`` rebuilds the user's structure). Long convs are
``torch.ops.lcsm.long_conv.default(u [Bc, C, L], k [C, L])`` nodes, ``k`` computed by a
TIME_INVARIANT subgraph; short convs are ``torch.ops.lcsm.short_conv.default(u, w [C, K], bias)``.
``analysis[node]`` gives each node's class and time dim.

The contract of :func:`plan`: for a streamable ``Lowered``, the filters folded at ``max_len``
(prefix-checked), the mixer DAG and cross-layer groups at ``batch_size``, and the prefill and
step programs whose stateful calls are unbound slots (:mod:`lcsm_compile.passes.step_graph`);
:mod:`lcsm_compile.runtime` instantiates state for a plan and binds the slots.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import sympy
import torch
import torch.fx as fx

from .capture import Captured, capture_model, probe_input, user_source
from .capture.helpers import ROUTER_FRAME
from .capture.symbolic import to_expr, val
from .passes.check import global_checks, matches_model
from .passes.common import LONG_CONV, SHORT_CONV, probe_threads
from .passes.describe import conv_records, refusals_of, region_reasons
from .passes.fold_filters import Folded, fold_filters
from .passes.groups import GroupPlan, plan_groups, record_shapes
from .passes.modal import ModalPlan, modal_plan, without_members
from .passes.match_attention import (ATTENTION, args_at_length, attention_records, match_attention,
                                     rewrite_attention, verify_attention)
from .passes.match_long_conv import match_long_convs, match_scans
from .passes.match_short_conv import match_conv_regions
from .passes.region import Region
from .passes.rewrite import rewrite_regions
from .passes.step_graph import build_prefill_graph, build_step_graph, rename_slots
from .passes.time_axis import Analysis, TimeAxis, classify, data_dependent, filter_only, length_bound
from .passes.verify import verify_regions
from .options import resolve_debug_dir
from .report import ConvRecord, Refusal

__all__ = ["Stage", "run_stages", "LOWER", "FRONTEND", "PLAN", "Lowered", "ProgramPlan", "lower",
           "plan", "frontend_state", "max_length", "trace_artifact", "plan_summary", "stage_graphs",
           "refusal_dict", "decide_modal"]

log = logging.getLogger("lcsm_compile")


# ----------------------------------------------------------------------------- the runner
@dataclasses.dataclass(frozen=True)
class Stage:
    """A named pure stage: ``fn(state) -> state``; ``notes(state)`` is extra text for the dump."""

    name: str
    fn: Callable[[Any], Any]
    notes: Optional[Callable[[Any], str]] = None


def run_stages(state: Any, stages: Sequence[Stage], *, until: Optional[str] = None,
               debug_dir: Optional[str] = None) -> Any:
    """Run ``stages`` in order on ``state`` (module doc). Stops early after the stage named
    ``until`` (which must be one of ``stages``) or when a stage sets ``state.halted``.
    ``state.stage_times`` gets the seconds each stage took.

    ``debug_dir`` None means ``$LCSM_DEBUG_DIR`` (:func:`~lcsm_compile.options.resolve_debug_dir`;
    ``False`` turns the dumps off). With ``TORCH_TRACE`` set, every stage that has a graph is
    emitted as a structured trace artifact ``lcsm_<stage>`` (its graph as code, and its notes),
    and the run ends with ``lcsm_refusals`` and, for a plan, ``lcsm_plan``
    (:func:`trace_artifact`; ``tlparse`` shows them next to dynamo's own artifacts)."""
    names = [s.name for s in stages]
    if until is not None and until not in names:
        raise ValueError(f"no stage {until!r}; the stages are {names}")
    debug_dir = resolve_debug_dir(debug_dir)
    times = dict(state.stage_times)
    shown: list = [None, None]  # the last graph emitted as a trace artifact, and its stage
    t_all = time.perf_counter()
    for i, st in enumerate(stages):
        if state.halted:
            break
        t0 = time.perf_counter()
        state = st.fn(state)
        times[st.name] = time.perf_counter() - t0
        state = dataclasses.replace(state, stage_times=dict(times))
        log.debug("lcsm stage %s: %.3f s", st.name, times[st.name])
        if debug_dir:
            _dump(debug_dir, i, st, state)
        _trace_stage(st, state, shown)
        if st.name == until:
            break
    done = [n for n in names if n in times]
    log.debug("lcsm stages %s: %.3f s, %d refusal(s)%s", "/".join(done), time.perf_counter() - t_all,
              len(state.refusals), " (halted)" if state.halted else "")
    trace_artifact("lcsm_refusals", lambda: [refusal_dict(r) for r in state.refusals], "json")
    if isinstance(state, ProgramPlan) and state.groups is not None:
        trace_artifact("lcsm_plan", lambda: plan_summary(state), "json")
    return state


def trace_artifact(name: str, payload_fn: Callable[[], Any], encoding: str = "string") -> bool:
    """Emit a structured trace artifact (``TORCH_TRACE``) named ``name``: ``payload_fn()`` is
    called only when tracing is on and returns text (``encoding="string"``) or JSON-able data
    (``encoding="json"``; values JSON cannot hold are written with ``str``).
    Uses torch's private ``torch._logging._internal.trace_structured_artifact``: where it is
    absent or fails, nothing is emitted and False is returned (never raises)."""
    try:
        from torch._logging import _internal as tl

        emit = getattr(tl, "trace_structured_artifact", None)
        structured = getattr(tl, "trace_structured", None)
        trace_log = getattr(tl, "trace_log", None)
        if (emit is None and structured is None) or (trace_log is not None and not trace_log.handlers):
            return False

        def payload() -> str:
            out = payload_fn()
            return out if isinstance(out, str) else json.dumps(out, indent=1, default=str)

        if structured is not None:  # what trace_structured_artifact does, without the call stack it
            try:                    # records when called outside a compile (a session, explain)
                structured("artifact", metadata_fn=lambda: {"name": name, "encoding": encoding},
                           payload_fn=payload, expect_trace_id=False)
                return True
            except TypeError:  # another signature: the public-ish wrapper below
                pass
        if emit is None:
            return False
        emit(name, encoding, payload_fn=payload)
        return True
    except Exception as e:  # noqa: BLE001 - debugging aid only: never break a compile
        log.debug("lcsm trace artifact %s not emitted: %s", name, e)
        return False


def _graph_code(gm: Any) -> str:
    if hasattr(gm, "print_readable"):
        return gm.print_readable(print_output=False)
    return str(getattr(gm, "graph", gm))


def stage_graphs(state: Any) -> List[Tuple[str, Any]]:
    """The graphs of a state to show: ``[(label, GraphModule)]`` (the prefill and step programs
    of a plan, else ``state.stage_graph``)."""
    if isinstance(state, ProgramPlan):
        return [(lbl, g) for lbl, g in (("prefill program", state.prefill_gm), ("step program", state.step_gm))
                if g is not None]
    gm = getattr(state, "stage_graph", None)
    return [] if gm is None else [("graph", gm)]


def _trace_stage(st: Stage, state: Any, shown: list) -> None:
    """The trace artifact ``lcsm_<stage>`` of a stage that has a graph (module doc). A graph
    already emitted by an earlier stage of the same run is named, not repeated."""
    graphs = stage_graphs(state)
    if not graphs:
        return
    ids = tuple(id(g) for _, g in graphs)
    prev, prev_stage = shown
    shown[0], shown[1] = ids, (st.name if ids != prev else prev_stage)

    def payload() -> str:
        parts = []
        for label, g in graphs:
            if ids == prev:
                parts.append(f"# {label}: unchanged since lcsm_{prev_stage}")
            else:
                parts.append(f"# {label} after stage {st.name}\n{_graph_code(g)}")
        if st.notes is not None:
            parts.append("# notes\n" + st.notes(state))
        if state.refusals:
            parts.append("# refusals\n" + "\n".join(str(r) for r in state.refusals))
        return "\n\n".join(parts)

    trace_artifact(f"lcsm_{st.name}", payload)


def refusal_dict(r: Refusal) -> Dict[str, Any]:
    """A refusal as JSON-able data."""
    return {"op": r.op, "source": r.source, "reason": r.reason, "node": r.node}


def _dump(debug_dir: str, i: int, st: Stage, state: Any) -> None:
    os.makedirs(debug_dir, exist_ok=True)
    gm = getattr(state, "stage_graph", None)
    with open(os.path.join(debug_dir, f"{i:02d}_{st.name}.txt"), "w") as f:
        if gm is not None:
            f.write(_graph_code(gm))
        if st.notes is not None:
            f.write("\n\n" + st.notes(state))
        if state.refusals:
            f.write("\n\nrefusals:\n" + "\n".join(str(r) for r in state.refusals))


# ----------------------------------------------------------------------------- lower
@dataclasses.dataclass(frozen=True)
class Lowered:
    """The state of :func:`lower`'s stages and its result (module doc for the contract of ``gm``).

    Inputs: ``model``, ``example``, ``probe_lengths``, ``max_len``, ``check``, ``make_args``
    (``L -> real arguments of the captured graph``: the probes). Filled by the stages:
    ``captured`` (capture), ``ta``/``data_dep`` (analyze), ``regions`` (match, verify,
    rewrite), ``gm`` (rewrite), ``analysis``/``records`` (classify), ``refusals`` (every
    stage), ``valid_range``/``streamable`` (check); ``stage_times``.
    """

    model: Any = None
    example: Optional[torch.Tensor] = None
    probe_lengths: Tuple[int, ...] = (5, 12)
    max_len: Optional[int] = None
    min_len: Optional[int] = None
    check: bool = True
    make_args: Optional[Callable[[int], List[Any]]] = None
    captured: Optional[Captured] = None
    ta: Optional[TimeAxis] = None
    data_dep: frozenset = frozenset()
    regions: Tuple[Region, ...] = ()
    gm: Optional[fx.GraphModule] = None
    analysis: Optional[Analysis] = None
    records: Tuple[ConvRecord, ...] = ()
    refusals: Tuple[Refusal, ...] = ()
    valid_range: Tuple[int, Optional[int]] = (1, None)
    streamable: bool = False
    halted: bool = False
    stage_times: Dict[str, float] = dataclasses.field(default_factory=dict)

    # views of the records
    @property
    def long_convs(self) -> List[ConvRecord]:
        return [r for r in self.records if r.kind == "long"]

    @property
    def short_convs(self) -> List[ConvRecord]:
        return [r for r in self.records if r.kind == "short"]

    @property
    def scans(self) -> List[ConvRecord]:
        return [r for r in self.records if r.kind == "scan"]

    @property
    def attention(self) -> list:
        """The verified causal attention layers (:class:`~lcsm_compile.report.AttentionRecord`)."""
        return [r for r in self.records if r.kind == "attention"]

    # views of the capture
    @property
    def input_kind(self) -> str:
        return self.captured.input_kind if self.captured is not None else "cont"

    @property
    def out_spec(self):
        return self.captured.out_spec if self.captured is not None else None

    @property
    def captured_gm(self) -> Optional[fx.GraphModule]:
        return self.captured.gm if self.captured is not None else None

    @property
    def capture_example(self) -> Optional[torch.Tensor]:
        """The input the graph was captured with (``B >= 2``, ``L >= 2``)."""
        return self.captured.example_args[0] if self.captured is not None and self.captured.example_args else None

    @property
    def time_dim(self) -> int:
        return 1

    @property
    def stage_graph(self) -> Optional[fx.GraphModule]:
        """The graph a debug dump shows: the rewritten one once it exists."""
        return self.gm if self.gm is not None else self.captured_gm

    def __call__(self, x: torch.Tensor) -> Any:
        """Run ``gm`` on ``x`` and rebuild the model's output structure."""
        return self.out_spec.unflatten(list(self.gm(x.contiguous())))


def _capture(s: Lowered) -> Lowered:
    """Capture the model as one aten graph. When the graph only holds for lengths shorter than
    ``max_len`` (a buffer cached on the module at a shorter length and regrown in forward), the
    model is captured again past that length, and that graph is used if it holds up to
    ``max_len`` and equals the model at the probe lengths. A graph traced with
    ``opt_einsum.contract`` routed to ``torch.einsum`` (``Captured.routed``) must equal the
    model at the probe lengths too, else it is refused."""
    if s.min_len is not None:  # the piece of the model past the length its first graph holds for:
        # the first capture length whose graph holds up to max_len (guards may cut a range short)
        for Lc in (s.min_len, s.min_len + 2, s.min_len + 5, 2 * s.min_len + 3):
            cap = capture_model(s.model, s.example, lengths=(Lc,))
            top = cap.valid_range[1] if cap.gm is not None else 0
            if cap.gm is not None and (top is None or s.max_len is None or top >= s.max_len):
                break
    else:
        cap = capture_model(s.model, s.example)
    checked = False
    hi = cap.valid_range[1] if cap.gm is not None else None
    if s.min_len is None and s.max_len is not None and hi is not None and int(s.max_len) > hi:
        alt = capture_model(s.model, s.example, lengths=(hi + 1, hi + 3))
        if alt.gm is not None and alt.error is None and \
                (alt.valid_range[1] is None or alt.valid_range[1] >= int(s.max_len)) and \
                matches_model(s.model, alt.gm, alt.example_args[0], tuple(s.probe_lengths) + (hi + 1,)):
            cap, checked = alt, True
    if cap.gm is None:
        reason, op, src = cap.error
        return dataclasses.replace(s, captured=cap, refusals=(Refusal(op, src, reason),), halted=True)
    refusals = list(s.refusals)
    if cap.error is not None:
        refusals.insert(0, Refusal(cap.error[1], cap.error[2], cap.error[0]))
    if cap.routed and not checked and cap.error is None:
        refusals += _routed_refusals(s, cap)
    for name, dep in cap.mutated_buffers:
        if dep:
            refusals.append(Refusal("copy_", None, f"the forward writes input-dependent state into "
                                    f"buffer {name}: the model is not a function of its input"))
    xc = cap.example_args[0]
    make_args = s.make_args or (lambda L: [probe_input(xc, L, 1000 + L)])
    return dataclasses.replace(s, captured=cap, refusals=tuple(refusals), make_args=make_args)


def _routed_refusals(s: Lowered, cap: Captured) -> List[Refusal]:
    """The refusal of a capture whose routed ``opt_einsum.contract`` calls made a graph that
    differs from the eager model at the probe lengths (none when it equals the model). Its
    source is the user's line of the first routed call found in the graph."""
    if matches_model(s.model, cap.gm, cap.example_args[0], tuple(s.probe_lengths)):
        return []
    src = next((site for _, site in cap.routed if site), None) or \
        next((user_source(n) for n in cap.gm.graph.nodes if ROUTER_FRAME in (n.meta.get("stack_trace") or "")), None)
    eqs = ", ".join(dict.fromkeys(repr(eq) for eq, _ in cap.routed))
    return [Refusal("opt_einsum.contract", src,
                    f"the graph traced with opt_einsum.contract({eqs}) run as torch.einsum does not "
                    f"equal the model at lengths {tuple(s.probe_lengths)}: not captured faithfully")]


def _analyze(s: Lowered) -> Lowered:
    cap = s.captured
    ta = TimeAxis(cap.time_symbol, cap.batch_symbol)
    dep = data_dependent(cap.gm, [p.name for p in cap.data_inputs])
    return dataclasses.replace(s, ta=ta, data_dep=frozenset(dep))


def _match(s: Lowered) -> Lowered:
    gm, ta, dep = s.captured.gm, s.ta, set(s.data_dep)
    regions = match_long_convs(gm, ta, dep) + match_conv_regions(gm, ta, dep) + match_scans(gm, ta, dep)
    regions += match_attention(gm, ta, dep)
    return dataclasses.replace(s, regions=tuple(regions))


def _split_attention(regions) -> Tuple[list, list]:
    """``(convolution regions, attention regions)``: each kind has its own verify and rewrite."""
    return [r for r in regions if r.kind != "attention"], [r for r in regions if r.kind == "attention"]


def _verify(s: Lowered) -> Lowered:
    conv, attn = _split_attention(s.regions)
    regions = verify_regions(s.captured.gm, conv, s.ta, s.make_args, s.probe_lengths) + \
        verify_attention(s.captured.gm, attn, s.ta, args_at_length(s.make_args, s.captured.gm, s.captured.data_inputs,
                                                                    s.captured.time_dims), s.probe_lengths,
                         set(s.data_dep))
    return dataclasses.replace(s, regions=tuple(regions))


def _rewrite(s: Lowered) -> Lowered:
    cap = s.captured
    data0 = cap.data_inputs[0].name
    conv, attn = _split_attention(s.regions)
    gm, regions = rewrite_regions(cap.gm, conv, s.ta, data0, cap.time_dims[data0], cap.fake_mode)
    gm, attn = rewrite_attention(gm, attn, cap.fake_mode)
    return dataclasses.replace(s, gm=gm, regions=tuple(regions) + tuple(attn))


def _classify(s: Lowered) -> Lowered:
    names = [p.name for p in s.captured.data_inputs]
    analysis = classify(s.gm, s.ta, names, region_reasons(s.regions))
    conv, attn = _split_attention(s.regions)
    records = conv_records(s.gm, conv, s.ta, set(s.data_dep)) + attention_records(s.gm, attn, s.ta)
    return dataclasses.replace(s, analysis=analysis, records=tuple(records),
                               refusals=tuple(s.refusals) + tuple(refusals_of(s.gm, analysis)))


def _check(s: Lowered) -> Lowered:
    """End-to-end checks (:mod:`lcsm_compile.passes.check`), the valid length range, and the
    verdict: streamable when nothing was refused and the graph is generic in the length.

    A size ``Min(L, N)`` that reaches the outputs only as a convolution filter (a filter of
    ``N`` taps, zero beyond them) does not bound the length: the longer range is taken when
    the same end-to-end checks also pass at a length past ``N`` (else the bound stays)."""
    cap = s.captured
    refusals = list(s.refusals)
    if s.check and cap.symbolic:
        refusals += global_checks(s.gm, cap.gm, s.analysis, cap.example_args[0], s.probe_lengths,
                                  s.records, other_refusals=bool(refusals), min_len=s.min_len or 1)
    if cap.symbolic and not isinstance(to_expr(val(cap.data_inputs[0]).shape[1]), sympy.Symbol):
        refusals.append(Refusal("capture", None, "the sequence length was specialized during "
                                "analysis (internal error); the graph is not length-generic"))
    hi = max_length(s)
    if not refusals and cap.symbolic and hi is not None:
        longer = max_length(s, filters_bound=False)
        if (longer is None or longer > hi) and not global_checks(
                s.gm, cap.gm, s.analysis, cap.example_args[0], (hi + 3,), s.records, other_refusals=False,
                min_len=s.min_len or 1):
            hi = longer
    lo = 1 if s.min_len is None else max(s.min_len, cap.valid_range[0])
    return dataclasses.replace(s, refusals=tuple(refusals), valid_range=(lo, hi),
                               streamable=not refusals and cap.symbolic)


def max_length(s: Lowered, filters_bound: bool = True) -> Optional[int]:
    """The longest input the rewritten graph of ``s`` is valid for (None: any): the capture's
    range, every ``Min(L, c)`` the analysis read as ``L`` (with ``filters_bound=False``, not
    those in nodes that are only convolution filters), and every matched region's bound."""
    cap = s.captured
    if filters_bound:
        graph_bound = length_bound(s.ta, [cap.gm, s.gm])
    else:
        graph_bound = length_bound(s.ta, [s.gm], skip=filter_only(s.gm))
    bounds = [b for b in [cap.valid_range[1], graph_bound] +
              [r.bound for r in s.regions if r.problem is None] if b is not None]
    return min(bounds, default=None)


def _region_notes(s: Lowered) -> str:
    return "\n".join(f"{r.kind} region at {r.anchor.name}: u={getattr(r.u, 'name', None)} "
                     f"y={getattr(r.y, 'name', None)} nodes={[m.name for m in r.nodes]} "
                     f"{r.verified or r.problem or ''}" for r in s.regions)


def _class_notes(s: Lowered) -> str:
    return "\n".join(f"{k}: {v.cls.value} time_dim={v.time_dim}" + (f" reason={v.reason}" if v.reason else "")
                     for k, v in s.analysis.info.items())


#: the front end on a captured graph (also what the backend runs on each dynamo graph)
FRONTEND: Tuple[Stage, ...] = (
    Stage("analyze", _analyze),
    Stage("match", _match, _region_notes),
    Stage("verify", _verify, _region_notes),
    Stage("rewrite", _rewrite, _region_notes),
    Stage("classify", _classify, _class_notes),
)
#: the stages of :func:`lower`
LOWER: Tuple[Stage, ...] = (Stage("capture", _capture),) + FRONTEND + (Stage("check", _check),)


def lower(model_or_compiled: Any, example: torch.Tensor, *, debug_dir: Optional[str] = None,
          probe_lengths: Sequence[int] = (5, 12), check: bool = True, max_len: Optional[int] = None,
          min_len: Optional[int] = None, until: Optional[str] = None) -> Lowered:
    """Lower a model to the streaming-ready graph (module doc): run :data:`LOWER`.

    Args:
        debug_dir: write each stage's graph and notes there.
        probe_lengths: the lengths of the verification probes.
        check: run the end-to-end checks.
        max_len: the longest length the caller needs (see the capture stage).
        min_len: capture and verify the model for lengths ``>= min_len`` only (the piece of a
            model past the length its first graph holds for; probes run past ``min_len``).
        until: stop after this stage (tests).
    Never raises for an unsupported model: ``refusals`` says why, ``streamable`` is False.
    """
    if min_len is not None:
        probe_lengths = tuple(int(min_len) + 4 + p - min(probe_lengths) for p in probe_lengths)
    state = Lowered(model=model_or_compiled, example=example, probe_lengths=tuple(probe_lengths),
                    max_len=max_len, min_len=min_len, check=check)
    return run_stages(state, LOWER, until=until, debug_dir=debug_dir)


def frontend_state(captured: Captured, make_args: Callable[[int], List[Any]],
                   probe_lengths: Sequence[int]) -> Lowered:
    """The state :data:`FRONTEND` starts from for an already captured graph (the backend's)."""
    return Lowered(captured=captured, make_args=make_args, probe_lengths=tuple(probe_lengths), check=False)


# ----------------------------------------------------------------------------- plan
@dataclasses.dataclass(frozen=True)
class ProgramPlan:
    """The state of :func:`plan`'s stages and its result: everything the runtime needs to
    instantiate a streaming program, and no state. ``folded`` (fold), ``shapes`` (shapes:
    ``{lcsm op node: (lead, C, dtype, device)}`` of its input), ``groups`` (groups),
    ``prefill_gm``/``step_gm`` with unbound slots (programs), ``refusals``.

    A model whose graph holds only up to some length ``hi`` (its code branches on ``L``: a
    filter of ``N`` taps cut with ``[:min(N, L)]`` and padded when ``N < L``) is planned from
    the graph ``lowered`` captured past ``hi``; ``short_pieces`` are ``(hi, Lowered)`` of the
    graphs for the shorter lengths, and ``short_prefills`` their prefill programs, whose slots
    name the same members (by convolution order)."""

    lowered: Lowered
    max_len: int
    batch_size: int
    short_pieces: Tuple[Tuple[int, Lowered], ...] = ()
    folded: Optional[Folded] = None
    shapes: Dict[str, tuple] = dataclasses.field(default_factory=dict)
    groups: Optional[GroupPlan] = None
    prefill_gm: Optional[fx.GraphModule] = None
    step_gm: Optional[fx.GraphModule] = None
    short_prefills: Tuple[Tuple[int, fx.GraphModule], ...] = ()
    refusals: Tuple[Refusal, ...] = ()
    halted: bool = False
    stage_times: Dict[str, float] = dataclasses.field(default_factory=dict)
    #: the ``modal`` option ("auto" | False) and what the fold stage decided: which long
    #: convolutions stream as verified modal recurrences (:mod:`lcsm_compile.passes.modal`;
    #: their filters are not folded and they are in no group)
    modal_option: Any = "auto"
    modal: Optional[ModalPlan] = None

    @property
    def stage_graph(self) -> Optional[fx.GraphModule]:
        return self.step_gm


def _plan_input(p: ProgramPlan, L: int, batch: Optional[int] = 1) -> torch.Tensor:
    """A probe at length ``L``; a graph captured for one batch gets that batch."""
    if p.lowered.captured.batch_symbol is None:
        batch = None
    return probe_input(p.lowered.capture_example, L, 4242 + L, batch=batch)


def _fold(p: ProgramPlan) -> ProgramPlan:
    """Modal filters (verified sums of exponentials, :mod:`lcsm_compile.passes.modal`) become
    poles and residues; every other time-invariant value is folded at ``max_len``."""
    low = p.lowered
    lo = max(2, low.valid_range[0])
    mp = p.modal
    if mp is None or mp.max_len != p.max_len or mp.option != p.modal_option:
        mp = decide_modal(low, p.max_len, p.batch_size, p.modal_option)
    with probe_threads():
        folded = fold_filters(low.gm, low.analysis, lambda L: _plan_input(p, L), p.max_len,
                              check_lengths=sorted({lo, lo + 1, lo + 5, max(lo, p.max_len // 3)}),
                              skip=tuple(mp.filters))
    return dataclasses.replace(p, folded=folded, modal=mp, refusals=p.refusals + tuple(folded.refusals),
                               halted=bool(folded.refusals))


def decide_modal(low: Lowered, max_len: int, batch_size: int = 1, option: Any = "auto") -> ModalPlan:
    """The fold stage's first step alone: which long convolutions of ``low`` stream as verified
    modal recurrences at ``max_len`` (:func:`lcsm_compile.passes.modal.modal_plan`); ``plan(...,
    modal=<this>)`` reuses it (a session checks the fold's memory with it first)."""
    p = ProgramPlan(lowered=low, max_len=int(max_len), batch_size=int(batch_size), modal_option=option)
    with probe_threads():
        return modal_plan(low.gm, low.ta, lambda L: _plan_input(p, L), p.max_len, option)


def _fold_notes(p: ProgramPlan) -> str:
    if p.modal is None:
        return ""
    return "\n".join(f"{c.node}: {c.path}: {c.reason}" for c in p.modal.paths.values())


def _shapes(p: ProgramPlan) -> ProgramPlan:
    with probe_threads():
        shapes = record_shapes(p.lowered.gm, _plan_input(p, max(2, p.lowered.valid_range[0]), p.batch_size))
    return dataclasses.replace(p, shapes=shapes)


def _groups(p: ProgramPlan) -> ProgramPlan:
    groups = plan_groups(p.lowered.gm, p.shapes)
    if p.modal is not None:  # the modal convolutions run as recurrences, not in an engine's group
        groups = without_members(groups, p.modal.filters)
    return dataclasses.replace(p, groups=groups)


def _programs(p: ProgramPlan) -> ProgramPlan:
    short = []
    slotted = (LONG_CONV, SHORT_CONV, ATTENTION)  # the ops that become slots (attention: its KV cache)
    mixers = [n.name for n in p.lowered.gm.graph.nodes if n.target in slotted]
    for hi, piece in p.short_pieces:
        names = [n.name for n in piece.gm.graph.nodes if n.target in slotted]
        kinds = [n.target for n in piece.gm.graph.nodes if n.target in slotted]
        want = [n.target for n in p.lowered.gm.graph.nodes if n.target in slotted]
        if kinds != want:
            return dataclasses.replace(p, halted=True, refusals=p.refusals + (Refusal(
                "capture", None, f"the model's graph for lengths <= {hi} has other convolutions than "
                f"its graph for longer lengths: one session cannot cover both"),))
        short.append((hi, rename_slots(build_prefill_graph(piece.gm), dict(zip(names, mixers)))))
    return dataclasses.replace(p, prefill_gm=build_prefill_graph(p.lowered.gm),
                               step_gm=build_step_graph(p.lowered.gm, p.folded), short_prefills=tuple(short))


def _group_notes(p: ProgramPlan) -> str:
    return "\n".join(f"group {i}: {g.describe()}: {', '.join(g.members)}" for i, g in enumerate(p.groups.groups))


def plan_summary(p: ProgramPlan) -> Dict[str, Any]:
    """A plan as JSON-able data (the ``lcsm_plan`` trace artifact, ``lcsm inspect``): lengths,
    batch, the cross-layer groups and the other mixers. The engines' schedule parameters are
    chosen when a program is instantiated (``lcsm_schedule``, :mod:`lcsm_compile.inspection`)."""
    groups = p.groups.groups if p.groups is not None else []
    mixers = {n.name: ("long" if n.target == LONG_CONV else "short") for n in p.lowered.gm.graph.nodes
              if n.op == "call_function" and n.target in (LONG_CONV, SHORT_CONV)} if p.lowered.gm is not None else {}
    return {
        "max_len": p.max_len, "batch_size": p.batch_size, "valid_range": list(p.lowered.valid_range),
        "input_kind": p.lowered.input_kind,
        "groups": [{"members": list(g.members), "channels": g.channels, "batch": g.batch,
                    "dtype": str(g.dtype).replace("torch.", ""), "device": str(g.device),
                    "depths": dict(g.depths), "describe": g.describe()} for g in groups],
        "long_convs": [m for m, k in mixers.items() if k == "long"],
        "short_convs": [m for m, k in mixers.items() if k == "short"],
        "short_pieces": [hi for hi, _ in p.short_pieces],
        "modal": {c.node: {"path": c.path, "reason": c.reason} for c in p.modal.paths.values()}
        if p.modal is not None else {},
        "refusals": [refusal_dict(r) for r in p.refusals],
        "stage_times": {k: round(v, 6) for k, v in p.stage_times.items()},
    }


#: the stages of :func:`plan`
PLAN: Tuple[Stage, ...] = (
    Stage("fold", _fold, _fold_notes),
    Stage("shapes", _shapes),
    Stage("groups", _groups, _group_notes),
    Stage("programs", _programs),
)


def plan(lowered: Lowered, max_len: int, batch_size: int, *, short_pieces: Sequence[Tuple[int, Lowered]] = (),
         debug_dir: Optional[str] = None, until: Optional[str] = None, modal: Any = "auto") -> ProgramPlan:
    """Plan the streaming program of a streamable lowered model (module doc): run :data:`PLAN`.
    ``short_pieces``: ``(hi, Lowered)`` graphs for lengths ``<= hi`` (see :class:`ProgramPlan`).
    ``modal``: "auto" (verified modal filters stream as recurrences) or False (every long
    convolution on the online engine), or the :func:`decide_modal` result to use. Never raises
    for an unsupported model: ``refusals`` says why."""
    if not lowered.streamable:
        raise ValueError("plan() needs a streamable Lowered (check lowered.refusals first)")
    pre = modal if isinstance(modal, ModalPlan) else None
    state = ProgramPlan(lowered=lowered, max_len=int(max_len), batch_size=int(batch_size),
                        short_pieces=tuple(short_pieces), modal_option=pre.option if pre else modal, modal=pre)
    return run_stages(state, PLAN, until=until, debug_dir=debug_dir)
