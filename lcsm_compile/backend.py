"""The ``torch.compile`` backend ``"lcsm"``.

Found by name through the entry point in pyproject.toml
(``[project.entry-points.torch_dynamo_backends] lcsm = "lcsm_compile.backend:lcsm_backend"``),
so ``torch.compile(model, backend="lcsm")`` works after ``pip install`` without importing
``lcsm_compile`` first. (Do not also ``register_backend`` it: that is a duplicate name.)

What it does with each graph dynamo hands it (a graph break gives several graphs; each is
handled alone):

1. aot_autograd lowers it to a functional aten inference graph (core aten decompositions);
2. the front end (:func:`lcsm_compile.pipeline.run_frontend`: time-axis analysis, matching,
   probe verification at the graph's own shape, rewrite) replaces every verified long/short
   convolution with the ``lcsm`` custom ops (FFT path);
3. the rewritten graph is checked once against the captured graph on the real example inputs.

The compiled forward then runs:

* ``lcsm`` - the rewritten graph (when the graph was rewritten, checked, and nothing in it was
  refused): exact, the convolutions run through ``lcsm::long_conv`` / ``lcsm::short_conv``;
* fallback ``eager`` (default) - the captured aten graph as is, op for op the model's own
  computation: exact. Used for graphs with a refusal (non-causal op, unsupported op, capture
  problem) or whose check failed; the reason is logged (logger ``lcsm_compile``) and kept in
  :data:`REPORTS`. ``options={"fallback": "inductor"}`` compiles such graphs with Inductor
  instead (exact up to Inductor's float reassociation).

Inference only: every graph is compiled and run under ``torch.no_grad()`` (the outputs do not
require grad, and the ``lcsm`` ops have no backward).
Options (``torch.compile(..., options={...})``): ``fallback`` ("eager" | "inductor"),
``verbose`` (log every graph's decision), ``debug_dir``; other lcsm options are accepted.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Dict, List

import torch
import torch.fx as fx

from . import ops as _ops  # noqa: F401 - registers torch.ops.lcsm

log = logging.getLogger("lcsm_compile")

__all__ = ["lcsm_backend", "GraphReport", "REPORTS"]


@dataclasses.dataclass
class GraphReport:
    """What the backend did with one graph: ``mode`` ("lcsm" | "eager" | "inductor"), why, and
    the convolutions it rewrote."""

    mode: str
    reason: str
    long_convs: int = 0
    short_convs: int = 0
    refusals: list = dataclasses.field(default_factory=list)


#: one report per compiled graph, most recent last (bounded)
REPORTS: List[GraphReport] = []


def _report(rep: GraphReport, verbose: bool) -> None:
    REPORTS.append(rep)
    del REPORTS[:-64]
    msg = f"lcsm backend: graph runs as {rep.mode}: {rep.reason}"
    if rep.mode != "lcsm" and rep.refusals:
        log.warning(msg)
    elif verbose:
        log.info(msg)
    else:
        log.debug(msg)


def _is_state(node: fx.Node, ex: Any) -> bool:
    """Whether a dynamo placeholder is module state (parameter/buffer) rather than data."""
    if isinstance(ex, torch.nn.Parameter):
        return True
    ga = node.meta.get("grapharg")
    src = getattr(getattr(ga, "source", None), "name", "") if ga is not None else ""
    src = src() if callable(src) else src
    return ("L['self']" in src or "_buffers" in src or "_parameters" in src or
            src.startswith("G[") or "L['fn']" in src)


def _data_indices(gm: fx.GraphModule, example_inputs: List[Any]) -> List[int]:
    """The graph inputs taken as sequences (time on dim 1): tensors that are not module state,
    float ``[B, L, ...]`` or integer ids ``[B, L]``."""
    phs = list(gm.graph.find_nodes(op="placeholder"))
    out = []
    for i, (p, ex) in enumerate(zip(phs, example_inputs)):
        if not isinstance(ex, torch.Tensor) or _is_state(p, ex) or ex.dim() < 2 or ex.shape[1] < 2:
            continue
        if ex.is_floating_point() or (ex.dim() == 2 and not ex.is_complex()):  # [B, L, ...] or ids
            out.append(i)
    return out


def _fallback(gm: fx.GraphModule, fake_args, mode: str, state: Dict[str, Any]) -> Callable:
    """The exact fallback: the captured aten graph as is. For ``fallback="inductor"`` the
    caller then compiles the dynamo graph with Inductor instead (``state["fallback"]``)."""
    state["fallback"] = True
    return gm.forward


def _make_inference_compiler(dyn_gm: fx.GraphModule, example_inputs: List[Any],
                             options: Dict[str, Any], state: Dict[str, Any]):
    from .capture import capture_aten_graph
    from .pipeline import run_frontend
    from .passes.verify import rel_err, tolerance

    fallback = options.get("fallback", "eager")
    verbose = bool(options.get("verbose", False))
    data_idx = _data_indices(dyn_gm, example_inputs)

    def compiler(gm: fx.GraphModule, fake_args: List[Any]):
        from torch._subclasses.fake_tensor import unset_fake_temporarily
        with unset_fake_temporarily():  # probes and checks run on real tensors
            return _compile(gm, fake_args)

    def _compile(gm: fx.GraphModule, fake_args: List[Any]):
        n_ph = len(list(gm.graph.find_nodes(op="placeholder")))
        if not data_idx or n_ph != len(example_inputs):
            _report(GraphReport(fallback, "no sequence input in this graph"), verbose)
            return _fallback(gm, fake_args, fallback, state)
        real = list(example_inputs)
        try:
            cap = capture_aten_graph(gm, fake_args, real, data_idx)
            if cap.capture_len < 2:
                raise RuntimeError("length < 2")
            fe = run_frontend(cap, lambda L: list(real), (cap.capture_len,),
                              options.get("debug_dir"))
        except Exception as e:  # noqa: BLE001 - anything unexpected: exact fallback
            _report(GraphReport(fallback, f"front end failed ({type(e).__name__}: {e})"), verbose)
            return _fallback(gm, fake_args, fallback, state)
        n_long = sum(r.kind in ("long", "scan") for r in fe.records)
        n_short = sum(r.kind == "short" for r in fe.records)
        if fe.refusals:
            reasons = "; ".join(f"{r.op} at {r.source}: {r.reason}" for r in fe.refusals[:3])
            _report(GraphReport(fallback, "refused: " + reasons, n_long, n_short,
                                list(fe.refusals)), verbose)
            return _fallback(gm, fake_args, fallback, state)
        if not fe.records:
            _report(GraphReport(fallback, "no convolution in this graph", 0, 0), verbose)
            return _fallback(gm, fake_args, fallback, state)
        new = fe.gm
        from .passes.common import probe_threads
        try:  # check the rewritten graph once on the real inputs
            with torch.no_grad(), probe_threads():
                a, b = new(*real), gm(*real)
            for x, y in zip(a, b):
                if isinstance(x, torch.Tensor) and x.is_floating_point() and \
                        rel_err(x, y) > 10 * tolerance(x.dtype):
                    raise RuntimeError(f"rewritten graph differs (rel err {rel_err(x, y):.1e})")
        except Exception as e:  # noqa: BLE001
            _report(GraphReport(fallback, f"check failed: {e}"), verbose)
            return _fallback(gm, fake_args, fallback, state)
        bound = fe.ta.max_len
        d0, tdim = data_idx[0], 1
        _report(GraphReport("lcsm", f"{n_long} long and {n_short} short convolutions rewritten",
                            n_long, n_short), verbose)
        plain = gm.forward

        def run(*args):
            if bound is not None and args[d0].shape[tdim] > bound:
                return plain(*args)  # the match assumed L <= bound (min(L, c) in the model)
            return new(*args)
        return run

    return compiler


def lcsm_backend(gm: fx.GraphModule, example_inputs: List[Any], **kwargs: Any) -> Callable:
    """``torch.compile`` backend: see the module doc. ``options=`` arrive in ``kwargs``."""
    from torch._decomp import core_aten_decompositions
    from torch._dynamo.backends.common import aot_autograd

    options = dict(kwargs.get("options") or {})
    # inference only: grad-mode switches inside the graph (``with torch.no_grad():`` blocks in
    # forward) are dropped, everything runs under no_grad
    for n in list(gm.graph.nodes):
        if n.op == "call_function" and n.target is torch._C._set_grad_enabled:
            gm.graph.erase_node(n)
    gm.recompile()
    state: Dict[str, Any] = {}
    compiler = _make_inference_compiler(gm, list(example_inputs), options, state)
    fallback = options.get("fallback", "eager")

    def training_compiler(g, fake_args):
        _report(GraphReport(fallback, "autograd graph (training): run as is"), False)
        return _fallback(g, fake_args, fallback, state)

    with torch.no_grad():  # inference backend: always the inference graph
        compiled = aot_autograd(fw_compiler=training_compiler, inference_compiler=compiler,
                                decompositions=core_aten_decompositions())(gm, example_inputs)
        if fallback == "inductor" and state.get("fallback"):
            from torch._inductor.compile_fx import compile_fx
            compiled = compile_fx(gm, example_inputs)

    def forward(*args):
        with torch.no_grad():
            return compiled(*args)
    return forward
