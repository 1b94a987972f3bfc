"""The public entry points: :func:`session`, :func:`generate`, :func:`explain`.

Each accepts the plain module or its ``torch.compile`` result, runs the pipeline
(:func:`lcsm_compile.pipeline.lower`, then :func:`~lcsm_compile.pipeline.plan`), and is the only
place where refusals become :class:`~lcsm_compile.UnsupportedModelError`.

:func:`generate` is a short, direct loop in the spirit of gpt-fast: prefill the prompt once,
then one session step per new token. Greedy decoding returns exactly what the naive loop
(argmax of the full forward over the growing prefix) returns, up to floating-point ties.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from typing import Any, Optional

import torch

from .capture import find_logits, probe_input, unwrap_model
from .codegen import kernel_sources, select_kernels
from .errors import SessionError
from .ops import compute_dtype
from .options import KERNELS, SESSION_OPTIONS, check_options, resolve_debug_dir
from .passes.modal import MODAL_OPTIONS
from .pipeline import decide_modal
from .pipeline import PLAN, Lowered, ProgramPlan, lower, plan, run_stages, trace_artifact
from .report import Explanation, refusal_error
from .runtime import memory
from .runtime.program import instantiate
from .runtime.session import Session
from .runtime.threads import frozen_gc

__all__ = ["session", "generate", "explain", "sample_next"]

#: lowered graphs per model (weakly keyed), at most :data:`_PER_MODEL` input signatures each
_LOWERED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_PER_MODEL = 4


def _fingerprint(model: torch.nn.Module) -> tuple:
    """Changes when a parameter or buffer of the model is replaced or written in place."""
    return tuple((id(t), t._version) for t in list(model.parameters()) + list(model.buffers()))


def _lowered(model: Any, example: torch.Tensor, debug_dir: Optional[str] = None,
             max_len: Optional[int] = None, min_len: Optional[int] = None) -> Lowered:
    """:func:`lower` cached per model (weakly), input signature and ``max_len``; recomputed when
    the model's weights change; bounded to the last few signatures per model."""
    mod = unwrap_model(model)
    key = (example.dtype, example.device, example.dim(), tuple(example.shape[2:]), max_len, min_len)
    fp = _fingerprint(mod) if isinstance(mod, torch.nn.Module) else None
    try:
        cache = _LOWERED.setdefault(mod, OrderedDict())
    except TypeError:  # not weak-referenceable: no cache
        cache = OrderedDict()
    hit = cache.get(key)
    if hit is not None and hit[0] == fp and resolve_debug_dir(debug_dir) is None:  # (None: $LCSM_DEBUG_DIR)
        cache.move_to_end(key)
        return hit[1]
    low = lower(mod, example, debug_dir=debug_dir, max_len=max_len, min_len=min_len)
    cache[key] = (fp, low)
    while len(cache) > _PER_MODEL:
        cache.popitem(last=False)
    return low


def _capture_example(example: torch.Tensor) -> torch.Tensor:
    """The example at length >= 2 (its values only seed the probes: probe ids are drawn from
    them; continuous probes are random whatever the values).

    Any length works, 0 included. For ids, an empty example gives ids 0 and 1 and a one-position
    example is followed by id 0, so that the probes hold two different tokens (with one token
    only, every probe would be constant along time and the global causality probe, which
    changes the last position, would change nothing)."""
    L = example.shape[1]
    if L >= 2:
        return example
    ids = not (example.is_floating_point() or example.is_complex())
    if L == 0:
        x = torch.zeros((example.shape[0], 2) + tuple(example.shape[2:]), dtype=example.dtype,
                        device=example.device)
        if ids:
            x[:, 1] = 1
        return x
    if ids:
        return torch.cat([example, torch.zeros_like(example)], 1)
    return example.repeat(*([1, 2] + [1] * (example.dim() - 2)))


#: ``compile_step="auto"`` compiles the step program of sessions this long or longer (see
#: docs/streaming.md: the compiled step saves ~1 ms per token on the reference CPU; a compile
#: costs 10-30 s cold, a few seconds from Inductor's cache)
AUTO_COMPILE_MIN_LEN = 16384


def _compile_step(value: Any, max_len: int) -> bool:
    if value == "auto":
        return max_len >= AUTO_COMPILE_MIN_LEN
    if not isinstance(value, bool):
        raise SessionError(f"compile_step must be True, False or 'auto', got {value!r}")
    return value


def session(model_or_compiled: Any, example: torch.Tensor, max_len: int = 8192, **options: Any) -> Session:
    """A streaming session for ``model_or_compiled`` (a plain module or its ``torch.compile`` result).

    Args:
        example: a prompt-shaped input ([B, P] ids or [B, P, Din], any P >= 0); fixes the batch
            size, dtype, device and input kind of the session (its values are not consumed).
        max_len: the most positions the session can hold (prompt + generated).
        options: ``compile_step`` (compile the step program with Inductor on its first step:
            True, False, or "auto" (default): when ``max_len >= AUTO_COMPILE_MIN_LEN``, where
            the per-token gain pays for the compile),
            ``engine`` ("online" | "lazy" | "eager" | "none": the long-conv algorithm; the last
            three are the benchmark baselines), ``engine_options`` (e.g. ``{"block": 16}``),
            ``debug_dir`` (write each compiler stage's graph there; default ``$LCSM_DEBUG_DIR``,
            ``False`` turns it off), ``kernels`` ("auto": the emitted Triton kernels on CUDA,
            the fused native C kernels on the CPU where a C compiler builds them, else torch
            ops, each falling back to the next when its capability check fails; "torch": the
            torch twins; "native": the C kernels; "triton": the Triton kernels, on CUDA or on
            the CPU under ``TRITON_INTERPRET=1`` (the interpreter, for tests); "native" and
            "triton" raise SessionError naming why they cannot run here; ``session.kernel_note``
            says which kernels run and why), ``threads`` (intra-op threads of each step, default 1, set and
            restored around every step; None leaves torch's setting; prefill always runs with
            torch's setting), ``modal`` ("auto" (default): a long convolution whose filter is
            a sum of exponentials, recognised in the graph and verified against the model's
            filter over ``[0, max_len)``, streams as an O(state) recurrence instead of the online
            engine; False: every long convolution on the online engine; with a baseline
            ``engine`` it is False; ``explain`` says which path each convolution takes and why).
    Raises:
        UnsupportedModelError: the model cannot be streamed exactly; names the op, its source
            line and the reason.
        SessionError: wrong arguments (example, max_len, kernels, threads, modal).
    """
    check_options(options, SESSION_OPTIONS, "session")
    opts = {**SESSION_OPTIONS, **options}
    if not isinstance(example, torch.Tensor) or example.dim() < 2:
        raise SessionError("example must be a [B, L] or [B, L, Din] tensor")
    if max_len is None or int(max_len) < 1:
        raise SessionError(f"max_len must be >= 1, got {max_len}")
    if opts["kernels"] not in KERNELS:
        raise SessionError(f"kernels={opts['kernels']!r} is not available: the kernels are one of "
                           f"{', '.join(repr(k) for k in KERNELS)}")
    if opts["kernels"] in ("native", "triton"):
        from .codegen import select_kernels

        select_kernels(opts["kernels"], torch.float32, example.device)  # early: SessionError naming why not
    if opts["threads"] is not None and (not isinstance(opts["threads"], int) or opts["threads"] < 1):
        raise SessionError(f"threads must be None or an int >= 1, got {opts['threads']!r}")
    if opts["modal"] not in MODAL_OPTIONS:
        raise SessionError(f"modal={opts['modal']!r}: expected 'auto' (verified modal filters stream as "
                           f"recurrences) or False (every long convolution on the online engine)")
    max_len = int(max_len)
    base = memory.resident_bytes()  # the process before the session (the memory model's base)
    ex = _capture_example(example)
    low = _lowered(model_or_compiled, ex, opts["debug_dir"], max_len)
    if not low.streamable:
        raise refusal_error(low.refusals)
    short: list = []
    hi = low.valid_range[1]
    if hi is not None and max_len > hi:
        # the graph holds up to hi only (the model's code branches on L): the graph captured
        # past hi serves longer lengths, this one the prompts of length <= hi
        long_low = _lowered(model_or_compiled, ex, opts["debug_dir"], max_len, min_len=hi + 1)
        top = long_low.valid_range[1]
        if not long_low.streamable or (top is not None and top < max_len):
            why = "; ".join(r.reason for r in long_low.refusals[:2]) or f"its graph past {hi} holds up to {top}"
            raise SessionError(f"max_len={max_len} is longer than the model supports ({hi} positions): {why}",
                               max_supported=hi)
        short, low = [(hi, low)], long_low
    # modal recurrences replace the online engine; the baseline engines measure what they name
    modal = opts["modal"] if opts["engine"] == "online" else False
    mp = decide_modal(low, max_len, example.shape[0], modal)  # the modal filters are not folded
    lowered_rss = memory.resident_bytes()  # the lowering's graphs and objects (the memory model)
    if opts["memory_check"]:  # the fold stage evaluates the filters at max_len: refuse before it
        memory.check_fold(low, max_len, skip=tuple(mp.filters))
    pl = plan(low, max_len, example.shape[0], short_pieces=short, debug_dir=opts["debug_dir"], modal=mp)
    if pl.refusals:
        raise refusal_error(pl.refusals)
    # the state's bytes by part, before it is allocated (runtime/memory.py, docs/memory.md)
    mopts = dict(engine=opts["engine"], engine_options=opts["engine_options"], kernels=opts["kernels"],
                 prompt_len=example.shape[1], compile_step=_compile_step(opts["compile_step"], max_len))
    mem = memory.plan_report(pl, **mopts)
    mem.base_bytes = base
    memory.add_process_growth(mem, None if base is None or lowered_rss is None else lowered_rss - base)
    if opts["memory_check"]:
        memory.check_plan(pl, mem, **mopts)
    prog = instantiate(pl, engine=opts["engine"], compile_step=_compile_step(opts["compile_step"], max_len),
                       engine_options=opts["engine_options"], kernels=opts["kernels"])
    if short:
        _check_pieces(prog, short[0][1], low, max_len)
    from .inspection import schedule_params
    trace_artifact("lcsm_schedule", lambda: schedule_params(prog), "json")  # TORCH_TRACE: the engines' choices
    mem.measured = memory.measure(prog)
    sess = Session(prog, example, threads=opts["threads"])
    sess.memory = mem
    return sess


def _check_pieces(prog, short: Lowered, long: Lowered, max_len: int) -> None:
    """Teacher-force the program across the length where the model's graph changes (a prompt
    short enough for the first graph, steps past it) against both graphs; refuse on a mismatch.
    The program is reset afterwards."""
    from .passes.check import output_mismatch

    hi = short.valid_range[1]
    L = min(hi + 3, max_len)
    x = probe_input(long.capture_example, L, 31337, batch=prog.batch_size)
    P = min(3, hi)
    pos = torch.zeros(1, dtype=torch.long, device=x.device)
    with torch.no_grad():
        outs = [prog.prefill(x[:, :P])]
        for t in range(P, L):
            pos.fill_(t)
            outs.append(prog.step(x[:, t:t + 1].contiguous(), pos))
        got = [torch.cat([o[i] for o in outs], 1) for i in range(len(outs[0]))]
        why = output_mismatch([g[:, :hi] for g in got], list(short.gm(x[:, :hi].contiguous())))
        why = why or output_mismatch(got, list(long.gm(x)))
    prog.reset()
    if why is not None:
        raise SessionError(max_supported=hi, message=f"max_len={max_len} is longer than the model supports ({hi} positions): streamed "
                           f"across length {hi}, where the model's graph changes, the outputs differ ({why})")


def _logits(out: Any, length: int) -> torch.Tensor:
    """The logits of ``length`` positions in a session output (:func:`find_logits`)."""
    lg = find_logits(out, length)
    if lg is None:
        raise SessionError(f"cannot find logits in the model output of type {type(out).__name__}: no "
                           f"'logits' entry and no floating-point [B, {length}, ...] tensor")
    if lg.dim() != 3 or lg.shape[1] != length:
        raise SessionError(f"the logits found in the model output must be [B, {length}, vocab], got shape "
                           f"{tuple(lg.shape)}")
    return lg


def sample_next(logits: torch.Tensor, do_sample: bool = False, temperature: float = 1.0,
                top_k: Optional[int] = None, top_p: Optional[float] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Next token ids ``[B]`` from last-position logits ``[B, V]``.

    Greedy (argmax) unless ``do_sample``; then temperature, top-k and nucleus (top-p)
    filtering, and a draw from the remaining distribution with ``generator``.
    """
    if not do_sample:
        return logits.argmax(-1)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    x = logits.float() / temperature
    if top_k is not None and 0 < top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_x, idx = torch.sort(x, descending=True, dim=-1)
        probs = torch.softmax(sorted_x, -1)
        # drop a token when the mass before it already reaches top_p (the first always stays)
        drop = (probs.cumsum(-1) - probs) >= top_p
        sorted_x = sorted_x.masked_fill(drop, float("-inf"))
        x = torch.full_like(x, float("-inf")).scatter(-1, idx, sorted_x)
    probs = torch.softmax(x, -1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def generate(model_or_compiled: Any, ids: torch.Tensor, max_new_tokens: int, do_sample: bool = False,
             temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
             eos_token_id: Optional[int] = None, generator: Optional[torch.Generator] = None,
             progress: Optional[bool] = None, **options: Any) -> torch.LongTensor:
    """Generate ``max_new_tokens`` tokens after the prompt ``ids [B, P]``; returns ``[B, P + N]``.

    Args:
        model_or_compiled: an LM (ids ``[B, L]`` -> logits ``[B, L, V]``, or an output with
            ``.logits`` / a ``"logits"`` entry at any depth, else the first floating-point
            ``[B, L, ...]`` tensor: :func:`~lcsm_compile.capture.find_logits`), plain or
            ``torch.compile``-d.
        do_sample, temperature, top_k, top_p, generator: sampling (greedy by default).
        eos_token_id: a sequence that emits it is finished: later positions hold
            ``eos_token_id``; generation stops early once every sequence is finished (the
            result is then shorter than ``P + max_new_tokens``).
        progress: a progress bar with tokens/s and the process' resident memory against the
            session's predicted peak (default: on for 256 or more new tokens).
        options: session options (``max_len`` defaults to ``P + max_new_tokens``,
            ``compile_step``, ``engine``, ...).
    Raises:
        UnsupportedModelError: the model cannot be streamed exactly.
        SessionError: ``ids`` is not an integer ``[B, P]`` tensor, the prompt is empty (``P = 0``
            and ``max_new_tokens > 0``: no logits to sample the first token from), or the
            output holds no logits.
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
        raise SessionError(f"ids must be an integer [B, P] tensor, got {getattr(ids, 'shape', type(ids))}")
    B, P = ids.shape
    N = int(max_new_tokens)
    if N <= 0:
        return ids.clone()
    if P < 1:
        raise SessionError("generate needs a prompt of at least one token: an empty prompt gives no logits "
                           "to sample the first token from (start from a BOS token; a session takes an "
                           "empty prefill)")
    max_len = options.pop("max_len", None) or (P + N)
    sess = session(model_or_compiled, ids, max_len=max_len, **options)
    return generate_on(sess, ids, N, do_sample, temperature, top_k, top_p, eos_token_id, generator, progress)


def generate_on(sess: Session, ids: torch.Tensor, max_new_tokens: int, do_sample: bool = False,
                temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
                eos_token_id: Optional[int] = None, generator: Optional[torch.Generator] = None,
                progress: Optional[bool] = None) -> torch.LongTensor:
    """:func:`generate` on a fresh session ``sess`` (a live one, or an artifact's: it is
    prefilled with ``ids [B, P]``, ``P >= 1``); same arguments and result."""
    B, P = ids.shape
    N = int(max_new_tokens)
    if N <= 0:
        return ids.clone()
    if P < 1:
        raise SessionError("generate needs a prompt of at least one token")
    out = torch.empty(B, P + N, dtype=torch.long, device=ids.device)
    out[:, :P] = ids
    finished = torch.zeros(B, dtype=torch.bool, device=ids.device)
    show = progress if progress is not None else N >= 256
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=N, desc="lcsm generate", unit="tok", dynamic_ncols=True)
    t0 = time.perf_counter()
    logits = _logits(sess.prefill(ids), P)[:, -1]

    def postfix(done: int) -> str:  # tokens/s and memory (resident now vs the model's peak)
        dt = time.perf_counter() - t0
        txt = f"{done * B / max(dt, 1e-9):,.0f} tok/s (batch {B})"
        rss, mem = memory.resident_bytes(), getattr(sess, "memory", None)
        if rss is not None:
            txt += f", RSS {rss / 2**30:.2f} GiB"
            if mem is not None and mem.peak_rss is not None:
                txt += f" (predicted peak {mem.peak_rss / 2**30:.2f})"
        return txt

    n = 0
    shown = t0
    try:
        with frozen_gc():  # no collector pauses over the model's objects during the steps (runtime/threads.py)
            for i in range(N):
                nxt = sample_next(logits, do_sample, temperature, top_k, top_p, generator)
                if eos_token_id is not None:
                    nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
                    finished |= nxt == eos_token_id
                out[:, P + i] = nxt
                n = i + 1
                if bar is not None:
                    bar.update(1)
                    if time.perf_counter() - shown > 0.5:
                        shown = time.perf_counter()
                        bar.set_postfix_str(postfix(n), refresh=False)
                if eos_token_id is not None and bool(finished.all()):
                    break
                if i + 1 < N:
                    logits = _logits(sess.step(nxt[:, None]), 1)[:, -1]
    finally:
        if bar is not None:
            bar.set_postfix_str(postfix(n))
            bar.close()
    return out[:, : P + n]


def explain(model_or_compiled: Any, example: torch.Tensor, **options: Any) -> Explanation:
    """Explain how lcsm-compile sees ``model_or_compiled`` (a module or a ``torch.compile``
    result) on inputs like ``example``: the convolutions found (with the user's source lines),
    the cross-layer groups, and every refusal. Never raises for unsupported models: they come
    back with ``refusals`` filled.

    Options: ``max_len``, ``debug_dir``, ``probe_lengths``, ``check`` (see
    :func:`lcsm_compile.pipeline.lower`); session options are accepted and ignored.
    """
    check_options(options, set(SESSION_OPTIONS) | {"max_len", "probe_lengths", "check"}, "explain")
    if tuple(options.get("probe_lengths", (5, 12))) == (5, 12) and options.get("check", True) is True:
        # the lowering a session of the same model, input signature and max_len uses (cached)
        low = _lowered(model_or_compiled, _capture_example(example), options.get("debug_dir"), options.get("max_len"))
    else:
        low = lower(model_or_compiled, _capture_example(example), debug_dir=options.get("debug_dir"),
                    probe_lengths=options.get("probe_lengths", (5, 12)), check=options.get("check", True),
                    max_len=options.get("max_len"))
    groups: list = []
    paths: dict = {}
    pl = None
    if low.streamable:
        groups, paths, pl = _explain_plan(low, example.shape[0], options)
    exp = Explanation(low.long_convs, low.short_convs, list(low.refusals), groups, low.scans,
                      low.streamable, type(unwrap_model(model_or_compiled)).__name__, low.input_kind,
                      low.valid_range, dict(low.stage_times), low)
    exp.conv_paths = paths
    exp.attention, exp.batch_size, exp.max_len = low.attention, example.shape[0], options.get("max_len")
    if low.streamable:  # which kernels a session with these options runs, and their sources
        dtype = next((g.dtype for g in groups), torch.float32)
        try:
            exp.kernels = select_kernels(options.get("kernels", "auto"), compute_dtype(dtype),
                                         getattr(example, "device", "cpu")).note
        except SessionError as e:
            exp.kernels = str(e)
        exp.kernel_sources = kernel_sources()
    if pl is not None and pl.groups is not None:  # the state's bytes by part (docs/memory.md)
        mopts = dict(engine=options.get("engine", "online"), engine_options=options.get("engine_options"),
                     kernels=options.get("kernels", "auto"), prompt_len=example.shape[1])
        exp.memory = (memory.plan_report(pl, max_len=int(exp.max_len), **mopts) if exp.max_len
                      else memory.formulas(pl, options.get("kernels", "auto")))
    return exp


def _explain_plan(low: Lowered, batch: int, options: dict) -> tuple:
    """``(groups, conv paths)`` for :func:`explain`: the plan's fold (modal filters recognised and
    verified at ``max_len``, default 8192, capped at the graph's valid range), shapes and groups
    stages, as a session would run them."""
    modal = options.get("modal", "auto") if options.get("engine", "online") == "online" else False
    if modal not in MODAL_OPTIONS:
        raise SessionError(f"modal={modal!r}: expected 'auto' or False")
    ml = int(options.get("max_len") or 8192)
    if low.valid_range[1] is not None:
        ml = min(ml, int(low.valid_range[1]))
    stages = [s for s in PLAN if s.name in ("fold", "shapes", "groups")]
    pl = run_stages(ProgramPlan(low, max_len=max(ml, 2), batch_size=batch, modal_option=modal), stages)
    paths = dict(pl.modal.paths) if pl.modal is not None else {}
    if pl.groups is None:  # folding refused (the session will say why): the groups without it
        stages = [s for s in PLAN if s.name in ("shapes", "groups")]
        pl = run_stages(ProgramPlan(low, max_len=2, batch_size=batch, modal=pl.modal), stages)
    return pl.groups.groups, paths, pl
