"""Streaming sessions: exact prefill + one-position steps of an unmodified model.

    sess = lcsm_compile.session(model, example=prompt, max_len=8192)
    y = sess.prefill(prompt)      # outputs for every prompt position, same structure as model(prompt)
    y_t = sess.step(x_next)       # output for the next position ([B, 1] ids or [B, 1, Din])

The model is lowered once (``pipeline.lower``), its time-invariant parts (filters, position
tables) are folded at ``max_len`` after a prefix-consistency check, and every long
convolution runs on the online engine; the model's Python code is not run per token.
"""

from __future__ import annotations

import weakref
from typing import Any, Optional

import torch

from .errors import SessionError, UnsupportedModelError

__all__ = ["Session", "session", "DEFAULT_OPTIONS"]

#: options understood by ``session``/``generate``/the backend (same names everywhere)
DEFAULT_OPTIONS = {"max_len": None, "kernels": "auto", "compile_step": False, "debug_dir": None,
                   "engine": "online", "engine_options": None}

_LOWERED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _fingerprint(model: torch.nn.Module) -> tuple:
    """Changes when a parameter or buffer of the model is replaced or written in place."""
    return tuple((id(t), t._version) for t in list(model.parameters()) + list(model.buffers()))


def _lowered(model: Any, example: torch.Tensor, debug_dir: Optional[str] = None, max_len: Optional[int] = None):
    """``pipeline.lower`` cached per model (weakly), input signature and ``max_len``;
    recomputed when the model's weights change."""
    from .capture import unwrap_model
    from .pipeline import lower

    mod = unwrap_model(model)
    key = (example.dtype, example.device, example.dim(), tuple(example.shape[2:]), max_len)
    fp = _fingerprint(mod) if isinstance(mod, torch.nn.Module) else None
    try:
        cache = _LOWERED.setdefault(mod, {})
    except TypeError:
        cache = {}
    hit = cache.get(key)
    if hit is not None and hit[0] == fp and debug_dir is None:
        return hit[1]
    low = lower(mod, example, debug_dir=debug_dir, max_len=max_len)
    cache[key] = (fp, low)
    return low


def _refuse(low) -> UnsupportedModelError:
    first = low.refusals[0]
    err = first.error()
    if len(low.refusals) > 1:
        more = "; ".join(f"{r.reason} ({r.op} at {r.source})" for r in low.refusals[1:4])
        err = UnsupportedModelError(f"{first.reason} (and {len(low.refusals) - 1} more: {more})",
                                    op=first.op, source=first.source)
    return err


class Session:
    """A streaming session over one model (see :func:`session`).

    Attributes: ``position`` (positions consumed), ``max_len``, ``batch_size``, ``program``
    (the :class:`lcsm_compile.runtime.StreamProgram`: graphs, groups, engines).
    """

    def __init__(self, program, example: torch.Tensor):
        self.program = program
        self.max_len = program.max_len
        self.batch_size = program.batch_size
        self.input_kind = program.lowered.input_kind
        self._dtype = example.dtype
        self._device = example.device
        self._feat = tuple(example.shape[2:])
        self._out_spec = program.lowered.out_spec
        self.position = 0
        self._started = False
        self._pos = torch.zeros(1, dtype=torch.long, device=example.device)

    # ------------------------------------------------------------------ checks
    def _check(self, x: Any, what: str, length: Optional[int]) -> None:
        if not isinstance(x, torch.Tensor):
            raise SessionError(f"{what}: expected a tensor, got {type(x).__name__}")
        want = "[B, L]" if self.input_kind == "ids" else f"[B, L, {', '.join(map(str, self._feat))}]"
        if x.dim() != 2 + len(self._feat) or tuple(x.shape[2:]) != self._feat:
            raise SessionError(f"{what}: input must be {want}, got {tuple(x.shape)}")
        if x.shape[0] != self.batch_size:
            raise SessionError(f"{what}: batch is {x.shape[0]}, the session was made for batch {self.batch_size}")
        if length is not None and x.shape[1] != length:
            raise SessionError(f"{what}: expected {length} position(s), got {x.shape[1]}")
        if x.device != self._device:
            raise SessionError(f"{what}: input is on {x.device}, the session is on {self._device}")
        if self.input_kind == "ids":
            if x.is_floating_point() or x.is_complex():
                raise SessionError(f"{what}: expected integer token ids, got {x.dtype}")
        elif x.dtype != self._dtype:
            raise SessionError(f"{what}: input dtype {x.dtype} does not match the session's {self._dtype}")
        elif not bool(torch.isfinite(x).all()):
            bad = (~torch.isfinite(x)).nonzero()[0].tolist()
            raise SessionError(f"{what}: input contains NaN or inf (first at index {bad}); the state was not changed")
        n = x.shape[1]
        if self.position + n > self.max_len:
            raise SessionError(f"{what}: {n} position(s) at position {self.position} would pass "
                               f"max_len={self.max_len}; make the session with a larger max_len")

    # ------------------------------------------------------------------ API
    def prefill(self, x: torch.Tensor) -> Any:
        """Consume the prompt ``x`` ([B, P] ids or [B, P, Din]) at position 0.

        Returns the model's outputs for every prompt position, in the model's own output
        structure. ``P`` may be 0 (nothing consumed; empty outputs).
        """
        if self._started:
            raise SessionError(f"prefill must come first (the session is at position {self.position}); call reset()")
        self._check(x, "prefill", None)
        if x.shape[1] == 0:
            self._started = True
            return self._empty_outputs(x)
        with torch.no_grad():
            outs = self.program.prefill(x.contiguous())
        self.position = x.shape[1]
        self._started = True
        return self._out_spec.unflatten(outs)

    def step(self, x_t: torch.Tensor) -> Any:
        """Consume one position ``x_t`` ([B, 1] ids or [B, 1, Din]); return its outputs."""
        if not self._started:
            raise SessionError("step before prefill: call prefill(prompt) first (an empty prompt "
                               "x[:, :0] is fine)")
        self._check(x_t, "step", 1)
        self._pos.fill_(self.position)
        with torch.no_grad():
            outs = self.program.step(x_t.contiguous(), self._pos)
        self.position += 1
        return self._out_spec.unflatten(outs)

    def reset(self) -> None:
        """Back to position 0 (the compiled program is kept)."""
        self.program.reset()
        self.position = 0
        self._started = False

    def state_dict(self) -> dict:
        """Everything needed to resume exactly: position and every engine / buffer state."""
        return {"position": self.position, "max_len": self.max_len, "batch_size": self.batch_size,
                "program": self.program.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict` (of a session of the same model, max_len and batch)."""
        if state.get("max_len") != self.max_len or state.get("batch_size") != self.batch_size:
            raise SessionError(f"state is for max_len={state.get('max_len')}, batch={state.get('batch_size')}; "
                               f"this session has max_len={self.max_len}, batch={self.batch_size}")
        self.program.load_state_dict(state["program"])
        self.position = int(state["position"])
        self._started = True

    def _empty_outputs(self, x: torch.Tensor) -> Any:
        """Outputs of a 0-length prompt: the model's structure with 0 positions (state unchanged)."""
        x1 = torch.zeros((x.shape[0], 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
        with torch.no_grad():
            outs = self.program.lowered.gm(x1)
        td = self.program.lowered.time_dim
        return self._out_spec.unflatten([o.narrow(td, 0, 0) if isinstance(o, torch.Tensor) and o.dim() > td else o
                                         for o in outs])

    def __repr__(self) -> str:
        p = self.program
        return (f"Session(position={self.position}, max_len={self.max_len}, batch={self.batch_size}, "
                f"long_convs={len(p.longs)}, short_convs={len(p.shorts)}, groups={len(p.engines)}, "
                f"engine={p.engine_kind}, kernels={self.kernel_note!r})")

    @property
    def kernel_note(self) -> str:
        """Which kernels the long convolutions run on, and why (from the engines)."""
        notes = sorted({getattr(e, "kernel_note", "torch ops") for e in self.program.engines})
        return "; ".join(notes) if notes else "no long convolutions"


def session(model_or_compiled: Any, example: torch.Tensor, max_len: int = 8192, **options: Any) -> Session:
    """A streaming session for ``model_or_compiled`` (a plain module or its ``torch.compile`` result).

    Args:
        example: a prompt-shaped input ([B, P] ids or [B, P, Din]); fixes the batch size,
            dtype, device and input kind of the session (its values are not consumed).
        max_len: the most positions the session can hold (prompt + generated).
        options: ``compile_step`` (bool, compile the step program with Inductor),
            ``engine`` ("online" | "lazy" | "eager": the long-conv algorithm; the last two are
            the benchmark baselines), ``engine_options`` (e.g. ``{"block": 16}``),
            ``debug_dir`` (write each compiler stage's graph there), ``kernels`` ("auto": the
            engine's fused native CPU kernels where a C compiler builds them, else torch ops;
            "torch": torch ops only; "triton" is reserved for GPU kernels and not available
            in this version).
    Raises:
        UnsupportedModelError: the model cannot be streamed exactly; names the op, its source
            line and the reason.
    """
    unknown = set(options) - set(DEFAULT_OPTIONS)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; known: {sorted(DEFAULT_OPTIONS)}")
    opts = {**DEFAULT_OPTIONS, **options}
    if not isinstance(example, torch.Tensor) or example.dim() < 2:
        raise SessionError("example must be a [B, L] or [B, L, Din] tensor")
    if max_len is None or int(max_len) < 1:
        raise SessionError(f"max_len must be >= 1, got {max_len}")
    if opts["kernels"] not in ("auto", "torch"):
        raise SessionError(f"kernels={opts['kernels']!r} is not available: this version has 'auto' (native CPU "
                           f"kernels where they build, else torch) and 'torch'")
    from .runtime import build_program

    ex = example if example.shape[1] >= 2 else example.repeat(*([1, 2] + [1] * (example.dim() - 2)))
    low = _lowered(model_or_compiled, ex, opts["debug_dir"], int(max_len))
    if not low.streamable:
        raise _refuse(low)
    if low.valid_range[1] is not None and max_len > low.valid_range[1]:
        raise SessionError(f"max_len={max_len} is longer than the model supports ({low.valid_range[1]} positions)")
    prog = build_program(low, int(max_len), example.shape[0], engine=opts["engine"],
                         compile_step=bool(opts["compile_step"]), engine_options=opts["engine_options"],
                         kernels=opts["kernels"])
    return Session(prog, example)
