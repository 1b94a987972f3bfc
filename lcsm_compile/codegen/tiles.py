"""Tile kernels: one tile of the relaxed schedule, ``out[i] += sum_m a[m] * k[lag0 + i - m]``.

A tile of size ``U`` adds the contribution of inputs ``[s0, s0 + U)`` to outputs
``[t0, t0 + n)`` (``n <= U``) through lags ``lag0 + i - m``, ``lag0 = t0 - s0 = o U``: ``o = 1``
for the immediate tiles of the schedule (lags ``1 .. 2U - 1``), ``o = 2, 3`` for the delayed
tiles (lags ``(o-1)U + 1 .. (o+1)U - 1``; :mod:`lcsm_compile.runtime.schedule`). Three
implementations, one contract:

* :func:`direct_tile` (torch twin): a batched product with a precomputed Toeplitz block
  ``[C, U, U]`` of ``k[lag0 + i - m]``; the engine's torch path for small ``U``;
* :func:`fft_tile` (torch): an FFT of size ``2U`` with the spectrum of the filter segment
  ``k[lag0 - U : lag0 + U]`` precomputed per (level, offset); no wrap-around on outputs
  ``U .. 2U-1`` because the inputs occupy ``0 .. U-1``; the path for large ``U`` on every
  device. Several output offsets share one forward transform;
* ``lcsm_direct_tile`` (native C, :data:`SOURCE`): reads ``k`` and the time-last state
  directly, no Toeplitz copy; 8 FMA chains in registers, the next channel's rows prefetched.
  It equals :func:`direct_tile` up to the summation order.
"""

from __future__ import annotations

import torch

__all__ = ["SOURCE", "direct_tile", "fft_tile"]

# FFT tiles run in channel chunks of about this many bytes of transform buffers: ~4x the L2
# of this CPU, measured best of 0.5-16 MiB at C = 1024, L = 2^16 (2.6-3x faster than one
# batched transform at U >= 4096).
_FFT_CHUNK_BYTES = 4 << 20

SOURCE = r"""
/* Direct tile on the time-last state: acc[b, c, t0 + i] += sum_{m < U} hist[b, c, s0 + m] *
   k[c, (t0 - s0) + i - m] for i < n (t0 - s0 >= U; n <= 2U). Per row, outputs go in chunks of 4
   vectors held in registers, with two interleaved sums over m (8 independent FMA chains); the k
   reads stay within k[c, t0 - s0 - U + 1 .. t0 - s0 + n - 1], which the caller guarantees is
   inside the row. GCC/clang vector extensions: 32-byte vectors, unaligned loads through memcpy. */
#define DEFINE_DIRECT(T, S, V)                                                                \
void lcsm_direct_tile_##S(const T* restrict hist, T* restrict acc, const T* restrict k,       \
                          int64_t s0, int64_t t0, int64_t U, int64_t n, int64_t B, int64_t C, \
                          int64_t L, int64_t K) {                                             \
  enum { W = (int)(sizeof(V) / sizeof(T)) };                                                  \
  for (int64_t b = 0; b < B; ++b)                                                             \
    for (int64_t c = 0; c < C; ++c) {                                                         \
      const T* restrict a = hist + (b * C + c) * L + s0;                                      \
      T* restrict o = acc + (b * C + c) * L + t0;                                             \
      const T* restrict kk = k + c * K + (t0 - s0);                                           \
      if (c + 2 < C) {            /* rows are far apart: fetch the row after next early */    \
        const int64_t q = (b * C + c + 2) * L;                                                \
        for (int64_t j = 0; j < U; j += 64 / (int64_t)sizeof(T)) {                            \
          __builtin_prefetch(hist + q + s0 + j, 0, 1);                                        \
          __builtin_prefetch(acc + q + t0 + j, 1, 1);                                         \
        }                                                                                     \
        for (int64_t j = 0; j < U + n; j += 64 / (int64_t)sizeof(T))                          \
          __builtin_prefetch(k + (c + 2) * K + (t0 - s0 - U) + j, 0, 1);                      \
      }                                                                                       \
      int64_t i0 = 0;                                                                         \
      for (; i0 + 4 * W <= n; i0 += 4 * W) {                                                  \
        V p0 = {0}, p1 = {0}, p2 = {0}, p3 = {0}, q0 = {0}, q1 = {0}, q2 = {0}, q3 = {0};    \
        int64_t m = 0;                                                                        \
        for (; m + 1 < U; m += 2) {                                                           \
          const T x = a[m], y = a[m + 1];                                                     \
          const T* kr = kk + i0 - m;                                                          \
          const T* ks = kr - 1;                                                               \
          p0 += x * lcsm_ld_##S(kr);         q0 += y * lcsm_ld_##S(ks);                       \
          p1 += x * lcsm_ld_##S(kr + W);     q1 += y * lcsm_ld_##S(ks + W);                   \
          p2 += x * lcsm_ld_##S(kr + 2 * W); q2 += y * lcsm_ld_##S(ks + 2 * W);               \
          p3 += x * lcsm_ld_##S(kr + 3 * W); q3 += y * lcsm_ld_##S(ks + 3 * W);               \
        }                                                                                     \
        for (; m < U; ++m) {                                                                  \
          const T x = a[m];                                                                   \
          const T* kr = kk + i0 - m;                                                          \
          p0 += x * lcsm_ld_##S(kr);     p1 += x * lcsm_ld_##S(kr + W);                       \
          p2 += x * lcsm_ld_##S(kr + 2 * W); p3 += x * lcsm_ld_##S(kr + 3 * W);               \
        }                                                                                     \
        lcsm_add_##S(o + i0, p0 + q0);         lcsm_add_##S(o + i0 + W, p1 + q1);             \
        lcsm_add_##S(o + i0 + 2 * W, p2 + q2); lcsm_add_##S(o + i0 + 3 * W, p3 + q3);         \
      }                                                                                       \
      for (; i0 + W <= n; i0 += W) {                                                          \
        V p0 = {0}, q0 = {0};                                                                 \
        int64_t m = 0;                                                                        \
        for (; m + 1 < U; m += 2) {                                                           \
          p0 += a[m] * lcsm_ld_##S(kk + i0 - m);                                              \
          q0 += a[m + 1] * lcsm_ld_##S(kk + i0 - m - 1);                                      \
        }                                                                                     \
        for (; m < U; ++m) p0 += a[m] * lcsm_ld_##S(kk + i0 - m);                             \
        lcsm_add_##S(o + i0, p0 + q0);                                                        \
      }                                                                                       \
      for (; i0 < n; ++i0) {                                                                  \
        T t = 0;                                                                              \
        for (int64_t m = 0; m < U; ++m) t += a[m] * kk[i0 - m];                               \
        o[i0] += t;                                                                           \
      }                                                                                       \
    }                                                                                         \
}

DEFINE_DIRECT(float, f32, lcsm_vf32)
DEFINE_DIRECT(double, f64, lcsm_vf64)
"""


def direct_tile(a: torch.Tensor, toeplitz: torch.Tensor, out: torch.Tensor, U: int) -> None:
    """Direct tile (torch twin): ``out[i] += sum_m a[m] * k[lag0 + i - m]`` per batch and channel.

    Args:
        a: ``[B, C, U]`` inputs of the tile (a view of the engine's history).
        toeplitz: ``[C, U, U]`` with ``toeplitz[c, i, m] = k[c, lag0 + i - m]`` (built once per
            level and output offset by the engine).
        out: ``[B, C, n]`` (``n <= U``) view of the accumulators, updated in place.
    """
    n = out.shape[-1]
    # [C, n, U] @ [C, U, B] -> [C, n, B]: one batched product per channel.
    o = torch.matmul(toeplitz[:, :n], a.permute(1, 2, 0))
    out += o.permute(2, 0, 1)


def fft_tile(a: torch.Tensor, spectrum, out, U: int) -> None:
    """FFT tile, same contract as :func:`direct_tile`; ``spectrum`` is
    ``rfft(k[:, lag0 - U : lag0 + U], n=2U)``, ``[C, U+1]``, precomputed once per level and
    offset. ``spectrum`` and ``out`` may be equally long sequences (several output offsets of the
    same inputs): the forward transform of ``a`` is shared."""
    if isinstance(spectrum, torch.Tensor):
        spectrum, out = (spectrum,), (out,)
    B, C = a.shape[0], a.shape[1]
    chunk = max(1, _FFT_CHUNK_BYTES // (B * 2 * U * 8))
    for c0 in range(0, C, chunk):
        c1 = min(C, c0 + chunk)
        x = torch.fft.rfft(a[:, c0:c1], n=2 * U)
        last = len(spectrum) - 1
        for q, (spec, o) in enumerate(zip(spectrum, out)):
            n = o.shape[-1]
            prod = x.mul_(spec[c0:c1]) if q == last else x * spec[c0:c1]
            y = torch.fft.irfft(prod, n=2 * U)
            o[:, c0:c1] += y[..., U:U + n]
