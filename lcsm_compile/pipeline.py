"""The front-end pipeline: one function that names the stages.

    capture -> analyze -> match -> verify -> rewrite -> classify -> check

:func:`lower` is the contract the streaming session is built on (see docs/frontend.md):

``lower(model_or_compiled, example, **options) -> Lowered`` is a pure function of the model (the
user's module is not mutated) and raises nothing for unsupported models: it returns
``streamable=False`` with ``refusals`` filled.

``Lowered.gm`` is a ``torch.fx.GraphModule`` at aten level, functional, with ONE placeholder
(the model input: ids ``[B, L]`` or ``[B, L, Din]``); parameters, buffers and tensor constants
are ``get_attr`` nodes pointing at the user's tensors. Every size is computed from the input
with ``aten.sym_size.int`` nodes, so ``gm(x)`` at any length ``L >= 1`` (within
``valid_range``) recomputes everything at that length. It returns the tensor leaves of the
model output (``out_spec.unflatten(gm(x))`` rebuilds the user's structure). Long convs are
``torch.ops.lcsm.long_conv.default(u [Bc, C, L], k [C, L])`` nodes, ``k`` computed by a
TIME_INVARIANT subgraph; short convs are ``torch.ops.lcsm.short_conv.default(u, w [C, K], bias)``.
``analysis[node]`` gives each node's class and time dim.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import sympy
import torch
import torch.fx as fx

from . import ops as _ops  # noqa: F401 - registers torch.ops.lcsm
from .capture import Captured, OutSpec, capture_model
from .passes.common import op_name, size_exprs, user_code, user_source, val
from .passes.match_long_conv import match_long_convs, match_scans
from .passes.match_short_conv import match_conv_regions
from .passes.region import Region
from .passes.rewrite import rewrite_regions
from .passes.time_axis import Analysis, TimeAxis, classify, data_dependent
from .passes.verify import rel_err, tolerance, verify_regions

__all__ = ["lower", "Lowered", "ConvRecord", "Refusal", "STAGES", "run_frontend", "Frontend"]

#: the stages of :func:`lower`, in order
STAGES = ("capture", "analyze", "match", "verify", "rewrite", "classify", "check")


@dataclasses.dataclass
class ConvRecord:
    """One matched and verified convolution (what ``explain`` prints).

    ``kind``: "long" | "short" | "scan" (cumsum over time, streamed as a long conv with an
    all-ones filter). ``node``: name of the ``lcsm`` op node in ``Lowered.gm``. ``op``: the
    matched op (``aten._fft_c2r``, ``aten.convolution``, ``aten.cumsum``). ``source``:
    ``file:line`` of the user's code; ``code``: that line. ``u_shape`` / ``k_shape``: shapes in
    the model's layout (symbolic: ``B``, ``L``) and of the canonical filter. ``filter_origin``:
    what the filter is computed from. ``verified``: the probe result.
    """

    kind: str
    node: str
    op: str
    source: Optional[str]
    code: Optional[str]
    u_shape: str
    k_shape: str
    layout: str
    filter_origin: str
    fft_size: Optional[str]
    verified: str
    max_err: Optional[float] = None


@dataclasses.dataclass
class Refusal:
    """Why (part of) a model cannot be streamed: the op, the user's ``file:line``, the reason."""

    op: Optional[str]
    source: Optional[str]
    reason: str
    node: Optional[str] = None
    code: Optional[str] = None

    def error(self):
        from .errors import UnsupportedModelError
        return UnsupportedModelError(self.reason, op=self.op, source=self.source)


@dataclasses.dataclass
class Lowered:
    """The result of :func:`lower` (see the module doc for the contract of ``gm``).

    Fields: ``gm``, ``analysis`` (``analysis[node].cls`` / ``.time_dim``), ``long_convs``,
    ``short_convs``, ``scans`` (:class:`ConvRecord`), ``refusals`` (:class:`Refusal`),
    ``time_symbol`` / ``batch_symbol`` (sympy), ``input_kind`` ("ids" | "cont"), ``time_dim``
    of the input (1), ``out_spec`` (:class:`lcsm_compile.capture.OutSpec`), ``streamable``,
    ``valid_range`` ((lo, hi) lengths the graph is valid for; hi None = any),
    ``mutated_buffers`` (in-place buffer writes dropped from the graph), ``captured_gm`` (the
    graph before the rewrite), ``stage_times`` (seconds per stage), ``example`` (the capture
    input), ``groups`` (left empty here).
    """

    gm: Optional[fx.GraphModule]
    analysis: Optional[Analysis]
    long_convs: List[ConvRecord]
    short_convs: List[ConvRecord]
    refusals: List[Refusal]
    time_symbol: Any
    batch_symbol: Any
    input_kind: str
    out_spec: Optional[OutSpec]
    streamable: bool
    scans: List[ConvRecord] = dataclasses.field(default_factory=list)
    time_dim: int = 1
    valid_range: Tuple[int, Optional[int]] = (1, None)
    mutated_buffers: List[Tuple[str, bool]] = dataclasses.field(default_factory=list)
    captured_gm: Optional[fx.GraphModule] = None
    stage_times: Dict[str, float] = dataclasses.field(default_factory=dict)
    example: Optional[torch.Tensor] = None
    groups: list = dataclasses.field(default_factory=list)

    def __call__(self, x: torch.Tensor) -> Any:
        """Run ``gm`` on ``x`` and rebuild the model's output structure."""
        outs = self.gm(x.contiguous())
        return self.out_spec.unflatten(list(outs))


# ----------------------------------------------------------------------------- helpers
def _fmt_shape(node: fx.Node, ta: TimeAxis) -> str:
    s = size_exprs(node)
    if s is None:
        return "?"
    rep = {}
    if isinstance(ta.symbol, sympy.Symbol):
        rep[ta.symbol] = sympy.Symbol("L")
    if isinstance(ta.batch, sympy.Symbol):
        rep[ta.batch] = sympy.Symbol("B")
    return "[" + ", ".join(str(ta.normalize(e).xreplace(rep)) for e in s) + "]"


def _fmt_expr(e, ta: TimeAxis) -> Optional[str]:
    if e is None:
        return None
    try:
        return str(ta.normalize(e).xreplace({ta.symbol: sympy.Symbol("L")})) if isinstance(ta.symbol, sympy.Symbol) else str(e)
    except Exception:  # noqa: BLE001
        return str(e)


def _filter_origin(r: Region, data_dep: set) -> str:
    if r.k_origin:
        return r.k_origin
    if r.kind == "short":
        w = r.weight
        return "conv weight " + (w.meta.get("lcsm_origin") or w.name) + \
            (" + bias" if r.bias is not None else "")
    inside = set(r.nodes) | {r.u}
    seen, stack, params, n_ops, sources = set(), [], [], 0, set()
    for m in r.nodes:
        stack.extend(a for a in m.all_input_nodes if a not in inside)
    while stack:
        m = stack.pop()
        if m in seen or m.name in data_dep:
            continue
        seen.add(m)
        if m.op == "get_attr":
            params.append(m.meta.get("lcsm_origin", m.target))
        elif m.op == "call_function":
            if isinstance(val(m), torch.Tensor):
                n_ops += 1
            if m.target in (torch.ops.aten.arange.start_step, torch.ops.aten.arange.default,
                            torch.ops.aten.arange.start):
                sources.add("arange")
            if m.target == torch.ops.aten.linspace.default:
                sources.add("linspace")
            if val(m) is not None and isinstance(val(m), torch.Tensor) and val(m).is_complex():
                sources.add("complex")
            stack.extend(m.all_input_nodes)
    params = sorted(set(params))
    ps = ", ".join(params[:4]) + (f" (+{len(params) - 4})" if len(params) > 4 else "")
    if n_ops > 6 or (sources - {"complex"} and n_ops > 3):
        kind = "implicit" + (" (complex)" if "complex" in sources else "")
        over = f" over {'/'.join(sorted(sources - {'complex'}))}" if sources - {"complex"} else ""
        return f"{kind}: generated by {n_ops} ops{over} from {ps or 'constants'}"
    return f"explicit: {ps or 'constants'} ({n_ops} ops)"


def _layout(r: Region) -> str:
    nd = val(r.u).dim()
    if r.u_tdim == nd - 1:
        return "channel-first (time last)"
    if r.u_tdim == 1:
        return "channel-last (time dim 1)"
    return f"time dim {r.u_tdim} of {nd}"


def _region_nodes_reason(regions: Sequence[Region]) -> Dict[str, str]:
    out = {}
    for r in regions:
        if r.problem is None:
            continue
        reason = r.problem
        if "causal" not in reason and "circular" not in reason:
            reason = "non-causal or unsupported convolution region: " + reason
        for m in [r.anchor] + list(r.nodes):
            out[m.name] = reason
    return out


@dataclasses.dataclass
class Frontend:
    """Result of :func:`run_frontend` (shared by ``lower`` and the backend)."""

    gm: fx.GraphModule
    analysis: Analysis
    regions: List[Region]
    refusals: List[Refusal]
    records: List[ConvRecord]
    ta: TimeAxis
    stage_times: Dict[str, float]


def _dump(debug_dir: Optional[str], stage: str, gm: Optional[fx.GraphModule], extra: str = "") -> None:
    if not debug_dir or gm is None:
        return
    os.makedirs(debug_dir, exist_ok=True)
    idx = STAGES.index(stage) if stage in STAGES else 9
    with open(os.path.join(debug_dir, f"{idx:02d}_{stage}.txt"), "w") as f:
        f.write(gm.print_readable(print_output=False) if hasattr(gm, "print_readable") else str(gm.graph))
        if extra:
            f.write("\n\n" + extra)


def run_frontend(cap: Captured, make_args: Callable[[int], List[Any]],
                 probe_lengths: Sequence[int], debug_dir: Optional[str] = None) -> Frontend:
    """analyze -> match -> verify -> rewrite -> classify on a :class:`Captured` graph.

    ``make_args(L)`` returns real arguments of ``cap.gm`` at length ``L`` (the probes).
    """
    times: Dict[str, float] = {}
    t0 = time.perf_counter()
    gm = cap.gm
    ta = TimeAxis(cap.time_symbol, cap.batch_symbol)
    data_names = [p.name for p in cap.data_inputs]
    dep = data_dependent(gm, data_names)
    times["analyze"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    regions = match_long_convs(gm, ta, dep) + match_conv_regions(gm, ta, dep) + match_scans(gm, ta, dep)
    times["match"] = time.perf_counter() - t0
    _dump(debug_dir, "match", gm, "\n".join(
        f"{r.kind} region at {r.anchor.name}: u={getattr(r.u, 'name', None)} y={getattr(r.y, 'name', None)} "
        f"nodes={[m.name for m in r.nodes]} problem={r.problem}" for r in regions))

    t0 = time.perf_counter()
    regions = verify_regions(gm, regions, ta, make_args, probe_lengths)
    times["verify"] = time.perf_counter() - t0
    _dump(debug_dir, "verify", gm, "\n".join(
        f"{r.kind} {r.anchor.name}: {r.verified or r.problem}" for r in regions))

    t0 = time.perf_counter()
    data0 = cap.data_inputs[0].name
    tdim = cap.time_dims[data0]
    new = rewrite_regions(gm, regions, ta, data0, tdim, cap.fake_mode)
    times["rewrite"] = time.perf_counter() - t0
    _dump(debug_dir, "rewrite", new)

    t0 = time.perf_counter()
    analysis = classify(new, ta, data_names, _region_nodes_reason(regions))
    times["classify"] = time.perf_counter() - t0
    _dump(debug_dir, "classify", new, "\n".join(
        f"{k}: {v.cls.value} time_dim={v.time_dim}" + (f" reason={v.reason}" if v.reason else "")
        for k, v in analysis.info.items()))

    # records
    records: List[ConvRecord] = []
    by_region = {n.meta.get("lcsm_region"): n for n in new.graph.nodes if "lcsm_region" in n.meta}
    for r in regions:
        if r.problem is not None:
            continue
        node = by_region.get(r.anchor.name)
        kind = "scan" if r.k_origin.startswith("scan") else r.kind
        kshape = "?"
        if node is not None:
            kshape = _fmt_shape(node.args[1], ta)
        records.append(ConvRecord(
            kind=kind, node=node.name if node is not None else "?", op=op_name(r.anchor),
            source=user_source(r.anchor), code=user_code(r.anchor), u_shape=_fmt_shape(r.u, ta),
            k_shape=kshape, layout=_layout(r),
            filter_origin=_filter_origin(r, dep), fft_size=_fmt_expr(r.fft_size, ta) if r.kind == "long" and r.fft_size is not None else None,
            verified=r.verified or "", max_err=r.max_err))
    refusals: List[Refusal] = []
    seen = set()
    by_name = {n.name: n for n in new.graph.nodes}
    for name, info in analysis.unsupported().items():
        n = by_name[name]
        key = (info.reason, user_source(n))
        if key in seen:
            continue
        seen.add(key)
        refusals.append(Refusal(op_name(n), user_source(n), info.reason, name, user_code(n)))
    return Frontend(new, analysis, regions, refusals, records, ta, times)


# ----------------------------------------------------------------------------- lower
def _probe_input(example: torch.Tensor, L: int, seed: int, kind: str, time_dim: int = 1) -> torch.Tensor:
    """A probe input of length ``L``: random ids drawn from the example's ids, or randn."""
    g = torch.Generator().manual_seed(seed)
    shape = list(example.shape)
    shape[time_dim] = L
    if kind == "ids":
        flat = example.reshape(-1)
        idx = torch.randint(0, flat.numel(), shape, generator=g)
        return flat[idx].to(example.device)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(example.dtype).to(example.device)


def _outputs_time_dims(gm: fx.GraphModule, analysis: Analysis) -> List[Optional[int]]:
    out = next(iter(gm.graph.find_nodes(op="output")))
    res = []
    for a in out.args[0]:
        res.append(analysis[a].time_dim if isinstance(a, fx.Node) and a.name in analysis.info else None)
    return res


def _global_checks(low: "Lowered", original: fx.GraphModule, example: torch.Tensor,
                   probe_lengths: Sequence[int]) -> List[Refusal]:
    """End-to-end checks of the rewritten graph: equal to the captured graph at the probe
    lengths, and (for a model with no other refusal) causal and prefix consistent."""
    refs: List[Refusal] = []
    gm = low.gm
    for L in probe_lengths:
        x = _probe_input(example, L, 17 + L, low.input_kind)
        try:
            with torch.no_grad():
                a, b = gm(x), original(x)
        except Exception as e:  # noqa: BLE001 - a failing graph is a refusal, not a crash
            return [Refusal("check", None, f"the rewritten graph fails at L={L}: "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")]
        for ya, yb in zip(a, b):
            if isinstance(ya, torch.Tensor) and ya.is_floating_point() and \
                    rel_err(ya, yb) > 10 * tolerance(ya.dtype):
                refs.append(Refusal("check", None, f"the rewritten graph differs from the captured "
                                    f"graph at L={L} (rel err {rel_err(ya, yb):.1e})"))
                return refs
    if low.refusals:
        return refs
    tds = _outputs_time_dims(gm, low.analysis)
    L2 = max(probe_lengths) + 3
    L1 = L2 // 2 + 1
    x2 = _probe_input(example, L2, 99, low.input_kind)
    x1 = x2[:, :L1].contiguous()
    x3 = x2.clone()
    x3[:, -1] = _probe_input(example, 1, 7, low.input_kind)[:, 0]
    try:
        with torch.no_grad():
            y2, y1, y3 = gm(x2), gm(x1), gm(x3)
    except Exception as e:  # noqa: BLE001
        return [Refusal("check", None, f"the rewritten graph fails in the causality probe: "
                        f"{type(e).__name__}")]
    for i, (a, b, c) in enumerate(zip(y2, y1, y3)):
        td = tds[i] if i < len(tds) else None
        if not isinstance(a, torch.Tensor) or td is None or not a.is_floating_point():
            continue
        tol = 10 * tolerance(a.dtype)
        if rel_err(a.narrow(td, 0, a.shape[td] - 1), c.narrow(td, 0, a.shape[td] - 1)) > tol:
            refs.append(Refusal("check", None, "non-causal: changing the last input position "
                                "changes earlier outputs (global probe)"))
            break
        if rel_err(b, a.narrow(td, 0, L1)) > tol:
            refs.append(_prefix_culprit(low, x2, L1) or Refusal(
                "check", None, "not prefix consistent: the outputs for the first positions "
                "change when the sequence grows (something depends on the total length L)"))
            break
    return refs


def _prefix_culprit(low: "Lowered", x2: torch.Tensor, L1: int) -> Optional[Refusal]:
    """The long conv whose filter is not prefix consistent (``k(L2)[:, :L1] != k(L1)``)."""
    from .passes.common import ProbeInterpreter
    convs = [n for n in low.gm.graph.nodes if n.target == torch.ops.lcsm.long_conv.default]
    if not convs:
        return None
    ks = [n.args[1] for n in convs]
    vals = []
    for x in (x2, x2[:, :L1].contiguous()):
        it = ProbeInterpreter(low.gm, {}, ks)
        with torch.no_grad():
            it.run(x)
        vals.append(it.recorded)
    for n, k in zip(convs, ks):
        a, b = vals[0][k][..., :L1], vals[1][k]
        if rel_err(a, b) > 10 * tolerance(b.dtype):
            rec = next((r for r in low.long_convs + low.scans if r.node == n.name), None)
            return Refusal("lcsm.long_conv", rec.source if rec else user_source(n),
                           "not prefix consistent: the filter of this long convolution depends on "
                           "the total length L (k computed at length L2, cut to L1, differs from k "
                           "computed at L1), so outputs change when the sequence grows",
                           n.name, rec.code if rec else None)
    return None


def _matches_model(model: Any, cap: Captured, lengths: Sequence[int]) -> bool:
    """Whether the captured graph equals the (eager, deep-copied) model at ``lengths``."""
    import copy

    from .capture import flatten_output, unwrap_model
    from .passes.common import probe_threads
    mod = unwrap_model(model)
    xc = cap.example_args[0]
    try:
        with torch.no_grad(), probe_threads():
            for L in lengths:
                x = _probe_input(xc, L, 7 + L, cap.input_kind)
                ref = [t for t in flatten_output(copy.deepcopy(mod)(x))[0] if isinstance(t, torch.Tensor)]
                got = list(cap.gm(x))
                if len(ref) != len(got) or any(
                        a.shape != b.shape or (b.is_floating_point() and rel_err(a, b) > 10 * tolerance(b.dtype))
                        for a, b in zip(got, ref)):
                    return False
    except Exception:  # noqa: BLE001
        return False
    return True


def lower(model_or_compiled: Any, example: torch.Tensor, *, debug_dir: Optional[str] = None,
          probe_lengths: Sequence[int] = (5, 12), check: bool = True, **options: Any) -> Lowered:
    """Lower a model to the streaming-ready graph (see the module doc for the contract).

    Options: ``debug_dir`` writes each stage's graph as text; ``probe_lengths`` the lengths of
    the verification probes; ``check`` runs the end-to-end checks; ``max_len``: the longest
    length the caller needs - when the first graph only holds for shorter inputs (a buffer
    cached on the module at a shorter length and regrown in forward), the model is captured
    again past that length and that graph is used if it holds up to ``max_len`` and equals the
    model at the probe lengths. Other options (``kernels`` ...) are accepted and ignored.
    """
    times: Dict[str, float] = {}
    t0 = time.perf_counter()
    cap = capture_model(model_or_compiled, example)
    max_len = options.get("max_len")
    hi = cap.valid_range[1] if cap.gm is not None else None
    if max_len is not None and hi is not None and int(max_len) > hi:
        # the graph holds for L <= hi only (e.g. a buffer cached at length hi and regrown in
        # forward for longer inputs): capture again past hi and keep that graph if it is valid
        # up to max_len and equals the model at the probe lengths
        alt = capture_model(model_or_compiled, example, lengths=(hi + 1, hi + 3))
        if alt.gm is not None and alt.error is None and \
                (alt.valid_range[1] is None or alt.valid_range[1] >= int(max_len)) and \
                _matches_model(model_or_compiled, alt, tuple(probe_lengths) + (hi + 1,)):
            cap = alt
    times["capture"] = time.perf_counter() - t0
    _dump(debug_dir, "capture", cap.gm)
    kind = cap.input_kind
    if cap.gm is None:
        reason, op, src = cap.error
        return Lowered(None, None, [], [], [Refusal(op, src, reason)], None, None, kind, None,
                       False, stage_times=times, example=example)
    xc = cap.example_args[0]

    def make_args(L):
        return [_probe_input(xc, L, 1000 + L, kind)]

    fe = run_frontend(cap, make_args, probe_lengths, debug_dir)
    times.update(fe.stage_times)
    refusals = list(fe.refusals)
    if cap.error is not None:
        refusals.insert(0, Refusal(cap.error[1], cap.error[2], cap.error[0]))
    for name, dep in cap.mutated_buffers:
        if dep:
            refusals.append(Refusal("copy_", None, f"the forward writes input-dependent state into "
                                    f"buffer {name}: the model is not a function of its input"))
    low = Lowered(fe.gm, fe.analysis,
                  [r for r in fe.records if r.kind == "long"],
                  [r for r in fe.records if r.kind == "short"],
                  refusals, cap.time_symbol, cap.batch_symbol, kind, cap.out_spec, False,
                  scans=[r for r in fe.records if r.kind == "scan"], time_dim=1,
                  valid_range=(1, min([b for b in (cap.valid_range[1], fe.ta.max_len) if b is not None], default=None)),
                  mutated_buffers=cap.mutated_buffers,
                  captured_gm=cap.gm, stage_times=times, example=xc)
    if check and cap.symbolic:
        from .passes.common import probe_threads
        t0 = time.perf_counter()
        with probe_threads():
            low.refusals.extend(_global_checks(low, cap.gm, xc, probe_lengths))
        times["check"] = time.perf_counter() - t0
    from .passes.common import to_expr
    if cap.symbolic and not isinstance(to_expr(val(cap.data_inputs[0]).shape[1]), sympy.Symbol):
        low.refusals.append(Refusal("capture", None, "the sequence length was specialized during "
                                    "analysis (internal error); the graph is not length-generic"))
    low.streamable = not low.refusals and cap.symbolic
    _dump(debug_dir, "check", low.gm, "refusals:\n" + "\n".join(str(r) for r in low.refusals))
    return low
