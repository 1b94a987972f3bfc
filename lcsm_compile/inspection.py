"""What a streaming session is made of, as data and text (``lcsm inspect``, trace artifacts).

* :func:`schedule_params`: per cross-layer group, the engine's schedule parameters (``block``,
  ``fft_from``, ``delay_from``, the immediate and delayed tile levels) and its members;
* :func:`inspect_report`: a readable report of a session: the rewritten prefill and step
  programs as code, the groups, the schedule parameters and the kernels (which run, and the
  paths of the emitted C and Triton sources in the kernel cache);
* :func:`tiling_args`: the arguments of :func:`lcsm_compile.visualize.tiling_figure` for one
  group of a session;
* :func:`mixer_kinds`: convolution node name -> ``"long"``/``"short"`` (to highlight a plan's
  programs in :func:`lcsm_compile.visualize.graph_dot`).

They take live objects (a :class:`~lcsm_compile.Session`, its ``program`` or its
``program.plan``); an exported artifact will be described by the same functions once it loads.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .pipeline import plan_summary
from .runtime import schedule as sched

__all__ = ["schedule_params", "inspect_report", "tiling_args", "mixer_kinds", "program_of"]


def program_of(obj: Any) -> Any:
    """The :class:`~lcsm_compile.runtime.program.StreamProgram` of a session (or the program)."""
    return getattr(obj, "program", obj)


def mixer_kinds(plan: Any) -> Dict[str, str]:
    """``{node name: "long" | "short"}`` of the convolutions of a plan's lowered graph."""
    from .passes.common import LONG_CONV, SHORT_CONV

    gm = plan.lowered.gm
    return {n.name: "long" if n.target == LONG_CONV else "short" for n in gm.graph.nodes
            if n.op == "call_function" and n.target in (LONG_CONV, SHORT_CONV)}


def schedule_params(session_or_program: Any) -> List[Dict[str, Any]]:
    """Per engine (one per cross-layer group), JSON-able: ``engine`` (class), ``members``,
    ``channels``, ``batch``, ``max_len``, and for the online engine ``block``, ``fft_from``,
    ``delay_from``, ``levels`` (immediate tile sizes), ``delayed_levels`` (schedule of
    :mod:`lcsm_compile.runtime.schedule`, from position 0), ``kernels`` (the kernel note)."""
    prog = program_of(session_or_program)
    groups = prog.plan.groups.groups if prog.plan.groups is not None else []
    out = []
    for i, eng in enumerate(prog.engines):
        g = groups[i] if i < len(groups) else None
        d: Dict[str, Any] = {"group": i, "engine": type(eng).__name__,
                             "members": list(g.members) if g is not None else [],
                             "channels": getattr(eng, "channels", g.channels if g is not None else None),
                             "batch": getattr(eng, "batch_size", g.batch if g is not None else None),
                             "max_len": getattr(eng, "max_len", prog.max_len)}
        plan = getattr(eng, "plan", None)
        block = getattr(plan, "block", None) if plan is not None else None
        if block is not None:
            D = getattr(plan, "delay_from", None)
            d.update(block=int(block), fft_from=getattr(plan, "fft_from", None), delay_from=D,
                     levels=sched.levels(d["max_len"], 0, int(block), D),
                     delayed_levels=sched.delayed_levels(d["max_len"], 0, int(block), D))
        note = getattr(eng, "kernel_note", None)
        if note:
            d["kernels"] = note
        out.append(d)
    return out


def tiling_args(session_or_program: Any, prefill: int = 0, group: int = 0) -> Optional[Dict[str, Any]]:
    """Keyword arguments of :func:`~lcsm_compile.visualize.tiling_figure` for the engine of
    ``group`` after a prefill of ``prefill`` positions; None when that engine has no tiling
    (no long convolution, or a baseline engine)."""
    params = schedule_params(session_or_program)
    if group >= len(params) or "block" not in params[group]:
        return None
    p = params[group]
    rows = (p["batch"] or 1) * (p["channels"] or 1)
    return {"max_len": p["max_len"], "prefill": int(prefill), "block": p["block"], "delay_from": p["delay_from"],
            "fft_from": p["fft_from"], "rows": rows}


def _code(gm: Any) -> str:
    code = getattr(gm, "code", None)
    return code.strip() if isinstance(code, str) else str(getattr(gm, "graph", gm))


def inspect_report(session: Any, title: Optional[str] = None) -> str:
    """A readable report of a streaming session: the rewritten prefill and step programs as
    Python code (their stateful calls as the plan's slots: ``prefill_<conv>(u)`` /
    ``step_<conv>(u)``), the cross-layer groups, the schedule parameters of each group's
    engine and the kernels the convolutions run on."""
    prog = program_of(session)
    plan = prog.plan
    summ = plan_summary(plan)
    lines = [f"# {title or 'lcsm inspect'}", "",
             f"{session!r}" if session is not prog else f"program: {prog.engine_kind} engine",
             f"max_len {plan.max_len}, batch {plan.batch_size}, input {summ['input_kind']}, "
             f"valid lengths {tuple(summ['valid_range'])}",
             f"{len(summ['long_convs'])} long convolution(s): {', '.join(summ['long_convs']) or '-'}",
             f"{len(summ['short_convs'])} short convolution(s): {', '.join(summ['short_convs']) or '-'}", ""]
    lines.append("## groups (long convolutions run together, one batched launch per step)")
    for i, g in enumerate(summ["groups"]):
        lines.append(f"group {i}: {g['describe']}: {', '.join(g['members'])}")
    if not summ["groups"]:
        lines.append("(none)")
    lines += ["", "## schedule (per group engine)"]
    for p in schedule_params(prog):
        head = f"group {p['group']}: {p['engine']}, {p['channels']} channels x batch {p['batch']}, max_len {p['max_len']}"
        lines.append(head)
        if "block" in p:
            lines.append(f"  block={p['block']} (red cells per step), fft_from={p['fft_from']} (tiles of this size "
                         f"and up by FFT), delay_from={p['delay_from']} (tiles of this size and up delayed)")
            lines.append(f"  immediate tile levels {p['levels']}; delayed tile levels {p['delayed_levels'] or 'none'}")
        if p.get("kernels"):
            lines.append(f"  kernels: {p['kernels']}")
    note = getattr(session, "kernel_note", None)
    if note and not any(p.get("kernels") for p in schedule_params(prog)):
        lines += ["", f"kernels: {note}"]
    from .codegen import kernel_sources

    lines += [f"kernel source ({what}): {path}" for what, path in kernel_sources()]
    pre, step = getattr(prog, "prefill_gm", plan.prefill_gm), getattr(prog, "step_gm", plan.step_gm)
    lines += ["", "## prefill program (the convolutions are stateful lcsm ops on the state buffers)", _code(pre),
              "", "## step program (one position: x_t, pos)", _code(step)]
    for hi, g in plan.short_prefills:
        lines += ["", f"## prefill program for prompts of length <= {hi}", _code(g)]
    return "\n".join(lines) + "\n"
