"""Tile kernels: one tile of the relaxed schedule, ``out[i] += sum_m a[m] * k[U + i - m]``.

A tile of size ``U`` adds the contribution of inputs ``[s0, s0 + U)`` to outputs
``[t0, t0 + n)`` (``n <= U``, ``t0 = s0 + U``) through lags ``1 .. 2U - 1``. Three
implementations, one contract:

* :func:`direct_tile` (torch twin): a batched product with a precomputed Toeplitz block
  ``[C, U, U]``; the engine's torch path for small ``U``;
* :func:`fft_tile` (torch): an FFT of size ``2U`` with the filter spectrum precomputed per
  level; no wrap-around on outputs ``U .. 2U-1`` because the inputs occupy ``0 .. U-1``;
  the path for large ``U`` on every device;
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
   k[c, U + i - m] for i < n (n <= U). Per row, outputs go in chunks of 4 vectors held in
   registers, with two interleaved sums over m (8 independent FMA chains); the k reads stay
   within k[c, 1 .. U + n - 1], which the caller guarantees is inside the row. GCC/clang vector
   extensions: 32-byte vectors, unaligned loads through memcpy. */
#define DEFINE_DIRECT(T, S, V)                                                                \
void lcsm_direct_tile_##S(const T* restrict hist, T* restrict acc, const T* restrict k,       \
                          int64_t s0, int64_t t0, int64_t U, int64_t n, int64_t B, int64_t C, \
                          int64_t L, int64_t K) {                                             \
  enum { W = (int)(sizeof(V) / sizeof(T)) };                                                  \
  for (int64_t b = 0; b < B; ++b)                                                             \
    for (int64_t c = 0; c < C; ++c) {                                                         \
      const T* restrict a = hist + (b * C + c) * L + s0;                                      \
      T* restrict o = acc + (b * C + c) * L + t0;                                             \
      const T* restrict kk = k + c * K + U;                                                   \
      if (c + 2 < C) {            /* rows are far apart: fetch the row after next early */    \
        const int64_t q = (b * C + c + 2) * L;                                                \
        for (int64_t j = 0; j < U; j += 64 / (int64_t)sizeof(T)) {                            \
          __builtin_prefetch(hist + q + s0 + j, 0, 1);                                        \
          __builtin_prefetch(acc + q + t0 + j, 1, 1);                                         \
        }                                                                                     \
        for (int64_t j = 0; j < U + n; j += 64 / (int64_t)sizeof(T))                          \
          __builtin_prefetch(k + (c + 2) * K + j, 0, 1);                                      \
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
    """Direct tile (torch twin): ``out[i] += sum_m a[m] * k[U + i - m]`` per batch and channel.

    Args:
        a: ``[B, C, U]`` inputs of the tile (a view of the engine's history).
        toeplitz: ``[C, U, U]`` with ``toeplitz[c, i, m] = k[c, U + i - m]`` (built once per level by the engine).
        out: ``[B, C, n]`` (``n <= U``) view of the accumulators, updated in place.
    """
    n = out.shape[-1]
    # [C, n, U] @ [C, U, B] -> [C, n, B]: one batched product per channel.
    o = torch.matmul(toeplitz[:, :n], a.permute(1, 2, 0))
    out += o.permute(2, 0, 1)


def fft_tile(a: torch.Tensor, spectrum: torch.Tensor, out: torch.Tensor, U: int) -> None:
    """FFT tile, same contract as :func:`direct_tile`; ``spectrum`` is
    ``rfft(k[:, :2U], n=2U)``, ``[C, U+1]``, precomputed once per level."""
    n = out.shape[-1]
    B, C = a.shape[0], a.shape[1]
    chunk = max(1, _FFT_CHUNK_BYTES // (B * 2 * U * 8))
    for c0 in range(0, C, chunk):
        c1 = min(C, c0 + chunk)
        y = torch.fft.irfft(torch.fft.rfft(a[:, c0:c1], n=2 * U).mul_(spectrum[c0:c1]), n=2 * U)
        out[:, c0:c1] += y[..., U:U + n]
