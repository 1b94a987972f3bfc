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
