"""``generate``: exact autoregressive generation on a streaming session.

A short, direct loop in the spirit of gpt-fast: prefill the prompt once, then one session
step per new token. Greedy decoding returns exactly what the naive loop (argmax of the full
forward over the growing prefix) returns, up to floating-point ties.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import torch

from .errors import SessionError

__all__ = ["generate", "sample_next", "logits_of"]


def logits_of(out: Any) -> torch.Tensor:
    """The logits of a model output: ``.logits``, the ``"logits"`` entry, else the first tensor."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):
        return out.logits
    if isinstance(out, dict):
        if isinstance(out.get("logits"), torch.Tensor):
            return out["logits"]
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    raise SessionError(f"cannot find logits in the model output of type {type(out).__name__}")


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
    from .session import session

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
    logits = logits_of(sess.prefill(ids))[:, -1]
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
                logits = logits_of(sess.step(nxt[:, None]))[:, -1]
    finally:
        if bar is not None:
            dt = time.perf_counter() - t0
            bar.set_postfix_str(f"{n * B / max(dt, 1e-9):,.0f} tok/s (batch {B})")
            bar.close()
    return out[:, : P + n]
