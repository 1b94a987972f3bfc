"""The streaming session: a program with a position, input checks, and pause / resume.

    sess = lcsm_compile.session(model, example=prompt, max_len=8192)
    y = sess.prefill(prompt)      # outputs for every prompt position, same structure as model(prompt)
    y_t = sess.step(x_next)       # output for the next position ([B, 1] ids or [B, 1, Din])

Made by :func:`lcsm_compile.session` (``api.py``) from an instantiated
:class:`~lcsm_compile.runtime.program.StreamProgram`. Wrong use (shape, dtype, device, batch,
past ``max_len``) raises :class:`~lcsm_compile.SessionError` and leaves the session usable.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..codegen import cpu_ops
from ..errors import SessionError

__all__ = ["Session", "intra_op_threads"]

from .threads import fp32_convolutions, intra_op_threads  # noqa: E402 - intra_op_threads re-exported here


def _dense_strides(shape) -> tuple:
    """The strides of a compact C-contiguous tensor of ``shape``."""
    out, acc = [], 1
    for n in reversed(shape):
        out.append(acc)
        acc *= max(int(n), 1)
    return tuple(reversed(out))


class Session:
    """A streaming session over one model (see :func:`session`).

    Attributes: ``position`` (positions consumed), ``max_len``, ``batch_size``, ``program``
    (the :class:`lcsm_compile.runtime.StreamProgram`: graphs, groups, engines).
    """

    def __init__(self, program, example: torch.Tensor, threads: Optional[int] = 1):
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
        self._cuda = example.device.type == "cuda"  # cuDNN in fp32 around the programs (threads.fp32_convolutions)
        #: intra-op threads of a step (None: leave torch's setting); set and restored per call
        self.threads = threads
        #: the memory model of this session (:class:`lcsm_compile.runtime.memory.MemoryReport`: the
        #: bytes by part predicted before allocation, ``.measured`` the tensors as allocated); set
        #: by :func:`lcsm_compile.session`
        self.memory = None

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
        with torch.no_grad(), fp32_convolutions(self._cuda):
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
        if not x_t.is_contiguous() or x_t.stride() != _dense_strides(x_t.shape):
            # a compact copy: a [B, 1] slice of a growing [B, L] keeps its row stride L, and a
            # compiled step (static shapes) would see a new stride, a recompile, every token
            x_t = x_t.clone(memory_format=torch.contiguous_format)
        try:
            with torch.no_grad(), intra_op_threads(self.threads), fp32_convolutions(self._cuda):
                outs = self.program.step(x_t, self._pos)
        except SessionError as e:
            if getattr(e, "state_reset", False):  # the program was reset (an error in its tile work)
                self.position, self._started = 0, False
            raise
        self.position += 1
        return self._out_spec.unflatten(outs)

    def reset(self) -> None:
        """Back to position 0 (the compiled program is kept)."""
        self.program.reset()
        self.position = 0
        self._started = False

    def state_dict(self, copy: bool = True) -> dict:
        """Everything needed to resume exactly: position and every engine / buffer state.

        ``copy=False``: the online engines' ``[B, C, max_len]`` buffers as views of the live state,
        not copies (a checkpoint of a long run without a second copy in memory: write it out, e.g.
        ``torch.save(sess.state_dict(copy=False), path)``, before the next step). A session made
        with the same model, ``max_len``, batch and ``engine_options`` (the schedule; fix them for
        runs to be resumed, docs/memory.md) resumes it with :meth:`load_state_dict`."""
        prog = self.program.state_dict() if copy else self.program.state_dict(copy=False)
        return {"position": self.position, "max_len": self.max_len, "batch_size": self.batch_size,
                "program": prog}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict` (of a session of the same model, max_len and batch)."""
        if state.get("max_len") != self.max_len or state.get("batch_size") != self.batch_size:
            raise SessionError(f"state is for max_len={state.get('max_len')}, batch={state.get('batch_size')}; "
                               f"this session has max_len={self.max_len}, batch={self.batch_size}")
        self.program.load_state_dict(state["program"])
        self.position = int(state["position"])
        self._started = True

    def _empty_outputs(self, x: torch.Tensor) -> Any:  # noqa: D401 - see the docstring below
        """Outputs of a 0-length prompt: the model's structure, dtypes and non-time sizes, with 0
        positions along each output's time dim (an output without one, as the model returns
        it). The lowered graph runs once on zeros at its shortest valid length (the graph
        cannot run at length 0: FFT sizes would be 0); the state is not touched."""
        low = self.program.lowered
        L1 = max(1, int(low.valid_range[0] or 1))
        x1 = torch.zeros((x.shape[0], L1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
        with torch.no_grad():
            outs = list(low.gm(x1))
        tds = self._output_time_dims(len(outs))
        return self._out_spec.unflatten([o.narrow(td, 0, 0) if isinstance(o, torch.Tensor) and td is not None
                                         and o.dim() > td else o for o, td in zip(outs, tds)])

    def _output_time_dims(self, n: int) -> list:
        """The time dim of each graph output (from the time-axis analysis; None: none), else
        the model's time dim for all."""
        low = self.program.lowered
        an = getattr(low, "analysis", None)
        nodes = list(low.gm.graph.find_nodes(op="output"))
        if an is not None and nodes:
            args = list(nodes[0].args[0])
            if len(args) == n:
                return [an.info[a.name].time_dim if hasattr(a, "name") and a.name in an.info else low.time_dim
                        for a in args]
        return [low.time_dim] * n

    def __repr__(self) -> str:
        p = self.program
        return (f"Session(position={self.position}, max_len={self.max_len}, batch={self.batch_size}, "
                f"long_convs={len(p.longs)}, short_convs={len(p.shorts)}, groups={len(p.engines)}, "
                f"engine={p.engine_kind}, kernels={self.kernel_note!r})")

    @property
    def kernel_note(self) -> str:
        """Which kernels the long convolutions run on, and why (from the engines)."""
        notes = sorted({getattr(e, "kernel_note", "torch ops") for e in self.program.engines})
        modal = getattr(self.program, "modal", None)
        if modal:  # modal long convolutions: recurrences, not the engine (runtime/modal.py)
            notes.append(f"{len(modal)} modal recurrence(s)")
        fn = getattr(getattr(self.program, "step_fn", None), "fn", None)
        graphs = getattr(fn, "note", None)
        if graphs:  # a compiled step on CUDA (runtime/cuda_graphs.py): its graphs, or why none
            notes.append(graphs)
        elif getattr(fn, "fn", None) is not None and self._device.type == "cpu":  # a compiled CPU step
            notes.append(cpu_ops.status())  # its per-step ops in C++, or why not (codegen/cpu_ops.py)
            if getattr(fn, "wrapper", None):  # Inductor's C++ or Python wrapper (runtime/program.py)
                notes.append(f"Inductor {fn.wrapper} wrapper" + (f" ({fn.wrapper_note})" if fn.wrapper_note else ""))
        return "; ".join(notes) if notes else "no long convolutions"
