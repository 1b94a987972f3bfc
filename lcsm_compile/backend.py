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
  does not undo the verified rewrites: the report lists it;
* fallback ``eager`` (default) - the captured aten graph as is, op for op the model's own
  computation: exact. Used for graphs with no verified convolution, a capture problem, or a
  failed check; the reason is logged (logger ``lcsm_compile``) and kept in ``.reports``. ``options={"fallback": "inductor"}`` compiles such graphs with Inductor
  instead (exact up to Inductor's float reassociation).

Inference only: every graph is compiled and run under ``torch.no_grad()`` (the outputs do not
require grad, and the ``lcsm`` ops have no backward).
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Callable, Deque, Dict, List, Tuple

import torch
import torch.fx as fx

from . import ops as _ops  # noqa: F401 - registers torch.ops.lcsm
from .capture.helpers import route_contract_in_dynamo
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

        with torch.no_grad():  # inference backend: always the inference graph
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
        if fe.refusals:  # the rest runs as captured: the full forward is exact, streaming is not
            done += "; not streamable: " + reasons
        rep = GraphReport("lcsm", done, n_long, n_short, list(fe.refusals))
        plain = gm.forward
        new = _reuse_filters(new, fe.analysis, real, {i for i, _ in seq})

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


def _reuse_filters(gm: fx.GraphModule, analysis, real: List[Any], seq_idx) -> Callable:
    """The rewritten graph's runner that computes its long-convolution filters once per input
    shape and parameter version (:func:`lcsm_compile.passes.split_filters.split_filters`),
    the last 4 kept; ``gm`` itself when no filter can be kept or the split graph does not give
    identical outputs on the example inputs."""
    from .passes.split_filters import split_filters

    try:
        split = split_filters(gm, analysis)
        if split is None:
            return gm
        with torch.no_grad():
            same = all(torch.equal(a, b) for a, b in zip(split.main(*real, *split.filters(*real)), gm(*real))
                       if isinstance(a, torch.Tensor))
        if not same:
            return gm
    except Exception as e:  # noqa: BLE001 - the plain rewritten graph is as exact
        log.debug("lcsm backend: filters not split: %s", e)
        return gm
    state = [i for i, a in enumerate(real) if isinstance(a, torch.Tensor) and i not in seq_idx]
    data = sorted(seq_idx)
    cache: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()
    filters, main = split.filters, split.main

    def run(*args):
        key = (tuple(tuple(args[i].shape) for i in data), tuple(a for a in args if isinstance(a, int)),
               tuple((id(args[i]), args[i]._version) for i in state))
        ks = cache.get(key)
        if ks is None:
            ks = tuple(filters(*args))
            cache[key] = ks
            while len(cache) > 4:
                cache.popitem(last=False)
        return main(*args, *ks)
    return run


#: the default instance, registered as ``backend="lcsm"`` (entry point)
lcsm_backend = LcsmBackend()
