"""Fused CPU kernels for the engine's per-step red cells and per-block transposes.

Three kernels, each with its pure-torch reference (the functions named ``*_reference`` here,
which :class:`lcsm_compile.OnlineConv` runs when the native kernel is unavailable):

* ``red_step``: one step of one group member in one call: record ``u`` in ``blk_hist[r]`` and
  return ``y = blk_acc[r] + sum_{s <= r} blk_hist[s] * kb[r - s]``. The torch reference pushes
  instead (``blk_acc[r:] += u * kb[:block - r]``, then ``y = blk_acc[r]``): the same products
  summed in the same order, but the pull form only reads ``blk_acc`` (no write-back traffic,
  the sums stay in registers), so with native steps ``blk_acc`` holds the tiles' contributions
  alone. Four arguments (the member's packed fixed arguments, ``u``, ``y``, ``r``) keep the
  foreign-call overhead small.
* ``load_block``: ``blk[i, b, c] = acc[b, c, start + i]`` (the next block's accumulators,
  time-last -> time-major), cache-tiled.
* ``flush_block``: ``hist[b, c, start + i] = blk[i, b, c]`` (the block's inputs back to the
  time-last history), cache-tiled.

Layouts (all C-contiguous, same dtype, fp32 or fp64): ``blk_hist``, ``blk_acc`` ``[block, B, C]``;
``kb`` ``[block, C]``; ``hist``, ``acc`` ``[B, C, max_len]``; ``u``, ``y`` ``[B, n]`` for the
member's channels ``c0 .. c0 + n``. The C source is :data:`SOURCE`; see :mod:`.native` for the
build and the cache. The kernels are exact in the sense of the torch reference: the same
products and sums per element, in the same order (a fused multiply-add may round once
instead of twice).
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from . import native

__all__ = ["SOURCE", "RedCellKernels", "kernels_for", "red_step_params", "red_step_reference", "load_block_reference",
           "flush_block_reference"]

SOURCE = r"""
#include <stdint.h>
#include <string.h>

typedef float lcsm_vf32 __attribute__((vector_size(32)));
typedef double lcsm_vf64 __attribute__((vector_size(32)));
static inline lcsm_vf32 lcsm_ld_f32(const float* p) { lcsm_vf32 v; memcpy(&v, p, sizeof v); return v; }
static inline lcsm_vf64 lcsm_ld_f64(const double* p) { lcsm_vf64 v; memcpy(&v, p, sizeof v); return v; }
static inline void lcsm_add_f32(float* p, lcsm_vf32 v) { lcsm_vf32 o; memcpy(&o, p, sizeof o); o += v; memcpy(p, &o, sizeof o); }
static inline void lcsm_add_f64(double* p, lcsm_vf64 v) { lcsm_vf64 o; memcpy(&o, p, sizeof o); o += v; memcpy(p, &o, sizeof o); }

#define CT 64  /* channel tile of the transposes: CT rows of the time-last state in flight */

#define DEFINE(T, S, V)                                                                       \
/* p = {blk_hist, blk_acc, kb (addresses), block, B, C, c0, n}: fixed per group member.      \
   Pull form: y = blk_acc[r] + sum_{s <= r} blk_hist[s] * kb[r - s], summed in the order of s  \
   (the push form's order), in registers; blk_acc (the tiles' contributions) is only read. */ \
void lcsm_red_step_##S(const int64_t* restrict p, const T* restrict u, T* restrict y,         \
                       int64_t r) {                                                           \
  T* restrict hist = (T*)(intptr_t)p[0];                                                      \
  const T* restrict acc = (const T*)(intptr_t)p[1];                                           \
  const T* restrict kb = (const T*)(intptr_t)p[2];                                            \
  const int64_t B = p[4], C = p[5], c0 = p[6], n = p[7];                                      \
  enum { W = (int)(sizeof(V) / sizeof(T)) };                                                  \
  for (int64_t b = 0; b < B; ++b) {                                                           \
    memcpy(hist + (r * B + b) * C + c0, u + b * n, (size_t)n * sizeof(T));                    \
    const T* restrict a0 = acc + (r * B + b) * C + c0;                                        \
    T* restrict yb = y + b * n;                                                               \
    int64_t c = 0;                                                                            \
    for (; c + 4 * W <= n; c += 4 * W) {                                                      \
      V s0 = lcsm_ld_##S(a0 + c), s1 = lcsm_ld_##S(a0 + c + W);                              \
      V s2 = lcsm_ld_##S(a0 + c + 2 * W), s3 = lcsm_ld_##S(a0 + c + 3 * W);                  \
      for (int64_t j = 0; j <= r; ++j) {                                                      \
        const T* h = hist + (j * B + b) * C + c0 + c;                                         \
        const T* k = kb + (r - j) * C + c0 + c;                                               \
        s0 += lcsm_ld_##S(h) * lcsm_ld_##S(k);                                                \
        s1 += lcsm_ld_##S(h + W) * lcsm_ld_##S(k + W);                                        \
        s2 += lcsm_ld_##S(h + 2 * W) * lcsm_ld_##S(k + 2 * W);                                \
        s3 += lcsm_ld_##S(h + 3 * W) * lcsm_ld_##S(k + 3 * W);                                \
      }                                                                                       \
      memcpy(yb + c, &s0, sizeof(V)); memcpy(yb + c + W, &s1, sizeof(V));                     \
      memcpy(yb + c + 2 * W, &s2, sizeof(V)); memcpy(yb + c + 3 * W, &s3, sizeof(V));         \
    }                                                                                         \
    for (; c < n; ++c) {                                                                      \
      T t = a0[c];                                                                            \
      for (int64_t j = 0; j <= r; ++j)                                                        \
        t += hist[(j * B + b) * C + c0 + c] * kb[(r - j) * C + c0 + c];                       \
      yb[c] = t;                                                                              \
    }                                                                                         \
  }                                                                                           \
}                                                                                             \
void lcsm_load_block_##S(const T* restrict acc, T* restrict blk, int64_t start, int64_t n,    \
                         int64_t B, int64_t C, int64_t L) {                                   \
  T tmp[CT * CT];                 /* CT channel rows of <= CT positions, in L1 */             \
  for (int64_t b = 0; b < B; ++b)                                                             \
    for (int64_t c0 = 0; c0 < C; c0 += CT) {                                                  \
      int64_t c1 = c0 + CT < C ? c0 + CT : C;                                                 \
      for (int64_t i0 = 0; i0 < n; i0 += CT) {                                                \
        int64_t w = n - i0 < CT ? n - i0 : CT;                                                \
        for (int64_t c = c0; c < c1; ++c) {      /* contiguous runs of each row */           \
          if (c + CT < C) __builtin_prefetch(acc + (b * C + c + CT) * L + start + i0, 0, 0);    \
          memcpy(tmp + (c - c0) * CT, acc + (b * C + c) * L + start + i0, (size_t)w * sizeof(T)); \
        }                                                                                     \
        for (int64_t i = 0; i < w; ++i) {                                                     \
          T* restrict dst = blk + ((i0 + i) * B + b) * C;                                     \
          for (int64_t c = c0; c < c1; ++c) dst[c] = tmp[(c - c0) * CT + i];                  \
        }                                                                                     \
      }                                                                                       \
    }                                                                                         \
}                                                                                             \
void lcsm_flush_block_##S(const T* restrict blk, T* restrict hist, int64_t start, int64_t n,  \
                          int64_t B, int64_t C, int64_t L) {                                  \
  T tmp[CT * CT];                                                                             \
  for (int64_t b = 0; b < B; ++b)                                                             \
    for (int64_t c0 = 0; c0 < C; c0 += CT) {                                                  \
      int64_t c1 = c0 + CT < C ? c0 + CT : C;                                                 \
      for (int64_t i0 = 0; i0 < n; i0 += CT) {                                                \
        int64_t w = n - i0 < CT ? n - i0 : CT;                                                \
        for (int64_t i = 0; i < w; ++i) {                                                     \
          const T* restrict src = blk + ((i0 + i) * B + b) * C;                               \
          for (int64_t c = c0; c < c1; ++c) tmp[(c - c0) * CT + i] = src[c];                  \
        }                                                                                     \
        for (int64_t c = c0; c < c1; ++c) {                                                   \
          if (c + CT < C) __builtin_prefetch(hist + (b * C + c + CT) * L + start + i0, 1, 0);   \
          memcpy(hist + (b * C + c) * L + start + i0, tmp + (c - c0) * CT, (size_t)w * sizeof(T)); \
        }                                                                                     \
      }                                                                                       \
    }                                                                                         \
}

DEFINE(float, f32, lcsm_vf32)
DEFINE(double, f64, lcsm_vf64)

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

_P = ctypes.c_void_p
_I = ctypes.c_int64


def red_step_reference(u, hist_row, acc_tail, k_head, acc_row, dtype=None):
    """Torch reference of ``red_step`` (views of one member and row ``r``); the output in
    ``dtype`` (default: the state's), always a new tensor."""
    hist_row.copy_(u)
    acc_tail.addcmul_(hist_row, k_head)
    return acc_row.clone() if dtype in (None, acc_row.dtype) else acc_row.to(dtype)


def load_block_reference(acc, blk, stage, start, n):
    """Torch reference of ``load_block``: through a staging buffer, 2-D transposes in cache."""
    stage[..., :n].copy_(acc[..., start:start + n])
    for b in range(acc.shape[0]):
        blk[:n, b].copy_(stage[b, :, :n].t())


def flush_block_reference(blk, hist, stage, start, n):
    """Torch reference of ``flush_block``."""
    for b in range(hist.shape[0]):
        stage[b, :, :n].copy_(blk[:n, b].t())
    hist[..., start:start + n].copy_(stage[..., :n])


def red_step_params(blk_hist: torch.Tensor, blk_acc: torch.Tensor, kb: torch.Tensor, c0: int, n: int) -> torch.Tensor:
    """The fixed arguments of ``red_step`` for one member (channels ``c0 .. c0 + n``), packed in
    an int64 tensor that the caller keeps alive as long as it passes its address."""
    block, B, C = blk_hist.shape
    return torch.tensor([blk_hist.data_ptr(), blk_acc.data_ptr(), kb.data_ptr(), block, B, C, c0, n],
                        dtype=torch.int64)


class RedCellKernels:
    """The loaded kernels for one dtype (fp32 or fp64). Callers pass contiguous CPU tensors of
    that dtype and in-range indices; nothing is checked here (the engine checks once)."""

    def __init__(self, lib: ctypes.CDLL, dtype: torch.dtype):
        s = {torch.float32: "f32", torch.float64: "f64"}[dtype]
        self.dtype = dtype
        self.red_step = getattr(lib, f"lcsm_red_step_{s}")
        self.red_step.argtypes = [_P, _P, _P, _I]
        self.red_step.restype = None
        self.load_block = getattr(lib, f"lcsm_load_block_{s}")
        self.load_block.argtypes = [_P, _P, _I, _I, _I, _I, _I]
        self.load_block.restype = None
        self.flush_block = getattr(lib, f"lcsm_flush_block_{s}")
        self.flush_block.argtypes = [_P, _P, _I, _I, _I, _I, _I]
        self.flush_block.restype = None
        self.direct_tile = getattr(lib, f"lcsm_direct_tile_{s}")
        self.direct_tile.argtypes = [_P, _P, _P, _I, _I, _I, _I, _I, _I, _I, _I]
        self.direct_tile.restype = None


def kernels_for(dtype: torch.dtype, device: torch.device) -> tuple[Optional[RedCellKernels], str]:
    """Capability check: the native kernels for ``dtype`` on ``device``, or ``(None, reason)``."""
    if torch.device(device).type != "cpu":
        return None, f"native red-cell kernels are CPU kernels (device {device})"
    if dtype not in (torch.float32, torch.float64):
        return None, f"native red-cell kernels take fp32/fp64 (compute dtype {dtype})"
    ok, why = native.available(SOURCE, "red_cells")
    if not ok:
        return None, why
    return RedCellKernels(native.load_library(SOURCE, "red_cells"), dtype), ""
