"""The ``torch.compile`` backend ``"lcsm"``: :class:`LcsmBackend`.

Found by name through the entry point in pyproject.toml
(``[project.entry-points.torch_dynamo_backends] lcsm = "lcsm_compile.backend:lcsm_backend"``),
so ``torch.compile(model, backend="lcsm")`` works after ``pip install`` without importing
``lcsm_compile`` first. (Do not also ``register_backend`` it: that is a duplicate name.)
``lcsm_backend`` is the shared default instance; ``torch.compile(model, backend=LcsmBackend())``
gives a model its own instance, whose ``.reports`` then list only that model's graphs.

What it does with each graph dynamo hands it (a graph break gives several graphs; each is
handled alone):

1. aot_autograd lowers it to a functional aten inference graph (core aten decompositions);
2. the front-end stages (:data:`lcsm_compile.pipeline.FRONTEND`: time-axis analysis, matching,
   probe verification at the graph's own shape, rewrite, classification) replace every
   verified long/short convolution with the ``lcsm`` custom ops (FFT path);
3. the rewritten graph is checked once against the captured graph on the real example inputs
   (:func:`lcsm_compile.passes.check.output_mismatch`).

The compiled forward then runs:

* ``lcsm`` - the rewritten graph (when at least one convolution was verified and rewritten and
  the rewritten graph passed the check): exact, the verified convolutions run through
  ``lcsm::long_conv`` / ``lcsm::short_conv`` and everything else as captured. A refusal that
  only rules out streaming (softmax over time, a circular convolution elsewhere in the graph)
  does not undo the verified rewrites: the report lists it. Its full forward
  (:class:`_FullForward`) computes the long-convolution filters once per length and weights,
  and from its second call runs the rest compiled by Inductor (``options={"inductor": False}``:
  op by op), the long convolutions as extern calls; checked against the op-by-op run once per
  compile, any Inductor failure falls back to the op-by-op run with the reason logged and in
  the report's ``full_forward``;
* fallback ``eager`` (default) - the captured aten graph as is, op for op the model's own
  computation: exact. Used for graphs with no verified convolution, a capture problem, or a
  failed check; the reason is logged (logger ``lcsm_compile``) and kept in ``.reports``. ``options={"fallback": "inductor"}`` compiles such graphs with Inductor
  instead (exact up to Inductor's float reassociation).

Inference only: every graph is compiled and run under ``torch.no_grad()`` (the outputs do not
require grad, and the ``lcsm`` ops have no backward).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import torch
import torch.fx as fx

from . import ops as _ops  # noqa: F401 - registers torch.ops.lcsm
from .capture.helpers import math_attention, route_contract_in_dynamo
from .options import BACKEND_OPTIONS, check_options
from .report import GraphReport

log = logging.getLogger("lcsm_compile")

# plain opt_einsum.contract calls (the SSM kernels of S4/H3 code) traced by dynamo as torch.einsum
route_contract_in_dynamo()

__all__ = ["LcsmBackend", "lcsm_backend", "GraphReport"]


def _is_state(node: fx.Node, ex: Any) -> bool:
    """Whether a dynamo placeholder is module state (parameter/buffer) rather than data."""
    if isinstance(ex, torch.nn.Parameter):
        return True
    ga = node.meta.get("grapharg")
    src = getattr(getattr(ga, "source", None), "name", "") if ga is not None else ""
    src = src() if callable(src) else src
    return ("L['self']" in src or "_buffers" in src or "_parameters" in src or
            src.startswith("G[") or "L['fn']" in src)


def _sequence_inputs(gm: fx.GraphModule, example_inputs: List[Any]) -> List[Tuple[int, int]]:
    """``(input index, time dim)`` of the graph inputs that are sequences.

    Candidates are the inputs that are not module state: float ``[B, ...]`` tensors and integer
    ids ``[B, L]``. The length is the size that the most candidates share at some dim past the
    batch (a symbol in a dynamic graph, a number in a static one; ties go to dim 1 of the first
    candidate): a graph after a graph break may receive ``[B, C, L]`` channel-first values,
    whose time is dim 2. Each candidate with exactly one dim of that size is a sequence input
    with that time dim; the rest are not sequences. A wrong guess only costs the rewrite: the
    probes and the check then fail and the graph runs exactly as captured."""
    phs = list(gm.graph.find_nodes(op="placeholder"))
    cands = []
    for i, (p, ex) in enumerate(zip(phs, example_inputs)):
        if not isinstance(ex, torch.Tensor) or _is_state(p, ex) or ex.dim() < 2 or ex.is_complex():
            continue
        if not ex.is_floating_point() and ex.dim() != 2:
            continue
        fv = p.meta.get("example_value")
        shape = list(fv.shape) if isinstance(fv, torch.Tensor) and fv.dim() == ex.dim() else list(ex.shape)
        keys = [(s.node.expr if isinstance(s, torch.SymInt) else int(s)) for s in shape]
        cands.append((i, keys, list(ex.shape)))
    if not cands:
        return []
    counts: Dict[Any, int] = {}
    for _, keys, real in cands:
        for k in set(k for k, n in zip(keys[1:], real[1:]) if n >= 2):
            counts[k] = counts.get(k, 0) + 1
    if not counts:
        return []
    best = max(counts.values())
    first_dim1 = cands[0][1][1]
    length = first_dim1 if counts.get(first_dim1) == best else \
        next(k for _, keys, _ in cands for k in keys[1:] if counts.get(k) == best)
    out = []
    for i, keys, _ in cands:
        dims = [d for d in range(1, len(keys)) if keys[d] == length]
        if len(dims) == 1:
            out.append((i, dims[0]))
    return out


class LcsmBackend:
    """The ``torch.compile`` backend (module doc). Callable as ``backend(gm, example_inputs,
    options=...)``; ``reports`` holds one :class:`GraphReport` per compiled graph, most recent
    last, the last ``max_reports`` of them."""

    def __init__(self, max_reports: int = 256):
        self.reports: Deque[GraphReport] = collections.deque(maxlen=max_reports)

    def _report(self, rep: GraphReport, verbose: bool) -> None:
        self.reports.append(rep)
        msg = f"lcsm backend: graph runs as {rep.mode}: {rep.reason}" + (f"; {rep.streaming}" if rep.streaming else "")
        if rep.mode != "lcsm" and rep.refusals:
            log.warning(msg)
        elif verbose or rep.refusals:
            log.info(msg)
        else:
            log.debug(msg)

    def __call__(self, gm: fx.GraphModule, example_inputs: List[Any], **kwargs: Any) -> Callable:
        from torch._decomp import core_aten_decompositions
        from torch._dynamo.backends.common import aot_autograd

        options = dict(kwargs.get("options") or {})
        check_options(options, BACKEND_OPTIONS, 'torch.compile(backend="lcsm")')
        options.setdefault("inductor", BACKEND_OPTIONS["inductor"])
        if not isinstance(options["inductor"], bool):
            raise TypeError(f'torch.compile(backend="lcsm"): option inductor must be True or False, '
                            f'got {options["inductor"]!r}')
        fallback = options.get("fallback", "eager")
        verbose = bool(options.get("verbose", False))
        # inference only: grad-mode switches inside the graph (``with torch.no_grad():`` blocks in
        # forward) are dropped, everything runs under no_grad
        for n in list(gm.graph.nodes):
            if n.op == "call_function" and n.target is torch._C._set_grad_enabled:
                gm.graph.erase_node(n)
        gm.recompile()
        state = {"fallback": False}
        seq = _sequence_inputs(gm, list(example_inputs))

        def inference_compiler(g: fx.GraphModule, fake_args: List[Any]):
            from torch._subclasses.fake_tensor import unset_fake_temporarily
            with unset_fake_temporarily():  # probes and checks run on real tensors
                run = self._compile_graph(g, fake_args, list(example_inputs), seq, options, verbose)
            state["fallback"] = run is None
            return g.forward if run is None else run

        def training_compiler(g, fake_args):
            self._report(GraphReport(fallback, "autograd graph (training): run as is"), False)
            state["fallback"] = True
            return g.forward

        with torch.no_grad(), math_attention():  # inference graph; SDPA as its math (capture.helpers)
            compiled = aot_autograd(fw_compiler=training_compiler, inference_compiler=inference_compiler,
                                    decompositions=core_aten_decompositions())(gm, example_inputs)
            if fallback == "inductor" and state["fallback"]:
                from torch._inductor.compile_fx import compile_fx
                compiled = compile_fx(gm, example_inputs)

        def forward(*args):
            with torch.no_grad():
                return compiled(*args)
        return forward

    def _compile_graph(self, gm: fx.GraphModule, fake_args: List[Any], real: List[Any], seq: List[Tuple[int, int]],
                       options: Dict[str, Any], verbose: bool):
        """The rewritten graph's runner for one aten graph, or None for the exact fallback."""
        from .capture import capture_aten_graph
        from .passes.check import output_mismatch
        from .passes.common import probe_threads
        from .pipeline import FRONTEND, frontend_state, max_length, run_stages

        fallback = options.get("fallback", "eager")
        n_ph = len(list(gm.graph.find_nodes(op="placeholder")))
        if not seq or n_ph != len(real):
            self._report(GraphReport(fallback, "no sequence input in this graph"), verbose)
            return None
        try:
            cap = capture_aten_graph(gm, fake_args, real, [i for i, _ in seq], [d for _, d in seq])
            if cap.capture_len < 2:
                raise RuntimeError("length < 2")
            fe = run_stages(frontend_state(cap, lambda L: list(real), (cap.capture_len,)), FRONTEND,
                            debug_dir=options.get("debug_dir"))
        except Exception as e:  # noqa: BLE001 - anything unexpected: exact fallback
            self._report(GraphReport(fallback, f"front end failed ({type(e).__name__}: {e})"), verbose)
            return None
        n_long = sum(r.kind in ("long", "scan") for r in fe.records)
        n_short = sum(r.kind == "short" for r in fe.records)
        reasons = "; ".join(f"{r.op} at {r.source}: {r.reason}" for r in fe.refusals[:3])
        if not fe.records:
            why = ("refused: " + reasons) if fe.refusals else "no convolution in this graph"
            self._report(GraphReport(fallback, why, n_long, n_short, list(fe.refusals)), verbose)
            return None
        new = fe.gm
        try:  # check the rewritten graph once on the real inputs
            with torch.no_grad(), probe_threads():
                why = output_mismatch(list(new(*real)), list(gm(*real)))
            if why is not None:
                raise RuntimeError(f"rewritten graph: {why}")
        except Exception as e:  # noqa: BLE001
            self._report(GraphReport(fallback, f"check failed: {e}"), verbose)
            return None
        bound = max_length(fe) if cap.symbolic else None
        d0, tdim = seq[0]
        done = f"{n_long} long and {n_short} short convolutions rewritten"
        n_attn = sum(r.kind == "attention" for r in fe.records)
        if n_attn:
            done += f", {n_attn} causal attention layer(s) (lcsm::causal_attention)"
        if fe.refusals:  # the rest runs as captured: the full forward is exact, streaming is not
            done += "; not streamable: " + reasons
        rep = GraphReport("lcsm", done, n_long, n_short, list(fe.refusals))
        plain = gm.forward
        new = _FullForward(new, fe.analysis, real, {i for i, _ in seq}, options["inductor"], rep)

        def run(*args):
            if bound is not None and args[d0].shape[tdim] > bound:
                return plain(*args)  # the match assumed L <= bound (min(L, c) in the model)
            return new(*args)

        runner = run
        if not options.get("stream", True):
            rep.streaming = "calls do not stream: options={'stream': False}"
        elif fe.refusals:
            rep.streaming = "calls do not stream: " + reasons
        else:
            from .incremental import IncrementalRunner, stream_plan
            slots, why = stream_plan(fake_args, real, seq)
            if slots is None:
                rep.streaming = "calls do not stream: " + why
            else:
                rep.streaming = ("calls stream: a call whose input extends the previous call's input runs "
                                 "only the new positions")
                runner = IncrementalRunner(run, gm, real, d0, slots, options, rep)
        self._report(rep, verbose)
        return runner


#: the full forward of a graph is compiled by Inductor on its ``COMPILE_AFTER``-th call (a graph
#: called once, e.g. dynamo's first graph for the first length of a loop, never pays the compile)
COMPILE_AFTER = 2


def _no_duck_sizing():
    """A context in which dynamo gives equal sizes separate symbols (``use_duck_shape=False``;
    a no-op where this torch has no such setting)."""
    try:
        import torch.fx.experimental._config as fx_config
        return fx_config.patch(use_duck_shape=False)
    except (ImportError, AttributeError, TypeError):
        return contextlib.nullcontext()


def _inductor_compile(gm: fx.GraphModule, example_inputs: List[Any]) -> Callable:
    """The dynamo backend of the full forward's Inductor compile (a function, so tests can make
    it fail)."""
    from torch._inductor.compile_fx import compile_fx
    return compile_fx(gm, example_inputs)


class _FullForward:
    """The full forward of a rewritten graph (``gm``: ``lcsm`` ops in place of the verified
    convolutions):

    * its long-convolution filters are computed once per input shape and parameter version
      (:func:`lcsm_compile.passes.split_filters.split_filters`; the last 4 kept) when the split
      graph gives identical outputs on the example inputs;
    * with ``inductor`` on, the per-call graph (the graph once the filters are split off) is
      compiled by Inductor (``torch.compile(..., dynamic=True)``: the length is symbolic, one
      compile serves every length; the long convolutions stay extern calls,
      ``lcsm::long_conv``; the short ones become shifted multiply-adds that Inductor fuses,
      :func:`_short_conv_pointwise`), on its :data:`COMPILE_AFTER`-th call (a graph called once
      never pays the compile). Inductor's C++ kernels use the intra-op thread count set when
      they compile (``torch.get_num_threads()``). Every new Inductor compile is checked once
      against the op-by-op run on that call's inputs (:func:`~lcsm_compile.passes.check.output_mismatch`,
      as the rewritten graph was against the captured one); a compile error, a runtime error or
      a mismatch logs a WARNING with the reason, records it in the report's ``full_forward`` and
      the graph runs op by op from then on: never an error that the op-by-op run would not give.
    """

    def __init__(self, gm: fx.GraphModule, analysis, real: List[Any], seq_idx, inductor: bool,
                 report: GraphReport):
        self.report = report
        self.main: Callable = gm
        self.filters: Optional[Callable] = None
        split = _split(gm, analysis, real)
        if split is not None:
            self.filters, self.main = split.filters, split.main
        self._state = [i for i, a in enumerate(real) if isinstance(a, torch.Tensor) and i not in seq_idx]
        self._data = sorted(seq_idx)
        self._cache: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()
        self.inductor = bool(inductor)
        self.compiled: Optional[Callable] = None
        self.calls = 0
        self._filters_note = "filters kept per length and weights; " if split is not None else ""
        report.full_forward = self._filters_note + (
            f"compiled by Inductor on its call {COMPILE_AFTER}" if self.inductor
            else "op by op: options={'inductor': False}")

    def _ks(self, args) -> tuple:
        if self.filters is None:
            return ()
        key = (tuple(tuple(args[i].shape) for i in self._data), tuple(a for a in args if isinstance(a, int)),
               tuple((id(args[i]), args[i]._version, args[i].data_ptr()) for i in self._state))
        ks = self._cache.get(key)
        if ks is None:
            ks = tuple(self.filters(*args))
            self._cache[key] = ks
            while len(self._cache) > 4:
                self._cache.popitem(last=False)
        return ks

    def _backend(self, gm: fx.GraphModule, example_inputs: List[Any]) -> Callable:
        self.report.inductor_compiles += 1
        return _inductor_compile(gm, example_inputs)

    def _give_up(self, why: str) -> None:
        self.inductor, self.compiled = False, None
        self.report.full_forward = f"{self._filters_note}op by op: Inductor failed ({why})"
        log.warning("lcsm backend: the full forward runs op by op: Inductor failed (%s)", why)

    def _inductor_call(self, args, ks):
        """The Inductor-compiled per-call graph's outputs, or None (then it runs op by op)."""
        rep = self.report
        try:
            if self.compiled is None:
                self.compiled = torch.compile(_fresh_module(self.main), backend=self._backend, dynamic=True)
            n0, t0 = rep.inductor_compiles, time.perf_counter()
            # no duck sizing: sizes that happen to be equal at the compile's length (a filter's
            # stride and the channel count) must not become a guard that recompiles at the next
            with _no_duck_sizing():
                out = self.compiled(*args, *ks)
            if rep.inductor_compiles == 0:
                raise RuntimeError("dynamo compiled no graph of it")
            if rep.inductor_compiles != n0:  # a new compile: checked once against the op-by-op run
                from .passes.check import output_mismatch
                why = output_mismatch(list(out), list(self.main(*args, *ks)))
                if why is not None:
                    raise RuntimeError(f"its output differs from the op-by-op run: {why}")
                rep.inductor_compile_s += time.perf_counter() - t0
                rep.full_forward = (self._filters_note
                                    + "compiled by Inductor (the lcsm long convolutions as extern calls)")
            return out
        except Exception as e:  # noqa: BLE001 - the op-by-op run is as exact
            log.debug("lcsm backend: Inductor compile of the full forward failed", exc_info=True)
            e = getattr(e, "inner_exception", None) or e  # dynamo's BackendCompilerFailed: the cause
            msg = str(e).strip()
            self._give_up(f"{type(e).__name__}: {msg.splitlines()[0] if msg else ''}")
            return None

    def __call__(self, *args):
        ks = self._ks(args)
        if self.inductor:
            self.calls += 1
            if self.calls >= COMPILE_AFTER:
                out = self._inductor_call(args, ks)
                if out is not None:
                    return out
        return self.main(*args, *ks)


def _short_conv_pointwise(u: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``lcsm::short_conv`` (causal depthwise, ``w [C, K]``) as K shifted multiply-adds, which
    Inductor fuses with the ops around it into one loop (the op itself pads a copy of its input
    and runs a depthwise convolution: a quarter of the full forward of a 4 x 256 Hyena LM at
    L = 4096, measured). The same sum in another order: Inductor's output is checked against the
    op-by-op run (:class:`_FullForward`)."""
    K = w.shape[-1]
    L = u.shape[-1]
    w = w.to(u.dtype).unsqueeze(-1)                      # [C, K, 1]
    up = torch.nn.functional.pad(u, (K - 1, 0))
    y = up[..., 0:L] * w[:, 0]
    for i in range(1, K):
        y = y + up[..., i:i + L] * w[:, i]
    if bias is not None:
        y = y + bias.to(u.dtype).unsqueeze(-1)
    return y


def _fresh_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` for Inductor: same tensors, a copy of its graph in which
    ``lcsm::long_conv`` stays the extern call and ``lcsm::short_conv`` is
    :func:`_short_conv_pointwise`. Made at run time: dynamo does not trace the code of a
    GraphModule generated while the backend compiled (its frames are skipped)."""
    from .passes.common import SHORT_CONV

    g = fx.Graph()
    g.output(g.graph_copy(gm.graph, {}))
    for n in g.nodes:  # lcsm::long_conv stays an extern call (its fake gives its contiguous layout)
        if n.op == "call_function" and n.target == SHORT_CONV:
            n.target = _short_conv_pointwise
    return fx.GraphModule(gm, g)


def _split(gm: fx.GraphModule, analysis, real: List[Any]):
    """:func:`~lcsm_compile.passes.split_filters.split_filters` of ``gm``, or None when no filter
    can be kept or the split graph does not give identical outputs on the example inputs."""
    from .passes.split_filters import split_filters

    try:
        split = split_filters(gm, analysis)
        if split is None:
            return None
        with torch.no_grad():
            same = all(torch.equal(a, b) for a, b in zip(split.main(*real, *split.filters(*real)), gm(*real))
                       if isinstance(a, torch.Tensor))
        return split if same else None
    except Exception as e:  # noqa: BLE001 - the plain rewritten graph is as exact
        log.debug("lcsm backend: filters not split: %s", e)
        return None


#: the default instance, registered as ``backend="lcsm"`` (entry point)
lcsm_backend = LcsmBackend()
