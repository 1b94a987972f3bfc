"""Baseline engines: the other ways to stream a causal long convolution.

They implement the same group-engine protocol as :class:`lcsm_compile.runtime.engine.OnlineConv`
(:class:`Engine`), so a streaming program can run on any of them (``engine=`` option); they are
the test oracles of the sessions and the baselines of ``benchmarks/``. Each is the best honest
version of its algorithm in plain torch. (The full-sequence convolutions, FFT and by
definition, are in :mod:`lcsm_compile.ops`.)

* :class:`LazyConv` - streaming, activations cached: each new output is a dot product over the
  whole input history (O(t) per step).
* :class:`EagerConv` - streaming: each new input is pushed into all future outputs
  (O(max_len - t) per step).

All use the layout of the engine: inputs ``[B, C, L]`` (time last), filters ``[C, K]``.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..errors import SessionError
from ..ops import causal_conv_fft, compute_dtype

__all__ = ["Engine", "LazyConv", "EagerConv", "NullConv"]


class Engine(Protocol):
    """The group-engine protocol a streaming program drives (one engine per group).

    A group holds the concatenated channels of several long convolutions ("members"); member
    ``i`` owns the channel slice ``channels``. Per position: each member's ``diag(u, channels)``
    as soon as its input is known (layer by layer), then one ``advance()`` for the whole group.
    ``rollback()`` undoes the ``diag`` calls of a step that failed half-way.
    """

    position: int
    max_len: int

    def prefill_member(self, u: torch.Tensor, channels: slice = slice(None)) -> torch.Tensor: ...

    def finish_prefill(self, P: int) -> None: ...

    def diag(self, u: torch.Tensor, channels: slice = slice(None)) -> torch.Tensor: ...

    def advance(self) -> None: ...

    def reset(self) -> None: ...

    def rollback(self) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class _StreamingBase:
    """Shared part of the streaming oracles: the group interface of :class:`OnlineConv`.

    ``prefill``/``step`` for one convolution; ``prefill_member``/``finish_prefill`` and
    ``diag``/``advance`` for a group whose members (channel slices) compute one after another.
    """

    def __init__(self, k: torch.Tensor, max_len: int, batch_size: int = 1,
                 dtype: torch.dtype | None = None, **_ignored):
        if k.dim() != 2:
            raise SessionError(f"filters must be [C, K], got shape {tuple(k.shape)}")
        self.max_len = int(max_len)
        self.batch_size = int(batch_size)
        self.dtype = dtype or k.dtype
        self.cdtype = compute_dtype(self.dtype if self.dtype == torch.float64 else k.dtype)
        C, K = k.shape
        self.channels = C
        kk = torch.zeros(C, self.max_len, dtype=self.cdtype, device=k.device)
        m = min(K, self.max_len)
        kk[:, :m] = k[:, :m].to(self.cdtype)
        self.k = kk
        self.position = 0
        self.state = torch.zeros(self.batch_size, C, self.max_len, dtype=self.cdtype, device=k.device)

    def _check(self, u: torch.Tensor, channels: slice) -> None:
        C = len(range(*channels.indices(self.channels)))
        if tuple(u.shape) != (self.batch_size, C):
            raise SessionError(f"step input must be [{self.batch_size}, {C}], got {tuple(u.shape)}")
        if self.position >= self.max_len:
            raise SessionError(f"position {self.position} is past max_len={self.max_len}")

    def prefill(self, u: torch.Tensor) -> torch.Tensor:
        """Consume ``u [B, C, P]`` at position 0; return its outputs ``[B, C, P]``."""
        y = self.prefill_member(u)
        self.finish_prefill(u.shape[-1])
        return y

    def finish_prefill(self, P: int) -> None:
        """Move to position ``P`` after every member's ``prefill_member``."""
        self.position = P

    def step(self, u: torch.Tensor) -> torch.Tensor:
        """Consume one position ``u [B, C]``; return ``y [B, C]``."""
        y = self.diag(u)
        self.advance()
        return y

    def advance(self) -> None:
        """Move to the next position (all the work happened in ``diag``)."""
        if self.position >= self.max_len:
            raise SessionError(f"position {self.position} is past max_len={self.max_len}")
        self.position += 1

    def rollback(self) -> None:
        """Undo the ``diag`` calls of an unfinished step (lazy: nothing to undo, the history row
        is rewritten next time)."""

    def reset(self) -> None:
        """Back to position 0."""
        self.state.zero_()
        self.position = 0

    def state_dict(self) -> dict:
        """Position and state tensor (copies)."""
        return {"position": self.position, "state": self.state.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.state.copy_(state["state"])
        self.position = int(state["position"])


class LazyConv(_StreamingBase):
    """Streaming causal conv with the input history cached: O(t) work per step.

    ``step(u_t)`` returns ``y_t = sum_{s<=t} u_s k_{t-s}``, one dot product over the history
    (``state`` is the input history). The filter is stored reversed so the dot product reads
    both operands contiguously.
    """

    def __init__(self, k: torch.Tensor, max_len: int, batch_size: int = 1,
                 dtype: torch.dtype | None = None, **_ignored):
        super().__init__(k, max_len, batch_size, dtype)
        self.hist = self.state
        self.k_rev = self.k.flip(-1).contiguous()  # k_rev[c, max_len-1-i] = k[c, i]

    def prefill_member(self, u: torch.Tensor, channels: slice = slice(None)) -> torch.Tensor:
        """Record the prompt ``u [B, C', P]`` of ``channels``; return its outputs (full FFT conv)."""
        P = u.shape[-1]
        if self.position + P > self.max_len:
            raise SessionError(f"prefill of {P} positions passes max_len={self.max_len}")
        if self.position != 0:
            raise SessionError("prefill must come first")
        self.hist[:, channels, :P] = u.to(self.hist.dtype)
        return causal_conv_fft(u, self.k[channels])

    def diag(self, u: torch.Tensor, channels: slice = slice(None)) -> torch.Tensor:
        """Output of the current position for ``channels``: a dot product over the history."""
        self._check(u, channels)
        t = self.position
        self.hist[:, channels, t] = u.to(self.hist.dtype)
        # y_t = sum_{s<=t} hist[s] * k[t-s] = sum_s hist[s] * k_rev[max_len-1-t+s]
        kr = self.k_rev[channels, self.max_len - 1 - t:]
        y = torch.einsum("bcs,cs->bc", self.hist[:, channels, : t + 1], kr)
        return y.to(self.dtype)


class EagerConv(_StreamingBase):
    """Streaming causal conv that pushes each new input into all future outputs.

    ``step(u_t)``: ``acc[t:] += u_t * k[: max_len - t]``, then ``y_t = acc[t]``:
    O(max_len - t) work per step (``state`` is the accumulator).
    """

    def __init__(self, k: torch.Tensor, max_len: int, batch_size: int = 1,
                 dtype: torch.dtype | None = None, **_ignored):
        super().__init__(k, max_len, batch_size, dtype)
        self.acc = self.state
        self._pending: list = []

    def prefill_member(self, u: torch.Tensor, channels: slice = slice(None)) -> torch.Tensor:
        """Outputs for the prompt ``u [B, C', P]`` of ``channels`` and its contribution to the future."""
        P = u.shape[-1]
        if self.position + P > self.max_len:
            raise SessionError(f"prefill of {P} positions passes max_len={self.max_len}")
        if self.position != 0:
            raise SessionError("prefill must come first")
        full = torch.zeros(*u.shape[:-1], self.max_len, dtype=self.acc.dtype, device=u.device)
        full[..., :P] = u.to(self.acc.dtype)
        self.acc[:, channels] += causal_conv_fft(full, self.k[channels])
        return self.acc[:, channels, :P].to(self.dtype)

    def diag(self, u: torch.Tensor, channels: slice = slice(None)) -> torch.Tensor:
        """Output of the current position for ``channels``: push ``u`` into all future outputs."""
        self._check(u, channels)
        t = self.position
        n = self.max_len - t
        self.acc[:, channels, t:].addcmul_(u.to(self.acc.dtype)[..., None], self.k[channels, :n])
        self._pending.append((channels, u))
        return self.acc[:, channels, t].to(self.dtype)

    def advance(self) -> None:
        """Move to the next position."""
        super().advance()
        self._pending = []

    def rollback(self) -> None:
        """Undo the pushes of an unfinished step (subtracts them again: exact up to rounding)."""
        t, n = self.position, self.max_len - self.position
        for channels, u in self._pending:
            self.acc[:, channels, t:].addcmul_(u.to(self.acc.dtype)[..., None], self.k[channels, :n], value=-1)
        self._pending = []


class NullConv:
    """A long convolution that costs nothing: ``y = k[0] * u`` (the benchmarks' floor: the
    model's position-wise work alone; NOT exact)."""

    def __init__(self, k, max_len, batch_size=1, dtype=None, **_):
        self.k0 = k[:, 0].to(dtype or k.dtype)
        self.position = 0
        self.max_len = max_len

    def prefill_member(self, u, channels=slice(None)):
        return u * self.k0[channels, None]

    def finish_prefill(self, P):
        self.position = P

    def diag(self, u, channels=slice(None)):
        return u * self.k0[channels]

    def advance(self):
        self.position += 1

    def reset(self):
        self.position = 0

    def rollback(self):
        pass

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, s):
        self.position = s["position"]
