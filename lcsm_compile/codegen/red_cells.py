"""Fused CPU kernels for the engine's per-step red cells and per-block transposes.

Three kernels, each beside its torch twin (the functions named ``*_reference`` here, which
:class:`lcsm_compile.OnlineConv` runs when the native kernel is unavailable); they are loaded
through the kernel interface of :mod:`lcsm_compile.codegen`:

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
member's channels ``c0 .. c0 + n``. The C source is :data:`SOURCE` (after
:data:`lcsm_compile.codegen.native.PRELUDE`); see :mod:`.native` for the build and the cache. The kernels are exact in the sense of the torch reference: the same
products and sums per element, in the same order (a fused multiply-add may round once
instead of twice).
"""

from __future__ import annotations

import torch

__all__ = ["SOURCE", "red_step_params", "red_step_reference", "load_block_reference", "flush_block_reference"]

SOURCE = r"""
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
"""

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
