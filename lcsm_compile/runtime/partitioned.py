"""Partitioned convolutions of the online engine: bounded work per step, bounded transient memory.

Two pieces of :class:`~lcsm_compile.runtime.engine.OnlineConv` whose work would otherwise grow
with ``max_len`` in one go:

* :class:`SplitTiles`: the delayed tiles of the *split* levels (``U >= split_from``,
  :func:`lcsm_compile.runtime.schedule.split_unit`). One row of such a tile is more work than a
  step may do (at 2^20 positions one row of the 2^18 level is three FFTs of 2^19 points, ~25 ms
  against a 0.5 ms step), so it is computed as a partitioned convolution with sub-tiles of size
  ``V = split_from / 2`` (a frequency-domain delay line): the spectra ``X_i`` of the ``m = U/V``
  input sub-blocks, the filter spectra ``K_o`` of the lag segments, and per output sub-block one
  inverse FFT of ``sum_i X_i K_{2m+j-i}``, each a unit of about one FFT of size ``2V`` spread
  over the steps by the schedule. No spectra of these levels are stored (the largest part of the
  per-level spectra: 8 bytes per channel-position in total), only the current row's: ``O(U)``.
* :func:`prompt_conv`: a prefill's contribution to every future output, as an overlap-save
  convolution in output blocks and channel chunks (one FFT of size ``>= P + max_len`` over all
  channels held ~24 bytes per channel-position of transforms at once).

Both are exact in the sense of the FFT tiles: circular convolutions sized so that no output
they keep wraps around, in the compute dtype.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from . import schedule

__all__ = ["SplitTiles", "prompt_conv", "PROMPT_BLOCK_BYTES"]

#: transient bytes of :func:`prompt_conv` per output block and channel chunk (its FFT buffers)
PROMPT_BLOCK_BYTES = 32 << 20


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


class _Row:
    """The input spectra of one row of one split tile: ``X [m, V+1]``, and the inputs they were
    computed from (``inp [m, V]``): a spectrum is used only while its inputs are unchanged, so the
    cache is never stale whatever happened to the state in between (a reset, a state load)."""

    __slots__ = ("key", "X", "inp", "valid")

    def __init__(self, key, m: int, V: int, dtype: torch.dtype, device):
        self.key = key
        self.X = torch.empty(m, V + 1, dtype=_complex(dtype), device=device)
        self.inp = torch.empty(m, V, dtype=dtype, device=device)
        self.valid = [False] * m


class SplitTiles:
    """Runs the chunks of split levels for one engine (:mod:`module doc <.partitioned>`).

    Holds, per split level, the input spectra of the row in progress and a few filter spectra
    of its channel (about ``16 U`` bytes per level); nothing else. :meth:`cache_bytes` is that
    bound (the memory model counts it)."""

    def __init__(self, V: int, dtype: torch.dtype, device):
        self.V, self.dtype, self.device = V, dtype, device
        self._rows: Dict[int, _Row] = {}
        self._k: Dict[int, Tuple[int, Dict[int, torch.Tensor]]] = {}

    @staticmethod
    def cache_bytes(levels, V: int, itemsize: int) -> int:
        """Upper bound of the caches for split ``levels`` (input spectra and inputs of one row,
        and up to ``m + 1`` filter spectra, per level)."""
        total = 0
        for U in levels:
            m = U // V
            total += m * (V + 1) * 2 * itemsize + m * V * itemsize + (m + 1) * (V + 1) * 2 * itemsize
        return total

    # -- the spectra
    def _x(self, eng, U: int, m: int, s0: int, b: int, c: int, i: int, check: bool) -> torch.Tensor:
        V = self.V
        row = self._rows.get(U)
        key = (s0, b, c)
        if row is None or row.key != key:
            row = self._rows[U] = _Row(key, m, V, eng.cdtype, eng.device)
        seg = eng.hist[b, c, s0 + i * V: s0 + (i + 1) * V]
        if row.valid[i] and (not check or torch.equal(row.inp[i], seg)):
            return row.X[i]
        row.X[i] = torch.fft.rfft(seg, n=2 * V)
        row.inp[i] = seg
        row.valid[i] = True
        return row.X[i]

    def _kspec(self, eng, U: int, m: int, c: int, o: int) -> torch.Tensor:
        V = self.V
        ch, cache = self._k.get(U, (-1, None))
        if ch != c or cache is None:
            cache = {}
            self._k[U] = (c, cache)
        K = cache.get(o)
        if K is None:
            lo, hi = (o - 1) * V, min((o + 1) * V, eng.max_len)
            seg = eng.k[c, lo:hi] if hi > lo else eng.k[c, :0]
            K = cache[o] = torch.fft.rfft(seg, n=2 * V)
            for old in [p for p in cache if p < o - m]:  # a sliding window of m + 1 offsets
                del cache[old]
        return K

    # -- the units
    def run(self, eng, w: schedule.Work) -> None:
        """The units ``w.units`` of the split tile ``w`` on ``eng``'s state."""
        U, s0 = w.level, w.s0
        u0, u1, V = w.units
        if V != self.V:
            raise ValueError(f"split work of sub-tile size {V} on an engine with {self.V}")
        m = U // V
        n_u = schedule.units_per_row(m)
        J = schedule.split_out_blocks(w, V)
        if J <= 0:
            return
        C = eng.channels
        T0, T1 = s0 + 2 * U, w.outs[-1][2]
        for u in range(u0, u1):
            row, q = divmod(u, n_u)
            b, c = divmod(row, C)
            kind, idx = schedule.split_unit(q, m)
            if kind == "x":
                self._x(eng, U, m, s0, b, c, idx, check=False)
            elif kind == "k":
                if idx <= 2 * m + J - 1:
                    self._kspec(eng, U, m, c, idx)
            elif idx < J:
                j = idx
                Y = None
                for i in range(m):
                    prod = self._x(eng, U, m, s0, b, c, i, check=True) * self._kspec(eng, U, m, c, 2 * m + j - i)
                    Y = prod if Y is None else Y.add_(prod)
                t0 = T0 + j * V
                n = min(V, T1 - t0)
                y = torch.fft.irfft(Y, n=2 * V)
                eng.acc[b, c, t0:t0 + n] += y[V:V + n]


def prompt_conv(u: torch.Tensor, k: torch.Tensor, out: Optional[torch.Tensor],
                block_bytes: int = PROMPT_BLOCK_BYTES) -> torch.Tensor:
    """The causal convolution of a prompt, in bounded memory.

    Args:
        u: ``[B, C, P]`` prompt inputs in the compute dtype.
        k: ``[C, K]`` filters (``K >= P + n`` where ``n`` is the length of ``out``; zero beyond).
        out: ``[B, C, n]`` accumulators of the outputs ``P .. P + n - 1`` (a view), to which the
            prompt's contribution ``sum_{s < P} u[s] k[t - s]`` is added; or None.
        block_bytes: transient bytes to aim at per output block and channel chunk.
    Returns:
        ``[B, C, P]``: the outputs of the prompt positions.

    Output blocks are overlap-save convolutions of size ``N`` (a power of two ``>= 2P``): the
    prompt's spectrum times the spectrum of the filter segment ``k[t0 - P + 1 : t0 + T]``; the
    outputs ``P - 1 .. P - 2 + T`` of the circular convolution have no wrap-around when
    ``N >= T + P - 1``. Channels go in chunks so that one block's buffers stay near
    ``block_bytes``.
    """
    B, C, P = u.shape
    n = 0 if out is None else out.shape[-1]
    cd = u.dtype
    isz = u.element_size()
    y = torch.empty(B, C, P, dtype=cd, device=u.device)
    if P == 0:
        return y
    n1 = 1 << (2 * P - 2).bit_length() if P > 1 else 2  # >= 2P - 1: the prompt's own outputs
    N = max(n1, 1 << 13)
    while N < 4 * P:
        N *= 2
    T = N - P + 1
    per_channel = (B + 1) * (N + 2) * isz * 3  # spectra of u, the segment, the product, the output
    cc = max(1, min(C, block_bytes // max(1, per_channel)))
    for c0 in range(0, C, cc):
        c1 = min(C, c0 + cc)
        uc = u[:, c0:c1]
        y[:, c0:c1] = torch.fft.irfft(torch.fft.rfft(uc, n=n1) * torch.fft.rfft(k[c0:c1, :P], n=n1), n=n1)[..., :P]
        if n <= 0:
            continue
        Uh = torch.fft.rfft(uc, n=N)
        for t0 in range(P, P + n, T):
            m = min(T, P + n - t0)
            seg = k[c0:c1, t0 - P + 1: t0 + m]
            z = torch.fft.irfft(Uh * torch.fft.rfft(seg, n=N), n=N)
            out[:, c0:c1, t0 - P: t0 - P + m] += z[..., P - 1: P - 1 + m]
    return y
