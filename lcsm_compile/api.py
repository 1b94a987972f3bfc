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

from .capture import find_logits, unwrap_model
from .errors import SessionError
from .options import KERNELS, SESSION_OPTIONS, check_options
from .pipeline import PLAN, Lowered, ProgramPlan, lower, plan, run_stages
from .report import Explanation, refusal_error
from .runtime.program import instantiate
from .runtime.session import Session

__all__ = ["session", "generate", "explain", "sample_next"]

#: lowered graphs per model (weakly keyed), at most :data:`_PER_MODEL` input signatures each
_LOWERED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_PER_MODEL = 4


def _fingerprint(model: torch.nn.Module) -> tuple:
    """Changes when a parameter or buffer of the model is replaced or written in place."""
    return tuple((id(t), t._version) for t in list(model.parameters()) + list(model.buffers()))


def _lowered(model: Any, example: torch.Tensor, debug_dir: Optional[str] = None,
             max_len: Optional[int] = None) -> Lowered:
    """:func:`lower` cached per model (weakly), input signature and ``max_len``; recomputed when
    the model's weights change; bounded to the last few signatures per model."""
    mod = unwrap_model(model)
    key = (example.dtype, example.device, example.dim(), tuple(example.shape[2:]), max_len)
    fp = _fingerprint(mod) if isinstance(mod, torch.nn.Module) else None
    try:
        cache = _LOWERED.setdefault(mod, OrderedDict())
    except TypeError:  # not weak-referenceable: no cache
        cache = OrderedDict()
    hit = cache.get(key)
    if hit is not None and hit[0] == fp and debug_dir is None:
        cache.move_to_end(key)
        return hit[1]
    low = lower(mod, example, debug_dir=debug_dir, max_len=max_len)
    cache[key] = (fp, low)
    while len(cache) > _PER_MODEL:
        cache.popitem(last=False)
    return low


def _capture_example(example: torch.Tensor) -> torch.Tensor:
    """The example at length >= 2 (its values only seed the probes)."""
    L = example.shape[1]
    if L >= 2:
        return example
    if L == 0:
        return torch.zeros((example.shape[0], 2) + tuple(example.shape[2:]), dtype=example.dtype,
                           device=example.device)
    return example.repeat(*([1, 2] + [1] * (example.dim() - 2)))


def session(model_or_compiled: Any, example: torch.Tensor, max_len: int = 8192, **options: Any) -> Session:
    """A streaming session for ``model_or_compiled`` (a plain module or its ``torch.compile`` result).

    Args:
        example: a prompt-shaped input ([B, P] ids or [B, P, Din], any P >= 0); fixes the batch
            size, dtype, device and input kind of the session (its values are not consumed).
        max_len: the most positions the session can hold (prompt + generated).
        options: ``compile_step`` (bool, compile the step program with Inductor),
            ``engine`` ("online" | "lazy" | "eager" | "none": the long-conv algorithm; the last
            three are the benchmark baselines), ``engine_options`` (e.g. ``{"block": 16}``),
            ``debug_dir`` (write each compiler stage's graph there), ``kernels`` ("auto": the
            engine's fused native CPU kernels where a C compiler builds them, else torch ops;
            "torch": torch ops only; "triton" is reserved for GPU kernels and not available
            in this version).
    Raises:
        UnsupportedModelError: the model cannot be streamed exactly; names the op, its source
            line and the reason.
        SessionError: wrong arguments (example, max_len, kernels).
    """
    check_options(options, SESSION_OPTIONS, "session")
    opts = {**SESSION_OPTIONS, **options}
    if not isinstance(example, torch.Tensor) or example.dim() < 2:
        raise SessionError("example must be a [B, L] or [B, L, Din] tensor")
    if max_len is None or int(max_len) < 1:
        raise SessionError(f"max_len must be >= 1, got {max_len}")
    if opts["kernels"] not in KERNELS:
        raise SessionError(f"kernels={opts['kernels']!r} is not available: this version has 'auto' (native CPU "
                           f"kernels where they build, else torch) and 'torch'")
    max_len = int(max_len)
    low = _lowered(model_or_compiled, _capture_example(example), opts["debug_dir"], max_len)
    if not low.streamable:
        raise refusal_error(low.refusals)
    if low.valid_range[1] is not None and max_len > low.valid_range[1]:
        raise SessionError(f"max_len={max_len} is longer than the model supports ({low.valid_range[1]} positions)")
    pl = plan(low, max_len, example.shape[0], debug_dir=opts["debug_dir"])
    if pl.refusals:
        raise refusal_error(pl.refusals)
    prog = instantiate(pl, engine=opts["engine"], compile_step=bool(opts["compile_step"]),
                       engine_options=opts["engine_options"], kernels=opts["kernels"])
    return Session(prog, example)


def _logits(out: Any) -> torch.Tensor:
    lg = find_logits(out)
    if lg is None:
        raise SessionError(f"cannot find logits in the model output of type {type(out).__name__}")
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
            ``.logits`` / a ``"logits"`` entry / logits first), plain or ``torch.compile``-d.
        do_sample, temperature, top_k, top_p, generator: sampling (greedy by default).
        eos_token_id: a sequence that emits it is finished: later positions hold
            ``eos_token_id``; generation stops early once every sequence is finished (the
            result is then shorter than ``P + max_new_tokens``).
        progress: a progress bar with tokens/s (default: on for 256 or more new tokens).
        options: session options (``max_len`` defaults to ``P + max_new_tokens``,
            ``compile_step``, ``engine``, ...).
    Raises:
        UnsupportedModelError: the model cannot be streamed exactly.
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
        raise SessionError(f"ids must be an integer [B, P] tensor, got {getattr(ids, 'shape', type(ids))}")
    if ids.shape[1] < 1:
        raise SessionError("the prompt needs at least one token (e.g. a BOS token)")
    B, P = ids.shape
    N = int(max_new_tokens)
    if N <= 0:
        return ids.clone()
    max_len = options.pop("max_len", None) or (P + N)
    sess = session(model_or_compiled, ids, max_len=max_len, **options)
    out = torch.empty(B, P + N, dtype=torch.long, device=ids.device)
    out[:, :P] = ids
    finished = torch.zeros(B, dtype=torch.bool, device=ids.device)
    show = progress if progress is not None else N >= 256
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=N, desc="lcsm generate", unit="tok", dynamic_ncols=True)
    t0 = time.perf_counter()
    logits = _logits(sess.prefill(ids))[:, -1]
    n = 0
    try:
        for i in range(N):
            nxt = sample_next(logits, do_sample, temperature, top_k, top_p, generator)
            if eos_token_id is not None:
                nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
                finished |= nxt == eos_token_id
            out[:, P + i] = nxt
            n = i + 1
            if bar is not None:
                bar.update(1)
            if eos_token_id is not None and bool(finished.all()):
                break
            if i + 1 < N:
                logits = _logits(sess.step(nxt[:, None]))[:, -1]
    finally:
        if bar is not None:
            dt = time.perf_counter() - t0
            bar.set_postfix_str(f"{n * B / max(dt, 1e-9):,.0f} tok/s (batch {B})")
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
    low = lower(model_or_compiled, _capture_example(example), debug_dir=options.get("debug_dir"),
                probe_lengths=options.get("probe_lengths", (5, 12)), check=options.get("check", True),
                max_len=options.get("max_len"))
    groups: list = []
    if low.streamable:
        stages = [s for s in PLAN if s.name in ("shapes", "groups")]
        groups = run_stages(ProgramPlan(low, max_len=2, batch_size=example.shape[0]), stages).groups.groups
    return Explanation(low.long_convs, low.short_convs, list(low.refusals), groups, low.scans,
                       low.streamable, type(unwrap_model(model_or_compiled)).__name__, low.input_kind,
                       low.valid_range, dict(low.stage_times), low)
