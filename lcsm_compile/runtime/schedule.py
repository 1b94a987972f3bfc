"""The relaxed tiling schedule of the online convolution (pure functions, no tensors).

Positions are 0-based. After a prefill of ``P`` positions, the engine steps positions
``t = P, P+1, ...``; ``r = t - P`` is the position relative to the prefill and ``j = r + 1``
the number of positions stepped so far.

Pairs ``(s, t)`` with ``s <= t`` (input ``s`` contributes ``u[s] k[t-s]`` to output ``t``):

* ``s < P``: the prefill adds the whole prompt's contribution to every future output at once.
* ``s, t >= P`` in the same aligned *block* of ``block`` positions (relative to ``P``): the
  step computes them directly, one dot product over the block so far ("red cells"; with
  ``block == 1`` only the diagonal ``s == t``).
* every other pair lies in exactly one *tile*: after step ``r``, with ``j = r + 1`` and
  ``U = j & -j`` (the largest power of two dividing ``j``), if ``U >= block`` the tile
  ``s in [P+j-U, P+j)``, ``t in [P+j, P+j+U)`` (lags ``1 .. 2U-1``) is added to the future
  accumulators.

Every tile depends only on inputs already seen, so the tiles of all convolutions of a model
at one step can run together (cross-layer parallel groups). ``block`` is a power of two; with
``block == 1`` this is exactly the tiling of Oncescu et al. 2024 ("Flash Inference").
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

__all__ = ["Tile", "tile_level", "tile_after_step", "block_start", "iter_cells", "tiling_flops", "levels"]


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


def _check_block(block: int) -> None:
    if block < 1 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 1, got {block}")


def tile_level(j: int) -> int:
    """``U = j & -j``: the largest power of two dividing ``j`` (``j >= 1``)."""
    if j < 1:
        raise ValueError(f"j must be >= 1, got {j}")
    return j & -j


def tile_after_step(t: int, prefill: int, max_len: int, block: int = 1) -> Tile | None:
    """The tile run after step ``t`` (absolute position), or None.

    None when the tile level is below ``block`` (covered by red cells) or when all its
    outputs lie at or past ``max_len``. Outputs are clipped to ``max_len``.
    """
    _check_block(block)
    j = t - prefill + 1
    U = tile_level(j)
    if U < block:
        return None
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


def levels(max_len: int, prefill: int = 0, block: int = 1) -> list[int]:
    """The tile sizes U (powers of two >= block) that steps can use before ``max_len``."""
    _check_block(block)
    n = max_len - prefill
    out = []
    U = block
    while U < n:  # a tile of size U needs j = U (or a multiple) with outputs before max_len
        out.append(U)
        U *= 2
    return out


def iter_cells(length: int, prefill: int = 0, block: int = 1) -> Iterator[tuple[str, int, int]]:
    """Every (kind, s, t) cell the schedule computes for outputs ``t < length``.

    kind is ``"prefill"``, ``"red"`` (same block, computed in the step) or ``"tile"``. Used by the
    tests to prove that every pair ``s <= t`` is covered exactly once.
    """
    _check_block(block)
    for t in range(min(prefill, length)):
        for s in range(t + 1):
            yield ("prefill", s, t)
    for t in range(prefill, length):
        for s in range(prefill):
            yield ("prefill", s, t)
    for t in range(prefill, length):
        b = block_start(t, prefill, block)
        for s in range(b, t + 1):
            yield ("red", s, t)
        tile = tile_after_step(t, prefill, length, block)
        if tile is not None:
            for s in range(tile.s0, tile.s1):
                for tt in range(tile.t0, tile.t1):
                    yield ("tile", s, tt)


def tiling_flops(length: int, channels: int, block: int = 1, fft_from: int | None = None,
                 batch: int = 1) -> dict[str, float]:
    """FLOP count of stepping ``length`` positions (prefill 0), by part.

    Red cells: 2 flops per (s, t) pair. A direct tile of size U: ``2 U^2`` per channel. An FFT
    tile (``U >= fft_from``): two real FFTs of size ``2U`` (``2.5 n log2 n`` each) and the
    complex product (``6 (U+1)``) plus the accumulate (``U``), per channel.
    """
    import math

    red = 0.0
    for r in range(length):
        red += 2 * (r % block + 1)
    direct = fft = 0.0
    for U in levels(length, 0, block):
        count = sum(1 for j in range(U, length, 2 * U))  # j = U, 3U, 5U, ... < length
        if fft_from is not None and U >= fft_from:
            n = 2 * U
            fft += count * (2 * 2.5 * n * math.log2(n) + 6 * (U + 1) + U)
        else:
            direct += count * 2 * U * U
    scale = channels * batch
    return {"red": red * scale, "direct": direct * scale, "fft": fft * scale,
            "total": (red + direct + fft) * scale}
