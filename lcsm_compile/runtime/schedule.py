"""The relaxed tiling schedule of the online convolution (pure functions, no tensors).

Positions are 0-based. After a prefill of ``P`` positions, the engine steps positions
``t = P, P+1, ...``; ``r = t - P`` is the position relative to the prefill and ``j = r + 1``
the number of positions stepped so far. ``n = max_len - P`` relative positions exist.

Pairs ``(s, t)`` with ``s <= t`` (input ``s`` contributes ``u[s] k[t-s]`` to output ``t``); below
``s, t`` are relative and ``Delta_U = t // U - s // U``:

* ``s < P`` (absolute): the prefill adds the whole prompt's contribution to every future output.
* same aligned *block* of ``block`` positions (``Delta_block == 0``): the step computes them
  directly, one dot product over the block so far ("red cells"; ``block == 1``: the diagonal).
* same aligned *D-block* (``Delta_D == 0``, ``D = delay_from``, a power of two ``>= block``):
  exactly one *immediate tile* of level ``U < D``: after step ``j`` with ``U = j & -j``,
  ``block <= U < D``, inputs ``[j-U, j)`` go into outputs ``[j, j+U)`` (lags ``1 .. 2U-1``).
* neighbouring D-blocks (``Delta_D == 1``): the immediate tile of level ``D`` after every step
  ``j`` that is a multiple of ``D``: inputs ``[j-D, j)`` -> outputs ``[j, j+D)``.
* ``Delta_D >= 2``: the unique level ``U >= D`` with ``Delta_U in {2, 3}`` and ``Delta_2U == 1``
  holds the pair in a *delayed tile* ``(U, a)``: input U-block ``a`` -> output U-block ``a + 2``
  (always) and ``a + 3`` (only when ``a`` is even). Its inputs are complete after step
  ``j = (a+1)U`` and its first outputs are read when the red-cell block at ``(a+2)U`` is loaded,
  so its work is spread over the ``U`` steps ``j = (a+1)U .. (a+2)U - 1``: the ``R`` rows
  (batch x channels, batch-major) are cut into ``W = U / p`` chunks, chunk ``i`` holding rows
  ``[i R // W, (i+1) R // W)`` and done by the step ``j = (a+1)U + c + i p``
  (:func:`chunk_plan`: per level a period ``p`` for chunks of about ``chunk_flops``, and a residue
  ``c``, chosen so that no two levels' chunks share a step and none lands on a block end, where
  the immediate tiles run). Everything is a function of the relative position only, so a state
  saved at any step (halfway through a delayed tile included) resumes exactly.

The tile with output offset ``o`` (in units of ``U``) reads lags ``(o-1)U + 1 .. (o+1)U - 1``:
the immediate tiles are ``o = 1``. ``delay_from >= n`` (or None in the functions below, except
:func:`tiling_flops`) gives the schedule without delayed tiles: every level immediate, exactly
the tiling of Oncescu et al. 2024 ("Flash Inference") for ``block == 1``; there the step
``j = 2^m`` runs a whole tile of size ``2^m``, so one step in ``L`` waits for ``O(L log L)``
work. With delays a step does at most the level-``D`` tile (at a block end) or one chunk
(elsewhere; about ``chunk_flops``, more only where the levels' chunks would otherwise need more
than one step each), a small multiple of the mean step for every ``L``
(tests/test_schedule.py: ``test_step_work_is_bounded``).

Every tile and chunk of a step reads inputs already flushed to the history (at or before the
step), so the work of all convolutions of a model at one step can run together (cross-layer
parallel groups). The delayed tiles cost more FFT work than the whole tiles they replace
(``(1 + outputs)`` transforms of size ``2U`` per U-block instead of 2 per two U-blocks: about
2.5x for the levels ``>= D``); :func:`tiling_flops` counts it.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Iterator, NamedTuple, Optional

__all__ = ["Tile", "Work", "tile_level", "tile_after_step", "block_start", "iter_cells", "iter_row_cells",
           "tiling_flops", "levels", "delayed_levels", "step_work", "next_delayed_step", "step_flops",
           "tile_flops", "tile_cost", "default_delay_from", "chunk_plan", "is_boundary", "Schedule",
           "DELAY_BUDGET_FLOPS", "CHUNK_FLOPS", "FFT_WEIGHT", "default_split_from", "split_unit",
           "units_per_row", "split_out_blocks", "split_row_flops", "unit_flops", "work_cells", "NO_SPLIT",
           "SPLIT_MIN_LEVEL"]

#: FFT tiles run at about a third of the FLOP rate of the direct tiles (measured in long runs on
#: this project's CPU, 1 thread, state cold: native direct tiles ~20 GFLOP/s, FFT tiles and
#: chunks ~6 GFLOP/s): :func:`tile_cost` weighs FFT FLOPs by this factor.
FFT_WEIGHT = 3
#: Default ``delay_from``: the largest level whose immediate tile (and every smaller one) costs at
#: most this much (:func:`tile_cost`, all rows): ~2 ms here. C = 1024 channels: D = 128 at
#: batch 1 (a native direct tile, ~1.5 ms), D = 32 at batch 8 (~2 ms), against model steps of
#: ~3-4 ms (docs/engine.md).
DELAY_BUDGET_FLOPS = 40_000_000
#: Default work of one chunk of a delayed tile (:func:`tile_cost`): ~1-1.5 ms here. Larger
#: chunks mean fewer Python calls, smaller ones a flatter step time.
CHUNK_FLOPS = 25_000_000


class Tile(NamedTuple):
    """One tile: inputs ``[s0, s1)`` contribute to outputs ``[t0, t1)`` (absolute positions)."""

    s0: int
    s1: int
    t0: int
    t1: int

    @property
    def size(self) -> int:
        """U: the number of inputs (and outputs before clipping) of the tile."""
        return self.s1 - self.s0


class Work(NamedTuple):
    """One piece of tile work done by the advance of one step (absolute positions).

    Inputs ``[s0, s1)`` (``s1 - s0 == level``) of rows ``[r0, r1)`` (rows = batch x channels,
    batch-major) contribute to the output ranges ``outs = ((o, t0, t1), ...)``, ``o`` the output
    offset in units of the level (``t0 == s0 + o * level``, ``t1`` clipped to ``max_len``).
    ``delayed``: a chunk of a delayed tile (else an immediate tile, all rows).
    ``units``: ``()``, or for a chunk of a *split* level (``level >= split_from``,
    :func:`split_unit`) ``(u0, u1, V)``: the units ``u0 .. u1 - 1`` of the tile in row-major
    order (``units_per_row(level // V)`` per row; rows ``[r0, r1)`` are the rows they touch),
    ``V`` the sub-tile size. ``outs`` is then the whole tile's; which of its cells a chunk
    computes is :func:`work_cells`.
    """

    level: int
    s0: int
    s1: int
    outs: tuple
    r0: int
    r1: int
    delayed: bool
    units: tuple = ()


def _check_block(block: int) -> None:
    if block < 1 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 1, got {block}")


def _delay(delay_from: Optional[int], block: int) -> int:
    """``delay_from`` checked; None -> no delayed tiles (an infinite D)."""
    _check_block(block)
    if delay_from is None:
        return 1 << 62
    if delay_from < block or delay_from & (delay_from - 1):
        raise ValueError(f"delay_from must be a power of two >= block={block}, got {delay_from}")
    return int(delay_from)


def tile_level(j: int) -> int:
    """``U = j & -j``: the largest power of two dividing ``j`` (``j >= 1``)."""
    if j < 1:
        raise ValueError(f"j must be >= 1, got {j}")
    return j & -j


def tile_after_step(t: int, prefill: int, max_len: int, block: int = 1,
                    delay_from: Optional[int] = None) -> Tile | None:
    """The immediate tile run after step ``t`` (absolute position), or None.

    Its level is ``min(j & -j, delay_from)``. None when the level is below ``block`` (covered by
    red cells) or when all its outputs lie at or past ``max_len``. Outputs are clipped to
    ``max_len``. Delayed tiles: :func:`step_work`.
    """
    D = _delay(delay_from, block)
    j = t - prefill + 1
    U = tile_level(j)
    if U < block:
        return None
    U = min(U, D)
    t0 = prefill + j
    t1 = min(t0 + U, max_len)
    if t0 >= t1:
        return None
    return Tile(t0 - U, t0, t0, t1)


def block_start(t: int, prefill: int, block: int = 1) -> int:
    """First position of the aligned red-cell block that holds step ``t``."""
    _check_block(block)
    r = t - prefill
    return prefill + (r // block) * block


def is_boundary(t: int, prefill: int, max_len: int, block: int = 1) -> bool:
    """Whether step ``t`` ends its red-cell block (its advance flushes the block's inputs to the
    history, runs the immediate tiles and loads the next block)."""
    return (t - prefill + 1) % block == 0 or t + 1 >= max_len


def levels(max_len: int, prefill: int = 0, block: int = 1, delay_from: Optional[int] = None) -> list[int]:
    """The immediate tile sizes U (powers of two, ``block <= U <= delay_from``) that steps can
    use before ``max_len``."""
    D = _delay(delay_from, block)
    n = max_len - prefill
    out = []
    U = block
    while U < n and U <= D:  # a tile of size U needs j = U (or a multiple) with outputs before max_len
        out.append(U)
        U *= 2
    return out


def delayed_levels(max_len: int, prefill: int = 0, block: int = 1, delay_from: Optional[int] = None) -> list[int]:
    """The levels ``U >= delay_from`` of delayed tiles before ``max_len`` (outputs from ``2U``)."""
    D = _delay(delay_from, block)
    n = max_len - prefill
    out = []
    U = D
    while 2 * U < n:
        out.append(U)
        U *= 2
    return out


def tile_flops(U: int, outputs: int = 1, fft: bool = True) -> float:
    """FLOPs of one tile of level ``U`` with ``outputs`` output blocks, per row.

    FFT: ``1 + outputs`` real FFTs of size ``2U`` (``2.5 n log2 n`` each; the forward transform
    is shared) and per output the complex product (``6 (U+1)``) and the accumulate (``U``).
    Direct: ``2 U^2`` per output block.
    """
    if not fft:
        return outputs * 2.0 * U * U
    n = 2 * U
    return (1 + outputs) * 2.5 * n * math.log2(n) + outputs * (6 * (U + 1) + U)


def tile_cost(U: int, outputs: int = 1, fft_from: Optional[int] = None) -> float:
    """Predicted cost of one tile per row, in direct-tile FLOPs: :func:`tile_flops`, FFT FLOPs
    (levels ``>= fft_from``; None: all direct) weighed by :data:`FFT_WEIGHT`."""
    fft = fft_from is not None and U >= fft_from
    return tile_flops(U, outputs, fft) * (FFT_WEIGHT if fft else 1)


def default_delay_from(rows: int, block: int = 1, fft_from: Optional[int] = None,
                       budget: float = DELAY_BUDGET_FLOPS) -> int:
    """The default ``delay_from`` for ``rows`` = batch x channels: the largest power of two
    ``D >= block`` such that the immediate tiles of every level ``block .. D`` cost at most
    ``budget`` (:func:`tile_cost`, all rows); ``block`` if even that one does not fit."""
    _check_block(block)
    D = block
    while rows * tile_cost(2 * D, 1, fft_from) <= budget:
        D *= 2
    return D


# ---------------------------------------------------------------- split levels
#: ``split_from`` meaning "no split level"
NO_SPLIT = 1 << 62
#: the smallest level :func:`default_split_from` splits
SPLIT_MIN_LEVEL = 1 << 14


def default_split_from(chunk_flops: float = CHUNK_FLOPS, fft_from: Optional[int] = None) -> int:
    """The default ``split_from``: the smallest power of two ``U >= max(2 fft_from,
    SPLIT_MIN_LEVEL)`` whose delayed tile costs more than ``chunk_flops`` *per row*
    (:func:`tile_cost` with two outputs): from there one row of a tile is more than one chunk's
    work, so the tiles are split (:func:`split_unit`). :data:`NO_SPLIT` without FFT tiles. A
    pure function of the schedule's parameters (a restored state sees the same schedule)."""
    if fft_from is None:
        return NO_SPLIT
    U = SPLIT_MIN_LEVEL
    while U < 2 * fft_from:
        U *= 2
    while tile_cost(U, 2, fft_from) <= chunk_flops and U < NO_SPLIT:
        U *= 2
    return U


def _check_split(split_from: int) -> int:
    split_from = int(split_from)
    if split_from < 2 or split_from & (split_from - 1):
        raise ValueError(f"split_from must be a power of two >= 2, got {split_from}")
    return split_from


def units_per_row(m: int) -> int:
    """Units of one row of a split tile with ``m = U / V`` input sub-blocks: ``6m - 1``."""
    return 6 * m - 1


def split_unit(q: int, m: int) -> tuple[str, int]:
    """Unit ``q`` of one row of a split delayed tile of level ``U = m V`` (sub-tiles of size ``V``).

    A split tile is the delayed tile computed as a partitioned convolution (a frequency-domain
    delay line of sub-tiles of size ``V``), one row at a time, in units of about one FFT of size
    ``2V`` each, so that no step does more than a chunk's work however large ``U``:

    * ``("x", i)``, ``i < m``: the spectrum ``X_i = rfft(hist[s0 + iV : s0 + (i+1)V], 2V)``;
    * ``("k", o)``: the filter spectrum ``K_o = rfft(k[(o-1)V : (o+1)V], 2V)`` (offsets
      ``o = m+1 .. 4m-1``);
    * ``("out", j)``: output sub-block ``j`` (outputs ``s0 + 2U + jV ..``, ``j < 2m``):
      ``irfft(sum_i X_i K_{2m+j-i}, 2V)[V:2V]`` added to the accumulators (the cells of inputs
      ``[s0, s0 + U)`` x those ``V`` outputs).

    Order: ``X_0 .. X_{m-1}``, ``K_{m+1} .. K_{2m}``, then ``out_0, K_{2m+1}, out_1, K_{2m+2},
    .., out_{2m-1}``: each out unit finds the spectra it needs computed by the units before it
    (an engine recomputes what it lacks, e.g. after a state load: the order is for speed only).
    Units a tile does not need (:func:`split_out_blocks`: the outputs stop at ``max_len``, odd
    tiles have one output block) are no-ops.
    """
    if q < m:
        return ("x", q)
    if q < 2 * m:
        return ("k", q + 1)
    r = q - 2 * m
    return ("out", r // 2) if r % 2 == 0 else ("k", 2 * m + 1 + r // 2)


def split_out_blocks(w: "Work", V: int) -> int:
    """``J``: the output sub-blocks of size ``V`` of the split tile of ``w`` (its outputs run
    from ``s0 + 2U`` to the end of its last output range)."""
    t0 = w.s0 + 2 * w.level
    return max(0, -(-(w.outs[-1][2] - t0) // V)) if w.outs else 0


def _split_needed(kind: str, idx: int, m: int, J: int) -> bool:
    if kind == "x":
        return J > 0
    if kind == "k":
        return idx <= 2 * m + J - 1 and J > 0
    return idx < J


def unit_flops(kind: str, V: int, m: int) -> float:
    """FLOPs of one unit (:func:`split_unit`): a real FFT of size ``2V``; an out unit adds its
    ``m`` complex multiply-adds of ``V + 1`` and the ``V`` additions to the accumulators."""
    n = 2 * V
    f = 2.5 * n * math.log2(n)
    return f + 8.0 * m * (V + 1) + V if kind == "out" else f


def split_row_flops(U: int, V: int, J: int) -> float:
    """FLOPs of one row of a split tile of level ``U`` with ``J`` output sub-blocks."""
    m = U // V
    if J <= 0:
        return 0.0
    return (m + (m + J - 1)) * unit_flops("x", V, m) + J * unit_flops("out", V, m)


def work_cells(w: "Work") -> Iterator[tuple[int, int, int]]:
    """The ``(s, t, row)`` cells that ``w`` computes (a chunk of a split level: those of its out
    units)."""
    if not w.units:
        for row in range(w.r0, w.r1):
            for o, t0, t1 in w.outs:
                for s in range(w.s0, w.s1):
                    for tt in range(t0, t1):
                        yield s, tt, row
        return
    u0, u1, V = w.units
    m = w.level // V
    n_u = units_per_row(m)
    J = split_out_blocks(w, V)
    T0, T1 = w.s0 + 2 * w.level, w.outs[-1][2] if w.outs else 0
    for u in range(u0, u1):
        row, q = divmod(u, n_u)
        kind, j = split_unit(q, m)
        if kind == "out" and j < J:
            for s in range(w.s0, w.s1):
                for tt in range(T0 + j * V, min(T0 + (j + 1) * V, T1)):
                    yield s, tt, row


def work_flops(w: "Work", fft_from: Optional[int] = None) -> float:
    """FLOPs of one piece of work, all its rows (:func:`tile_flops`, or the units of a split
    chunk)."""
    if not w.units:
        fft = fft_from is not None and w.level >= fft_from
        return (w.r1 - w.r0) * tile_flops(w.level, len(w.outs), fft)
    u0, u1, V = w.units
    m = w.level // V
    n_u = units_per_row(m)
    J = split_out_blocks(w, V)
    f = 0.0
    for u in range(u0, u1):
        kind, idx = split_unit(u % n_u, m)
        if _split_needed(kind, idx, m, J):
            f += unit_flops(kind, V, m)
    return f


def _initial_free(block: int) -> list[tuple[int, int]]:
    """Free residue classes ``(depth d, residue c)`` = the steps ``j = c (mod 2^d)``, all of them
    but the block ends (``j = 0 mod block``) for ``block >= 2``: the siblings along that path."""
    if block <= 1:
        return [(0, 0)]
    b = block.bit_length() - 1
    return [(k, 1 << (k - 1)) for k in range(1, b + 1)]


@lru_cache(maxsize=256)
def chunk_plan(levels: tuple, rows: int, chunk_flops: float = CHUNK_FLOPS, block: int = 1,
               fft_from: Optional[int] = None, split_from: Optional[int] = None) -> tuple:
    """How the delayed tiles of each level are spread: ``((U, W, p, c), ...)`` per level ``U``.

    A tile of level ``U`` is cut into ``W = U / p`` row chunks (``p``, a power of two, is the
    period); its chunk ``i`` is done by the step ``j = (a+1)U + c + i p`` (``0 <= c < p``), so the
    level's chunks are the steps ``j = c (mod p)`` of its windows. ``p`` aims at chunks of about
    ``chunk_flops`` (:func:`tile_cost` with two outputs), at least one row per chunk
    (``p >= U / rows``) and ``p >= 2`` for ``block >= 2``; then, while the levels need more than
    one chunk per step on average (block ends excluded), the most frequent level's period
    doubles. The residue classes
    ``c mod p`` are then handed out prefix-free (Kraft), away from the block ends
    (``j = 0 mod block``, where the immediate tiles run): no two levels' chunks share a step, and
    no chunk lands on a block end, unless the levels cannot fit (tiny periods), when a second
    "lane" of classes is opened.

    Levels ``U >= split_from`` (None: none) are *split* (:func:`split_unit`): their chunks hold
    units (about one FFT of size ``split_from`` each, ``units_per_row`` per row) instead of rows:
    ``p`` aims at chunks of about ``chunk_flops`` and at least one unit per chunk.
    """
    lv = list(levels)
    ps = []
    for U in lv:
        if split_from is not None and U >= split_from:
            V = split_from // 2
            row_cost = FFT_WEIGHT * split_row_flops(U, V, 2 * (U // V))
            items = rows * units_per_row(U // V)
        else:
            row_cost, items = tile_cost(U, 2, fft_from), rows
        ideal = U * float(chunk_flops) / max(1e-300, rows * row_cost)
        p = 1 << max(0, round(math.log2(ideal))) if ideal >= 1 else 1
        lo = max(2 if block > 1 else 1, 1 << max(0, math.ceil(math.log2(max(1.0, U / items)))))
        ps.append(min(U, max(lo, p)))
    cap = 1.0 - (1.0 / block if block > 1 else 0.0)
    while sum(1.0 / p for p in ps) > cap + 1e-12:
        cands = [i for i, p in enumerate(ps) if p < lv[i]]
        if not cands:
            break
        ps[min(cands, key=lambda i: (ps[i], i))] *= 2
    res = [0] * len(lv)
    free = _initial_free(block)
    for i in sorted(range(len(lv)), key=lambda i: (ps[i], i)):
        d = ps[i].bit_length() - 1
        fit = [n for n in free if n[0] <= d]
        if not fit:  # no room left: a new lane (its chunks may share steps with the first)
            free = _initial_free(block)
            fit = [n for n in free if n[0] <= d]
        node = max(fit, key=lambda n: (n[0], -n[1]))  # the deepest free class: least fragmentation
        free.remove(node)
        k, c = node
        while k < d:  # split down to depth d: keep c, free its sibling
            free.append((k + 1, c + (1 << k)))
            k += 1
        res[i] = c
    return tuple((U, U // p, p, c) for U, p, c in zip(lv, ps, res))


class Schedule:
    """The schedule of one engine run, for fast per-step queries (pure: no tensors, no state).

    Built from ``(prefill, max_len, block, delay_from, rows, chunk_flops, fft_from, split_from)``;
    ``delay_from=None`` means no delayed tiles; ``fft_from`` only weighs the chunks' cost;
    ``split_from`` (None: :func:`default_split_from`) is the smallest delayed level whose tiles
    are split into units (:func:`split_unit`).
    :meth:`work` is :func:`step_work`, :meth:`next_delayed_step` is :func:`next_delayed_step`;
    :meth:`level_chunk` and :meth:`next_level_step` answer for one delayed level, so that an
    engine can track each level's next chunk and touch only the levels due at a step.
    """

    __slots__ = ("prefill", "max_len", "block", "delay_from", "rows", "chunk_flops", "fft_from", "n", "table",
                 "split_from")

    def __init__(self, prefill: int, max_len: int, block: int = 1, delay_from: Optional[int] = None,
                 rows: int = 1, chunk_flops: float = CHUNK_FLOPS, fft_from: Optional[int] = None,
                 split_from: Optional[int] = None):
        D = _delay(delay_from, block)
        self.prefill, self.max_len, self.block, self.delay_from = prefill, max_len, block, D
        self.rows, self.chunk_flops, self.fft_from = rows, chunk_flops, fft_from
        self.split_from = _check_split(default_split_from(chunk_flops, fft_from) if split_from is None
                                       else split_from)
        self.n = max_len - prefill
        #: per delayed level index l: (U, W, p, c), U = D 2^l: its tiles' chunks are the steps
        #: j = c (mod p) of their windows (:func:`chunk_plan`)
        self.table = chunk_plan(tuple(delayed_levels(max_len, prefill, block, delay_from)), rows, chunk_flops,
                                block, fft_from, self.split_from)

    def immediate(self, t: int) -> Optional[Work]:
        """The immediate tile of step ``t`` as work (all rows), or None."""
        tile = tile_after_step(t, self.prefill, self.max_len, self.block,
                               None if self.delay_from >= 1 << 62 else self.delay_from)
        if tile is None:
            return None
        return Work(tile.size, tile.s0, tile.s1, ((1, tile.t0, tile.t1),), 0, self.rows, False)

    def level_chunk(self, t: int, l: int) -> Optional[Work]:
        """The chunk of delayed level ``l`` done by step ``t``, or None."""
        U, W, p, c = self.table[l]
        j = t - self.prefill + 1
        if j % p != c:
            return None
        a = j // U - 1
        if a < 0 or (a + 2) * U >= self.n:
            return None
        i = (j % U) // p
        s0 = self.prefill + a * U
        R = self.rows
        if U >= self.split_from:  # a range of the tile's units (rows x units_per_row, row-major)
            V = self.split_from // 2
            n_u = units_per_row(U // V)
            N = R * n_u
            u0, u1 = (i * N) // W, ((i + 1) * N) // W
            return Work(U, s0, s0 + U, _delayed_outs(U, a, self.prefill, self.max_len), u0 // n_u,
                        (u1 - 1) // n_u + 1, True, (u0, u1, V))
        return Work(U, s0, s0 + U, _delayed_outs(U, a, self.prefill, self.max_len), (i * R) // W,
                    ((i + 1) * R) // W, True)

    def next_level_step(self, t: int, l: int) -> int:
        """The first step ``>= t`` with a chunk of delayed level ``l``, or ``max_len``."""
        U, W, p, c = self.table[l]
        j = max(1, t - self.prefill + 1)
        j += (c - j) % p
        if j < U:
            j = U + c
        if (j // U + 1) * U >= self.n:
            return self.max_len
        return min(self.max_len, self.prefill + j - 1)

    def work(self, t: int) -> list[Work]:
        """All tile work of the advance of step ``t`` (see :func:`step_work`)."""
        out = []
        w = self.immediate(t)
        if w is not None:
            out.append(w)
        for l in range(len(self.table)):
            w = self.level_chunk(t, l)
            if w is not None:
                out.append(w)
        return out

    def next_delayed_step(self, t: int) -> int:
        """The first step ``>= t`` with a chunk of a delayed tile, or ``max_len``."""
        return min([self.max_len] + [self.next_level_step(t, l) for l in range(len(self.table))])


@lru_cache(maxsize=64)
def _schedule(prefill, max_len, block, delay_from, rows, chunk_flops, fft_from, split_from=None) -> Schedule:
    return Schedule(prefill, max_len, block, delay_from, rows, chunk_flops, fft_from, split_from)


def _delayed_outs(U: int, a: int, prefill: int, max_len: int) -> tuple:
    n = max_len - prefill
    outs = []
    for o in ((2, 3) if a % 2 == 0 else (2,)):
        t0 = (a + o) * U
        if t0 < n:
            outs.append((o, prefill + t0, prefill + min(t0 + U, n)))
    return tuple(outs)


def step_work(t: int, prefill: int, max_len: int, block: int = 1, delay_from: Optional[int] = None,
              rows: int = 1, chunk_flops: float = CHUNK_FLOPS, fft_from: Optional[int] = None,
              split_from: Optional[int] = None) -> list[Work]:
    """All tile work of the advance of step ``t`` (absolute): at most one immediate tile (at the
    end of a red-cell block), then the chunks of delayed tiles due at this step (at most one per
    level, never at a block end for ``block >= 2``). ``rows``: batch x channels;
    ``chunk_flops``, ``fft_from``, ``split_from`` (None: :func:`default_split_from`): see
    :func:`chunk_plan`."""
    return _schedule(prefill, max_len, block, delay_from, rows, chunk_flops, fft_from, split_from).work(t)


def next_delayed_step(t: int, prefill: int, max_len: int, block: int = 1, delay_from: Optional[int] = None,
                      rows: int = 1, chunk_flops: float = CHUNK_FLOPS, fft_from: Optional[int] = None,
                      split_from: Optional[int] = None) -> int:
    """The first step ``>= t`` (absolute) whose advance does a chunk of a delayed tile, or
    ``max_len`` if none does."""
    return _schedule(prefill, max_len, block, delay_from, rows, chunk_flops, fft_from,
                     split_from).next_delayed_step(t)


def iter_cells(length: int, prefill: int = 0, block: int = 1,
               delay_from: Optional[int] = None) -> Iterator[tuple[str, int, int]]:
    """Every (kind, s, t) cell the schedule computes for outputs ``t < length`` (one row).

    kind is ``"prefill"``, ``"red"`` (same block, computed in the step), ``"tile"`` (an immediate
    tile) or ``"delayed"``. Built from :func:`step_work`, i.e. from what the engine runs; used by
    the tests to prove that every pair ``s <= t`` is covered exactly once.
    """
    for kind, s, t, _ in iter_row_cells(length, prefill, block, delay_from, rows=1):
        yield kind, s, t


def iter_row_cells(length: int, prefill: int = 0, block: int = 1, delay_from: Optional[int] = None,
                   rows: int = 1, chunk_flops: float = CHUNK_FLOPS,
                   fft_from: Optional[int] = None,
                   split_from: Optional[int] = None) -> Iterator[tuple[str, int, int, int]]:
    """Every (kind, s, t, row) cell for outputs ``t < length`` and rows ``< rows``, delayed tiles
    in their row chunks, split levels in their units (see :func:`iter_cells`, :func:`work_cells`)."""
    _check_block(block)
    for row in range(rows):
        for t in range(min(prefill, length)):
            for s in range(t + 1):
                yield ("prefill", s, t, row)
        for t in range(prefill, length):
            for s in range(prefill):
                yield ("prefill", s, t, row)
    for t in range(prefill, length):
        b = block_start(t, prefill, block)
        for row in range(rows):
            for s in range(b, t + 1):
                yield ("red", s, t, row)
        for w in step_work(t, prefill, length, block, delay_from, rows, chunk_flops, fft_from, split_from):
            kind = "delayed" if w.delayed else "tile"
            for s, tt, row in work_cells(w):
                yield (kind, s, tt, row)


def step_flops(length: int, rows: int = 1, block: int = 1, fft_from: Optional[int] = None,
               delay_from: Optional[int] = None, prefill: int = 0,
               chunk_flops: float = CHUNK_FLOPS, split_from: Optional[int] = None) -> list[float]:
    """FLOPs of each step ``t = prefill .. length-1`` (all rows): red cells (2 per pair) and the
    step's tile work (:func:`work_flops`; FFT from ``fft_from``, None: all direct)."""
    out = []
    for t in range(prefill, length):
        f = 2.0 * ((t - prefill) % block + 1) * rows
        for w in step_work(t, prefill, length, block, delay_from, rows, chunk_flops, fft_from, split_from):
            f += work_flops(w, fft_from)
        out.append(f)
    return out


def tiling_flops(length: int, channels: int, block: int = 1, fft_from: int | None = None,
                 batch: int = 1, delay_from: Optional[int] = None, chunk_flops: float = CHUNK_FLOPS,
                 split_from: Optional[int] = None) -> dict[str, float]:
    """FLOP count of stepping ``length`` positions (prefill 0), by part, as the engine schedules
    them (:func:`tile_flops` per tile).

    ``delay_from=None`` is the engine's default (:func:`default_delay_from` of ``batch x
    channels`` rows, ``block``, ``fft_from``); ``delay_from >= length`` counts the schedule
    without delayed tiles. Tiles
    of levels ``>= fft_from`` are FFT tiles (None: all direct); levels ``>= split_from`` (None:
    :func:`default_split_from` of ``chunk_flops``, ``fft_from``) are split (:func:`split_row_flops`).
    Equals ``sum(step_flops(...))``.
    """
    rows = channels * batch
    D = default_delay_from(rows, block, fft_from) if delay_from is None else _delay(delay_from, block)
    S = default_split_from(chunk_flops, fft_from) if split_from is None else _check_split(split_from)
    red = 0.0
    for r in range(length):
        red += 2 * (r % block + 1)
    parts = {"direct": 0.0, "fft": 0.0}
    for U in levels(length, 0, block, D):
        if U < D:
            count = len(range(U, length, 2 * U))  # j = U, 3U, 5U, ... < length
        else:
            count = len(range(U, length, U))  # j = D, 2D, 3D, ... < length
        fft = fft_from is not None and U >= fft_from
        parts["fft" if fft else "direct"] += count * tile_flops(U, 1, fft)
    for U in delayed_levels(length, 0, block, D):
        fft = fft_from is not None and U >= fft_from
        f = 0.0
        a = 0
        while (a + 2) * U < length:
            two = a % 2 == 0 and (a + 3) * U < length
            if U >= S:
                V = S // 2
                J = -(-(min(length, (a + (4 if two else 3)) * U) - (a + 2) * U) // V)
                f += split_row_flops(U, V, J)
                fft = True
            else:
                f += tile_flops(U, 2 if two else 1, fft)
            a += 1
        parts["fft" if fft else "direct"] += f
    scale = rows
    direct, fft = parts["direct"], parts["fft"]
    return {"red": red * scale, "direct": direct * scale, "fft": fft * scale,
            "total": (red + direct + fft) * scale, "delay_from": D}
