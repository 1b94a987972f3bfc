"""Measured cost model of the online convolution's primitives on this machine.

For a group of ``C`` channels and batch ``B`` the engine must choose

* ``block``: the size of the aligned blocks whose pairs a step computes directly (a dot
  product over the block so far) instead of through small tiles, and
* ``fft_from``: the smallest tile size computed by FFT (smaller tiles use the direct
  product: the native CPU kernel where it builds, else the batched Toeplitz product).

Both are chosen by timing the primitives at the group's real shape (median of a few runs)
and minimizing the predicted amortized time per step. Results are cached per
``(B, C, dtype, device, tile levels, kernels)``, the last 64 keys, for the life of the process. Nothing here is a guess: the only
constants are the candidate sets and the memory cap on Toeplitz blocks.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..codegen import kernels_for, red_cells
from ..codegen.tiles import direct_tile, fft_tile  # the real primitives, timed as they run

__all__ = ["Plan", "choose_plan", "DIRECT_MAX_BYTES"]

# Largest Toeplitz block the direct primitive may hold per level ([C, U, U] of the compute dtype).
DIRECT_MAX_BYTES = 64 * 2**20
_BLOCKS = (1, 2, 4, 8, 16, 32, 64)
_DIRECT_LEVELS = (1, 2, 4, 8, 16, 32, 64, 128)
_NATIVE_DIRECT_LEVELS = _DIRECT_LEVELS + (256, 512)
#: measured plans, keyed by everything the measurement depends on; least recently used first
_cache: "OrderedDict[tuple, Plan]" = OrderedDict()
_CACHE_SIZE = 64


@dataclass(frozen=True)
class Plan:
    """The engine's choices for one group, with the timings they came from (seconds)."""

    block: int
    fft_from: int
    #: level from which tiles are delayed and spread over the steps (set by the engine:
    #: :func:`lcsm_compile.runtime.schedule.default_delay_from` unless given); None: not chosen here
    delay_from: Optional[int] = None
    measured: dict = field(default_factory=dict, compare=False, hash=False)

    def describe(self) -> str:
        """One line for reports: the choices and why."""
        d = "" if self.delay_from is None else f" delay_from={self.delay_from}"
        return f"block={self.block} fft_from={self.fft_from}{d} (measured: {len(self.measured)} timings)"


def _robust_time(fn, reps: int = 9) -> float:
    """Robust time of ``fn``: the mean of the fastest third of ``reps`` runs (other processes
    only ever add time, so the fast runs are the ones that measure the primitive)."""
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    fast = ts[: max(1, reps // 3)]
    return sum(fast) / len(fast)


def choose_plan(batch: int, channels: int, dtype: torch.dtype, device: torch.device,
                max_tile: int, native: bool = False) -> Plan:
    """Measure the primitives at ``[batch, channels]`` and pick ``block`` and ``fft_from``.

    Args:
        max_tile: the largest tile size the group can use (no need to time beyond it).
        native: time the native CPU kernels (:mod:`lcsm_compile.codegen.red_cells`) for the
            red cells, the block transposes and the direct tiles, as the engine will run them.
    """
    device = torch.device(device)
    nk = None
    if native:
        nk, _ = kernels_for(dtype, device)
    key = (batch, channels, dtype, device.type, max(1, max_tile).bit_length(), nk is not None)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]

    B, C = batch, channels
    itemsize = torch.empty((), dtype=dtype).element_size()
    measured: dict[str, float] = {}
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype).to(device)

    direct_t: dict[int, float] = {}
    fft_t: dict[int, float] = {}
    for U in (_NATIVE_DIRECT_LEVELS if nk is not None else _DIRECT_LEVELS):
        if U > max(1, max_tile):
            break
        a = rnd(B, C, U)
        acc = torch.zeros(B, C, 2 * U, dtype=dtype, device=device)
        spec = torch.fft.rfft(rnd(C, 2 * U), n=2 * U)
        fft_t[U] = _robust_time(lambda: fft_tile(a, spec, acc[..., U:], U))
        measured[f"fft[{U}]"] = fft_t[U]
        if nk is not None:  # the native direct tile reads k and the time-last state directly
            hist, kk = rnd(B, C, 2 * U), rnd(C, 2 * U)
            direct_t[U] = _robust_time(lambda: nk.direct_tile(hist.data_ptr(), acc.data_ptr(), kk.data_ptr(), 0, U, U,
                                                              U, B, C, 2 * U, 2 * U))
            measured[f"direct[{U}]"] = direct_t[U]
        elif C * U * U * itemsize <= DIRECT_MAX_BYTES:
            T = rnd(C, U, U)
            direct_t[U] = _robust_time(lambda: direct_tile(a, T, acc[..., U:], U))
            measured[f"direct[{U}]"] = direct_t[U]

    # fft_from: the smallest measured level from which FFT is not slower than direct.
    fft_from = None
    for U in sorted(fft_t):
        if U not in direct_t or fft_t[U] <= direct_t[U]:
            fft_from = U
            break
    if fft_from is None:
        fft_from = 2 * max(fft_t) if fft_t else 1

    def tile_cost(U: int) -> float:
        if U in direct_t and U < fft_from:
            return direct_t[U]
        return fft_t.get(U, fft_t[max(fft_t)] * (U / max(fft_t)) if fft_t else 0.0)

    # block: minimize (mean red-cell step) + (block load + flush) / block
    #        + sum over the small levels it replaces of tile / (2U).
    nb = max(_BLOCKS)
    blk_hist = torch.zeros(nb, B, C, dtype=dtype, device=device)
    blk_acc = torch.zeros(nb, B, C, dtype=dtype, device=device)
    u_row, y_row = rnd(B, C), torch.empty(B, C, dtype=dtype, device=device)
    kr = rnd(nb, 1, C)
    state = torch.zeros(B, C, 4 * nb, dtype=dtype, device=device)
    stage = torch.empty(B, C, nb, dtype=dtype, device=device)
    best = None
    for blk in _BLOCKS:
        if blk > max(1, max_tile) * 2 and blk > 1:
            break
        r = blk - max(1, (blk + 1) // 2)  # the step's push into the rest of its block: mean size
        if nk is not None:
            params = red_cells.red_step_params(blk_hist[:blk], blk_acc[:blk], kr[:blk], 0, C)
            red = _robust_time(lambda: nk.red_step(params.data_ptr(), u_row.data_ptr(), y_row.data_ptr(), r))
            trans = _robust_time(lambda: (nk.load_block(state.data_ptr(), blk_acc.data_ptr(), nb, blk, B, C, 4 * nb),
                                          nk.flush_block(blk_hist.data_ptr(), state.data_ptr(), nb, blk, B, C, 4 * nb)))
        else:
            red = _robust_time(lambda: red_cells.red_step_reference(u_row, blk_hist[r], blk_acc[r:blk], kr[:blk - r],
                                                                    blk_acc[r]))
            trans = _robust_time(lambda: (red_cells.load_block_reference(state, blk_acc, stage, nb, blk),
                                          red_cells.flush_block_reference(blk_hist, state, stage, nb, blk)))
        small = sum(tile_cost(U) / (2 * U) for U in _DIRECT_LEVELS if blk <= U < max(_BLOCKS))
        cost = red + trans / blk + small
        measured[f"block[{blk}]"] = cost
        if best is None or cost < best[0]:
            best = (cost, blk)
    plan = Plan(block=best[1], fft_from=fft_from, measured=measured)
    _cache[key] = plan
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return plan
