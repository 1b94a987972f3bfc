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
    """Shared bookkeeping of the streaming oracles: shapes, position, errors."""

    def __init__(self, k: torch.Tensor, max_len: int, batch_size: int = 1,
                 dtype: torch.dtype | None = None):
        if k.dim() != 2:
            raise SessionError(f"filters must be [C, K], got shape {tuple(k.shape)}")
        self.max_len = int(max_len)
        self.batch_size = int(batch_size)
        self.dtype = dtype or k.dtype
        cd = compute_dtype(self.dtype)
        C, K = k.shape
        self.channels = C
        kk = torch.zeros(C, self.max_len, dtype=cd, device=k.device)
        m = min(K, self.max_len)
        kk[:, :m] = k[:, :m].to(cd)
        self.k = kk
        self.position = 0

    def _check(self, u: torch.Tensor) -> None:
        if u.shape != (self.batch_size, self.channels):
            raise SessionError(f"step input must be [{self.batch_size}, {self.channels}], got {tuple(u.shape)}")
        if self.position >= self.max_len:
            raise SessionError(f"position {self.position} is past max_len={self.max_len}")


class LazyConv(_StreamingBase):
    """Streaming causal conv with the input history cached: O(t) work per step.

    ``step(u_t)`` returns ``y_t = sum_{s<=t} u_s k_{t-s}``, one dot product over the history.
    The filter is stored reversed so the dot product reads both operands contiguously.
    """

    def __init__(self, k: torch.Tensor, max_len: int, batch_size: int = 1,
                 dtype: torch.dtype | None = None):
        super().__init__(k, max_len, batch_size, dtype)
        cd = compute_dtype(self.dtype)
        self.hist = torch.zeros(self.batch_size, self.channels, self.max_len, dtype=cd, device=k.device)
        self.k_rev = self.k.flip(-1).contiguous()  # k_rev[c, max_len-1-i] = k[c, i]

    def prefill(self, u: torch.Tensor) -> torch.Tensor:
        """Consume ``u [B, C, P]``; return its outputs ``[B, C, P]`` (full FFT conv)."""
        P = u.shape[-1]
        if self.position + P > self.max_len:
            raise SessionError(f"prefill of {P} positions passes max_len={self.max_len}")
        if self.position != 0:
            raise SessionError("prefill must come first")
        self.hist[..., :P] = u.to(self.hist.dtype)
        self.position = P
        return causal_conv_fft(u, self.k)

    def step(self, u: torch.Tensor) -> torch.Tensor:
        """Consume one position ``u [B, C]``; return ``y [B, C]``."""
        self._check(u)
        t = self.position
        self.hist[..., t] = u.to(self.hist.dtype)
        # y_t = sum_{s<=t} hist[s] * k[t-s] = sum_s hist[s] * k_rev[max_len-1-t+s]
        kr = self.k_rev[:, self.max_len - 1 - t:]
        y = torch.einsum("bcs,cs->bc", self.hist[..., : t + 1], kr)
        self.position = t + 1
        return y.to(self.dtype)


class EagerConv(_StreamingBase):
    """Streaming causal conv that pushes each new input into all future outputs.

    ``step(u_t)``: ``acc[t:] += u_t * k[: max_len - t]``, then ``y_t = acc[t]``:
    O(max_len - t) work per step.
    """

    def __init__(self, k: torch.Tensor, max_len: int, batch_size: int = 1,
                 dtype: torch.dtype | None = None):
        super().__init__(k, max_len, batch_size, dtype)
        cd = compute_dtype(self.dtype)
        self.acc = torch.zeros(self.batch_size, self.channels, self.max_len, dtype=cd, device=k.device)

    def prefill(self, u: torch.Tensor) -> torch.Tensor:
        """Consume ``u [B, C, P]``: outputs for the prompt, and its contribution to the future."""
        P = u.shape[-1]
        if self.position + P > self.max_len:
            raise SessionError(f"prefill of {P} positions passes max_len={self.max_len}")
        if self.position != 0:
            raise SessionError("prefill must come first")
        full = torch.zeros(*u.shape[:-1], self.max_len, dtype=self.acc.dtype, device=u.device)
        full[..., :P] = u.to(self.acc.dtype)
        self.acc += causal_conv_fft(full, self.k)
        self.position = P
        return self.acc[..., :P].to(self.dtype)

    def step(self, u: torch.Tensor) -> torch.Tensor:
        """Consume one position ``u [B, C]``; return ``y [B, C]``."""
        self._check(u)
        t = self.position
        n = self.max_len - t
        self.acc[..., t:].addcmul_(u.to(self.acc.dtype)[..., None], self.k[:, :n])
        self.position = t + 1
        return self.acc[..., t].to(self.dtype)
