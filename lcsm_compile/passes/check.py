"""check: the rewritten graph against the captured one, and the model's global properties.

Contract: pure functions that run graphs on probe inputs and return data; nothing raises for an
unsupported model and no graph is changed. The ONE implementation of "these outputs equal those"
(:func:`output_mismatch`) is used by the pipeline, the backend and capture validation.

* :func:`output_mismatch`: the first floating-point output whose relative error exceeds
  ``10 * tolerance(dtype)`` (or a shape/count difference), described; None when all match;
* :func:`global_checks`: the rewritten graph equals the captured graph at the probe lengths,
  and (for a model with no other refusal) is causal and prefix consistent end to end;
* :func:`prefix_culprit`: the long conv whose filter depends on the total length;
* :func:`matches_model`: a captured graph equals the eager model at given lengths.
"""

from __future__ import annotations

import copy
from typing import Any, List, Optional, Sequence

import torch
import torch.fx as fx

from ..capture.inputs import probe_input, unwrap_model
from ..capture.outputs import flatten_output
from ..report import ConvRecord, Refusal
from .common import LONG_CONV, ProbeInterpreter, probe_threads, user_source
from .time_axis import Analysis
from .verify import rel_err, tolerance

__all__ = ["output_mismatch", "global_checks", "prefix_culprit", "matches_model"]


def output_mismatch(got: Sequence[Any], want: Sequence[Any]) -> Optional[str]:
    """Why ``got`` differs from ``want`` (tensor outputs, in order), or None when they match:
    same count and shapes, floating-point values within ``10 * tolerance(dtype)`` relative."""
    if len(got) != len(want):
        return f"{len(got)} outputs instead of {len(want)}"
    for i, (a, b) in enumerate(zip(got, want)):
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            continue
        if a.shape != b.shape:
            return f"output {i} has shape {tuple(a.shape)} instead of {tuple(b.shape)}"
        if a.is_floating_point() and rel_err(a, b) > 10 * tolerance(a.dtype):
            return f"output {i} differs (rel err {rel_err(a, b):.1e})"
    return None


def _outputs_time_dims(gm: fx.GraphModule, analysis: Analysis) -> List[Optional[int]]:
    out = next(iter(gm.graph.find_nodes(op="output")))
    return [analysis[a].time_dim if isinstance(a, fx.Node) and a.name in analysis.info else None
            for a in out.args[0]]


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def global_checks(gm: fx.GraphModule, captured: fx.GraphModule, analysis: Analysis,
                  example: torch.Tensor, probe_lengths: Sequence[int], records: Sequence[ConvRecord],
                  other_refusals: bool, min_len: int = 1) -> List[Refusal]:
    """End-to-end checks of the rewritten graph ``gm`` (module doc); returns refusals. Every
    probe is at least ``min_len`` long (a graph valid past some length only)."""
    with probe_threads():
        return _global_checks(gm, captured, analysis, example, probe_lengths, records, other_refusals, min_len)


def _global_checks(gm, captured, analysis, example, probe_lengths, records, other_refusals, min_len) -> List[Refusal]:
    for L in probe_lengths:
        x = probe_input(example, L, 17 + L)
        try:
            with torch.no_grad():
                a, b = gm(x), captured(x)
        except Exception as e:  # noqa: BLE001 - a failing graph is a refusal, not a crash
            return [Refusal("check", None, f"the rewritten graph fails at L={L}: {_first_line(e)}")]
        why = output_mismatch(list(a), list(b))
        if why is not None:
            return [Refusal("check", None, f"the rewritten graph differs from the captured graph at L={L}: {why}")]
    if other_refusals:
        return []
    tds = _outputs_time_dims(gm, analysis)
    L2 = max(probe_lengths) + 3
    L1 = max(L2 // 2 + 1, min(min_len, L2 - 1))
    x2 = probe_input(example, L2, 99)
    x1 = x2[:, :L1].contiguous()
    x3 = x2.clone()
    x3[:, -1] = probe_input(example, 1, 7)[:, 0]
    try:
        with torch.no_grad():
            y2, y1, y3 = gm(x2), gm(x1), gm(x3)
    except Exception as e:  # noqa: BLE001
        return [Refusal("check", None, f"the rewritten graph fails in the causality probe: {type(e).__name__}")]
    for i, (a, b, c) in enumerate(zip(y2, y1, y3)):
        td = tds[i] if i < len(tds) else None
        if not isinstance(a, torch.Tensor) or td is None or not a.is_floating_point():
            continue
        tol = 10 * tolerance(a.dtype)
        if rel_err(a.narrow(td, 0, a.shape[td] - 1), c.narrow(td, 0, a.shape[td] - 1)) > tol:
            return [Refusal("check", None, "non-causal: changing the last input position "
                            "changes earlier outputs (global probe)")]
        if rel_err(b, a.narrow(td, 0, L1)) > tol:
            return [prefix_culprit(gm, records, x2, L1) or Refusal(
                "check", None, "not prefix consistent: the outputs for the first positions "
                "change when the sequence grows (something depends on the total length L)")]
    return []


def prefix_culprit(gm: fx.GraphModule, records: Sequence[ConvRecord], x2: torch.Tensor,
                   L1: int) -> Optional[Refusal]:
    """The long conv whose filter is not prefix consistent (``k(L2)[:, :L1] != k(L1)``)."""
    convs = [n for n in gm.graph.nodes if n.target == LONG_CONV]
    if not convs:
        return None
    ks = [n.args[1] for n in convs]
    vals = []
    for x in (x2, x2[:, :L1].contiguous()):
        it = ProbeInterpreter(gm, {}, ks)
        with torch.no_grad():
            it.run(x)
        vals.append(it.recorded)
    for n, k in zip(convs, ks):
        a, b = vals[0][k][..., :L1], vals[1][k]
        if rel_err(a, b) > 10 * tolerance(b.dtype):
            rec = next((r for r in records if r.node == n.name), None)
            return Refusal("lcsm.long_conv", rec.source if rec else user_source(n),
                           "not prefix consistent: the filter of this long convolution depends on "
                           "the total length L (k computed at length L2, cut to L1, differs from k "
                           "computed at L1), so outputs change when the sequence grows",
                           n.name, rec.code if rec else None)
    return None


def matches_model(model: Any, gm: fx.GraphModule, example: torch.Tensor, lengths: Sequence[int]) -> bool:
    """Whether the captured graph ``gm`` equals the (eager, deep-copied) model at ``lengths``."""
    mod = unwrap_model(model)
    try:
        with torch.no_grad(), probe_threads():
            for L in lengths:
                x = probe_input(example, L, 7 + L)
                ref = [t for t in flatten_output(copy.deepcopy(mod)(x))[0] if isinstance(t, torch.Tensor)]
                if output_mismatch(list(gm(x)), ref) is not None:
                    return False
    except Exception:  # noqa: BLE001
        return False
    return True
