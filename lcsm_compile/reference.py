"""Reference oracles for causal long convolutions.

These are the ground truth of the test suite and the baselines of ``benchmarks/``. They are
deliberately simple; each is the best honest version of its algorithm in plain torch.

* :func:`causal_conv_fft` - the full-sequence causal convolution, one FFT of size >= 2L.
* :func:`causal_conv_direct` - the same by the definition (O(L^2)), for tiny sizes and fp64
  golden values.
* :class:`LazyConv` - streaming, activations cached: each new output is a dot product over the
  whole input history (O(t) per step).
* :class:`EagerConv` - streaming: each new input is pushed into all future outputs
  (O(max_len - t) per step).

All use the layout of the engine: inputs ``[B, C, L]`` (time last), filters ``[C, K]``.
"""

from __future__ import annotations

import torch

from .errors import SessionError

__all__ = ["causal_conv_fft", "causal_conv_direct", "LazyConv", "EagerConv", "compute_dtype"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype convolutions are computed in: fp64 stays fp64, everything else is fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fft_size(n: int) -> int:
    """Smallest power of two >= n (at least 1)."""
    return 1 << max(0, (n - 1).bit_length())


def causal_conv_fft(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal convolution along the last dim: ``y[..., c, t] = sum_{s<=t} u[..., c, s] k[c, t-s]``.

    Args:
        u: ``[..., C, L]`` input.
        k: ``[C, K]`` filter (zero beyond ``K``), or ``[K]`` shared by all channels.
    Returns:
        ``[..., C, L]`` in the dtype of ``u``; computed in fp32 (fp64 for fp64 inputs).
    """
    L = u.shape[-1]
    if L == 0:
        return u.clone()
    cd = compute_dtype(u.dtype)
    kk = k[..., :L].to(cd)
    n = _fft_size(2 * L)
    U = torch.fft.rfft(u.to(cd), n=n)
    Kf = torch.fft.rfft(kk, n=n)
    y = torch.fft.irfft(U * Kf, n=n)[..., :L]
    return y.to(u.dtype)


def causal_conv_direct(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The causal convolution by its definition, O(L^2): the golden value for small tests."""
    L = u.shape[-1]
    cd = compute_dtype(u.dtype)
    kk = torch.zeros(*k.shape[:-1], L, dtype=cd, device=k.device)
    m = min(L, k.shape[-1])
    kk[..., :m] = k[..., :m].to(cd)
    uu = u.to(cd)
    y = torch.zeros_like(uu)
    for t in range(L):
        # sum_{s<=t} u[s] k[t-s]
        y[..., t] = (uu[..., : t + 1] * kk[..., : t + 1].flip(-1)).sum(-1)
    return y.to(u.dtype)


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
