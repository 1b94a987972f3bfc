"""The relaxed tiling covers every pair (s, t), s <= t, exactly once."""

from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from lcsm_compile.runtime import schedule


def _check_cover(length, prefill, block):
    cells = Counter((s, t) for _, s, t in schedule.iter_cells(length, prefill, block))
    want = {(s, t) for t in range(length) for s in range(t + 1)}
    assert set(cells) == want, sorted(set(cells) ^ want)[:10]
    assert max(cells.values(), default=1) == 1, [c for c, n in cells.items() if n > 1][:10]


@pytest.mark.parametrize("length", [1, 2, 3, 8, 37, 64, 100])
@pytest.mark.parametrize("prefill", [0, 1, 5, 16])
@pytest.mark.parametrize("block", [1, 2, 4, 16])
def test_cover_exactly_once(length, prefill, block):
    _check_cover(length, min(prefill, length), block)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 150), st.integers(0, 150), st.sampled_from([1, 2, 4, 8, 32]))
def test_cover_property(length, prefill, block):
    _check_cover(length, min(prefill, length), block)


def test_tiles_use_only_the_past():
    """A tile run after step t reads inputs <= t only: it can run once token t is known."""
    for t in range(0, 300):
        tile = schedule.tile_after_step(t, 0, 10_000, 1)
        assert tile is not None and tile.s1 == t + 1 and tile.t0 == t + 1
        assert tile.size == (t + 1) & -(t + 1)


def test_tile_clipped_at_max_len():
    tile = schedule.tile_after_step(7, 0, 10, 1)  # j = 8, U = 8: outputs 8..15 clipped to 10
    assert tile == schedule.Tile(0, 8, 8, 10)
    assert schedule.tile_after_step(9, 0, 10, 1) is None  # outputs would start at max_len


def test_bad_block():
    with pytest.raises(ValueError):
        schedule.tile_after_step(0, 0, 10, 3)
    with pytest.raises(ValueError):
        schedule.tile_level(0)


def test_flops_grow_like_l_log2_l():
    f1 = schedule.tiling_flops(1 << 10, 1, 1, 16)["total"]
    f2 = schedule.tiling_flops(1 << 14, 1, 1, 16)["total"]
    # O(L log^2 L): 16x more positions cost well under 16^1.5 = 64x more work
    assert 16 < f2 / f1 < 64


# ---------------------------------------------------------------- delayed tiles (bounded step work)

def _check_cover_delayed(length, prefill, block, delay_from):
    cells = Counter((s, t) for _, s, t in schedule.iter_cells(length, prefill, block, delay_from))
    want = {(s, t) for t in range(length) for s in range(t + 1)}
    assert set(cells) == want, sorted(set(cells) ^ want)[:10]
    assert max(cells.values(), default=1) == 1, [c for c, n in cells.items() if n > 1][:10]


@pytest.mark.parametrize("length", [1, 2, 3, 8, 37, 64, 100, 131])
@pytest.mark.parametrize("prefill", [0, 1, 5, 16])
@pytest.mark.parametrize("block", [1, 2, 4, 16])
@pytest.mark.parametrize("mult", [1, 2, 4, 1 << 10])
def test_cover_exactly_once_delayed(length, prefill, block, mult):
    _check_cover_delayed(length, min(prefill, length), block, block * mult)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 260), st.integers(0, 260), st.sampled_from([1, 2, 4, 8, 32]), st.sampled_from([1, 2, 4, 8, 64]))
def test_cover_property_delayed(length, prefill, block, mult):
    _check_cover_delayed(length, min(prefill, length), block, block * mult)


@pytest.mark.parametrize("length,prefill,block,delay_from,rows", [
    (100, 0, 1, 8, 3), (100, 3, 2, 8, 5), (131, 0, 2, 16, 7), (200, 17, 4, 16, 4), (257, 1, 1, 16, 6),
    (300, 0, 2, 4, 3)])
def test_row_chunks_cover_exactly_once(length, prefill, block, delay_from, rows):
    """Delayed tiles in row chunks: every (s, t, row) exactly once, and tiles really are chunked."""
    cells = Counter((s, t, r) for _, s, t, r in
                    schedule.iter_row_cells(length, prefill, block, delay_from, rows, chunk_flops=1.0))
    want = {(s, t, r) for t in range(length) for s in range(t + 1) for r in range(rows)}
    assert set(cells) == want, sorted(set(cells) ^ want)[:10]
    assert max(cells.values()) == 1
    partial = [w for t in range(prefill, length)
               for w in schedule.step_work(t, prefill, length, block, delay_from, rows, 1.0)
               if w.delayed and (w.r0, w.r1) != (0, rows)]
    assert partial, "no chunked tile: the test does not exercise chunks"


def _flushed(t, prefill, max_len, block):
    """Inputs in the history when the advance of step t runs its tiles."""
    if schedule.is_boundary(t, prefill, max_len, block):
        return t + 1  # the block was flushed first
    return schedule.block_start(t, prefill, block)


@pytest.mark.parametrize("length,prefill,block,delay_from,rows,chunk", [
    (300, 0, 1, 1, 1, None), (300, 7, 2, 2, 5, 1.0), (513, 0, 4, 8, 16, 1.0), (700, 3, 16, 32, 64, 1e5),
    (1000, 0, 8, 8, 1024, None), (257, 5, 2, 1024, 3, 1.0)])
def test_work_reads_the_past_and_writes_the_future(length, prefill, block, delay_from, rows, chunk):
    """Every tile or chunk a step runs reads inputs already flushed to the history (< the step, or
    the step itself at a block end) and writes outputs whose red-cell block is loaded after it;
    delayed chunks never land on block ends (block >= 2), where the immediate tiles run."""
    chunk = schedule.CHUNK_FLOPS if chunk is None else chunk
    for t in range(prefill, length):
        for w in schedule.step_work(t, prefill, length, block, delay_from, rows, chunk):
            assert w.s1 - w.s0 == w.level and w.s0 >= prefill
            assert w.s1 <= _flushed(t, prefill, length, block), (t, w)
            assert 0 <= w.r0 < w.r1 <= rows
            for o, t0, t1 in w.outs:
                assert t0 == w.s0 + o * w.level and t0 < t1 <= length
                assert schedule.block_start(t0, prefill, block) >= t + 1, (t, w)
            if w.delayed:
                assert w.level >= delay_from
                if block > 1:
                    assert not schedule.is_boundary(t, prefill, length, block), (t, w)
            else:
                assert w.outs[0][0] == 1 and (w.r0, w.r1) == (0, rows)


@pytest.mark.parametrize("length,prefill,block,delay_from,rows,chunk", [
    (300, 0, 2, 2, 5, 1.0), (1000, 13, 16, 16, 1024, None), (513, 0, 1, 4, 7, 50.0)])
def test_next_delayed_step_matches_step_work(length, prefill, block, delay_from, rows, chunk):
    chunk = schedule.CHUNK_FLOPS if chunk is None else chunk
    nxt = length
    due = {}
    for t in range(length - 1, prefill - 1, -1):
        if any(w.delayed for w in schedule.step_work(t, prefill, length, block, delay_from, rows, chunk)):
            nxt = t
        due[t] = nxt
    for t in range(prefill, length):
        assert schedule.next_delayed_step(t, prefill, length, block, delay_from, rows, chunk) == due[t]


@pytest.mark.parametrize("block", [1, 4, 16])
def test_delay_from_max_len_is_the_undelayed_schedule(block):
    """delay_from >= the stepped length gives exactly the schedule without delayed tiles."""
    L, P = 300, 9
    for t in range(P, L):
        a = schedule.step_work(t, P, L, block, 512)
        tile = schedule.tile_after_step(t, P, L, block)
        assert [(w.s0, w.s1, w.outs[0][1], w.outs[0][2]) for w in a] == ([] if tile is None else [tuple(tile)])


@pytest.mark.parametrize("rows,block,fft_from,D,chunk", [
    (1024, 16, 256, 128, schedule.CHUNK_FLOPS), (8192, 16, 256, 32, schedule.CHUNK_FLOPS),
    (8192, 32, 128, 32, schedule.CHUNK_FLOPS), (8192, 16, 256, 16, 1e6), (5, 2, 4, 2, 1.0), (7, 1, 8, 1, 10.0),
    (64, 4, 16, 8, 1e3)])
def test_chunk_plan(rows, block, fft_from, D, chunk):
    """Per level: a power-of-two period dividing U, at least one row per chunk, a residue off the
    block ends; residue classes of different levels disjoint whenever they fit (one lane)."""
    levels = tuple(schedule.delayed_levels(1 << 16, 0, block, D))
    plan = schedule.chunk_plan(levels, rows, chunk, block, fft_from)
    assert [U for U, *_ in plan] == list(levels)
    for U, W, p, c in plan:
        assert p & (p - 1) == 0 and U % p == 0 and W == U // p and 1 <= W <= rows and 0 <= c < p
        if block > 1:
            assert c % min(p, block) != 0  # never a block end
    cap = 1 - (1 / block if block > 1 else 0)
    if sum(1 / p for _, _, p, _ in plan) <= cap:
        for i, (_, _, p1, c1) in enumerate(plan):
            for _, _, p2, c2 in plan[i + 1:]:
                lo, hi = (p1, c1), (p2, c2)
                if lo[0] > hi[0]:
                    lo, hi = hi, lo
                assert hi[1] % lo[0] != lo[1]  # no step in both classes


def test_at_most_one_chunk_per_step():
    """Batch 8 x 1024 channels, the default schedule: never two delayed chunks in one step."""
    rows, block, fft_from, L = 8192, 16, 256, 1 << 14
    D = schedule.default_delay_from(rows, block, fft_from)
    sched = schedule.Schedule(0, L, block, D, rows, schedule.CHUNK_FLOPS, fft_from)
    counts = [sum(w.delayed for w in sched.work(t)) for t in range(L)]
    assert max(counts) == 1 and sum(counts) > L // 2


def test_default_delay_from():
    # C = 1024 channels, block 16, FFT from 256 (this machine's plan): batch 1 -> 128, batch 8 -> 32
    assert schedule.default_delay_from(1024, 16, 256) == 128
    assert schedule.default_delay_from(8192, 16, 256) == 32
    ds = [schedule.default_delay_from(r, 4, 64) for r in (1, 16, 256, 4096, 1 << 16, 1 << 20)]
    assert ds == sorted(ds, reverse=True) and ds[-1] == 4  # never below block
    with pytest.raises(ValueError):
        schedule.step_work(0, 0, 10, 4, 2)  # delay_from < block
    with pytest.raises(ValueError):
        schedule.step_work(0, 0, 10, 4, 12)  # not a power of two


@pytest.mark.parametrize("length,block,fft_from,delay_from", [
    (1000, 4, 32, 16), (1 << 11, 16, 256, 64), (777, 1, 8, 1), (1 << 10, 8, 64, 1 << 10)])
def test_tiling_flops_is_the_sum_of_step_flops(length, block, fft_from, delay_from):
    f = schedule.tiling_flops(length, 3, block, fft_from, 2, delay_from)
    per = schedule.step_flops(length, 6, block, fft_from, delay_from)
    assert f["total"] == pytest.approx(sum(per), rel=1e-12)
    assert f["total"] == pytest.approx(f["red"] + f["direct"] + f["fft"])


def test_tiling_flops_without_delays_is_the_old_count():
    """delay_from >= length: the FLOPs of whole tiles (2 FFTs of size 2U per tile of level U)."""
    import math
    L, block, fft_from = 5000, 4, 32
    red = sum(2 * (r % block + 1) for r in range(L))
    direct = fft = 0.0
    for U in schedule.levels(L, 0, block):
        count = len(range(U, L, 2 * U))
        if U >= fft_from:
            fft += count * (2 * 2.5 * 2 * U * math.log2(2 * U) + 6 * (U + 1) + U)
        else:
            direct += count * 2 * U * U
    f = schedule.tiling_flops(L, 1, block, fft_from, 1, 1 << 13)
    assert f["total"] == pytest.approx(red + direct + fft)


def test_delayed_flops_cost_a_constant_factor():
    """Delays cost a bounded factor of FLOPs (about 2-2.5x at large L) and keep O(L log^2 L)."""
    ratios = []
    for e in (10, 13, 16):
        L = 1 << e
        new = schedule.tiling_flops(L, 1024, 16, 256, 1, 128)["total"]
        old = schedule.tiling_flops(L, 1024, 16, 256, 1, L)["total"]
        ratios.append(new / old)
    assert all(1 <= r < 2.5 for r in ratios), ratios
    f1 = schedule.tiling_flops(1 << 10, 1, 1, 16, 1, 16)["total"]
    f2 = schedule.tiling_flops(1 << 14, 1, 1, 16, 1, 16)["total"]
    assert 16 < f2 / f1 < 64


def test_step_work_is_bounded():
    """Schedule-level step latency (FLOPs, not time): with delayed tiles the largest work of one
    step stays within a small constant of the mean step for every L; without them the ratio grows
    like L / log L (one step in L runs a tile of size L/2)."""
    rows, block, fft_from = 8192, 16, 256  # batch 8 x 1024 channels
    D = schedule.default_delay_from(rows, block, fft_from)
    new, old = {}, {}
    for e in (10, 13, 16):
        L = 1 << e
        fn = schedule.step_flops(L, rows, block, fft_from, D)
        new[e] = (max(fn), sum(fn) / L)
        fo = schedule.step_flops(L, rows, block, fft_from, L)
        old[e] = (max(fo), sum(fo) / L)
    for e, (mx, mean) in new.items():
        assert mx <= 8 * mean, (e, mx / mean)  # bounded for every L
    assert old[16][0] / old[16][1] > 1000 and old[16][0] / old[16][1] > 4 * old[13][0] / old[13][1]
    # batch 1 (a smaller share of the work is in the red cells: a larger, still bounded, constant)
    rows = 1024
    D = schedule.default_delay_from(rows, block, fft_from)
    for e in (10, 16):
        fn = schedule.step_flops(1 << e, rows, block, fft_from, D)
        assert max(fn) <= 50 * sum(fn) / len(fn)
