"""The exact online long-convolution engine (relaxed tiling), pure torch.

:class:`OnlineConv` holds the streaming state of a *group* of causal long convolutions: any
number of channels (e.g. every channel of every long convolution of a model, concatenated),
one shared batch. Per channel ``c`` it computes exactly

    y[b, c, t] = sum_{s <= t} u[b, c, s] * k[c, t - s]

one position at a time, in O(L log^2 L) total work instead of O(L^2), and with a bounded work
per step: tiles of levels ``>= delay_from`` are *delayed* and done in row chunks spread over the
steps before their outputs are needed, so no step waits for a whole large tile. The schedule
(which pairs ``(s, t)`` are computed when, and which chunk of which tile each step does) is in
:mod:`.schedule`; the kernels (red cells, tiles: native where they build, else their torch
twins) in :mod:`lcsm_compile.codegen`; the switch between direct and FFT tiles and the block
size are measured by :mod:`.cost_model`.

State, in the compute dtype (fp32, or fp64 for fp64):

* ``hist [B, C, max_len]``: the inputs seen so far (time last, so that tiles transform
  contiguous rows);
* ``acc [B, C, max_len]``: contributions already added to future outputs;
* ``blk_hist``, ``blk_acc [block, B, C]``: the current red-cell block, time-major, so that a
  step reads and writes contiguous rows only: a step pushes its input into the rest of the
  block's accumulators (``blk_acc[r:] += u * k[:block-r]``) and reads its output from
  ``blk_acc[r]``. It never touches the big time-last arrays; the block's inputs are flushed
  to ``hist`` and the next block loaded from ``acc`` once per block.

Use::

    eng = OnlineConv(k, max_len=4096, batch_size=2)     # k: [C, K] filters, K <= or > max_len
    y_prompt = eng.prefill(u_prompt)                   # [B, C, P] -> [B, C, P]
    y_t = eng.step(u_t)                                # [B, C] -> [B, C]

For cross-layer groups, each member computes its output with ``diag(u, channels)`` as soon as
its input is known, and one ``advance()`` after all members runs every tile of the step in one
batched call.
"""

from __future__ import annotations

import collections
import secrets
import weakref
from typing import Optional

import torch

from ..codegen import KERNEL_CODES, STEP_CODES, red_cells, select_kernels
from ..codegen.native import advise_huge_pages
from ..codegen.tiles import direct_tile, fft_tile
from ..errors import SessionError
from ..ops import compute_dtype
from . import schedule
from .cost_model import DIRECT_MAX_BYTES, Plan, choose_plan
from .partitioned import SplitTiles, prompt_conv
from .threads import intra_op_threads

__all__ = ["OnlineConv"]

def _zeros_huge(*shape, dtype, device) -> torch.Tensor:
    """``torch.zeros`` whose memory is hinted to transparent huge pages before the first write
    (the large time-last state; see :func:`lcsm_compile.codegen.native.advise_huge_pages`)."""
    t = torch.empty(*shape, dtype=dtype, device=device)
    advise_huge_pages(t)
    return t.zero_()


#: live engines by the id in their ``meta`` (weak): what the ``lcsm::online_*`` ops run on
_ENGINES: "dict[int, weakref.ref]" = {}
#: engines the ops made for state tensors no live engine owns (an exported program's), newest last
_ADOPTED: "collections.OrderedDict[int, OnlineConv]" = collections.OrderedDict()
_MAX_ADOPTED = 16


def _new_uid() -> int:
    return secrets.randbits(62) + 1


_RED_PARAMS: dict = {}  # packed fixed arguments of the native red step, by the addresses they hold


def red_step(u: torch.Tensor, blk_hist: torch.Tensor, blk_acc: torch.Tensor, kb: torch.Tensor, r: int, c0: int,
             nk=None) -> torch.Tensor:
    """One step of the red cells of one group member, a pure function of its arguments:
    record ``u [B, n]`` (channels ``c0 .. c0 + n``) in ``blk_hist[r]`` and return a new tensor
    ``y = blk_acc[r] + sum_{s <= r} blk_hist[s] * kb[r - s]`` (pull form: ``blk_acc`` holds the
    tiles' contributions only and is not written). Running it again at the same ``r`` (a step
    that failed half-way and is retried) overwrites the same row: nothing to roll back.

    ``nk``: the native kernels (:func:`lcsm_compile.codegen.kernels_for`) or None (torch ops).
    ``u`` may be in any float dtype; it is computed in the state's dtype and ``y`` returned in
    ``u``'s. ``nk`` may also be the Triton kernels (``nk.kind == "triton"``: one launch, any
    input dtype, no host sync)."""
    if nk is not None and nk.kind == "triton":
        return nk.red_step(u, blk_hist, blk_acc, kb, r, c0)
    cd = blk_hist.dtype
    uc = u if u.dtype == cd else u.to(cd)
    n = uc.shape[-1]
    if nk is not None:
        if not uc.is_contiguous():
            uc = uc.contiguous()
        key = (blk_hist.data_ptr(), blk_acc.data_ptr(), kb.data_ptr(), c0, n, tuple(blk_hist.shape))
        params = _RED_PARAMS.get(key)
        if params is None:
            if len(_RED_PARAMS) > 4096:
                _RED_PARAMS.clear()
            params = _RED_PARAMS[key] = red_cells.red_step_params(blk_hist, blk_acc, kb, c0, n)
        y = torch.empty_like(uc)  # uc is in the state's dtype here (2 us less than empty(shape, dtype))
        nk.red_step(params.data_ptr(), uc.data_ptr(), y.data_ptr(), r)
    else:
        sl = slice(c0, c0 + n)
        blk_hist[r, :, sl] = uc
        y = blk_acc[r, :, sl] + (blk_hist[: r + 1, :, sl] * kb[: r + 1, :, sl].flip(0)).sum(0)
    return y if y.dtype == u.dtype else y.to(u.dtype)


class OnlineConv:
    """Streaming state of a group of causal long convolutions (see module docstring).

    Args:
        k: ``[C, K]`` filters, fp32 or fp64. Zero beyond ``K``; only ``k[:, :max_len]`` is used.
        max_len: the number of positions the state can hold (prompt + generated).
        batch_size: B.
        dtype: dtype of the inputs and outputs (default ``k.dtype``); bf16/fp16 are computed in
            fp32 and cast back.
        block: red-cell block size (power of two); None lets the cost model choose.
        fft_from: smallest tile size computed by FFT; None lets the cost model choose.
        delay_from: ``D``, a power of two ``>= block``: tiles of levels ``>= D`` are delayed and
            spread over the steps (:mod:`.schedule`); the largest tile a step runs whole is of
            level ``D``. None: :func:`.schedule.default_delay_from` of ``batch_size x channels``
            rows (a FLOP budget per step). ``D >= max_len`` gives the schedule without delays
            (one step in ``2^m`` runs a whole tile of size ``2^m``).
        chunk_flops: the work of one chunk of a delayed tile (FLOPs); None:
            :data:`.schedule.CHUNK_FLOPS`.
        kernels: ``"auto"``: the emitted Triton kernels of :mod:`lcsm_compile.codegen.triton`
            on CUDA (red cells, direct tiles), the fused native CPU kernels on the CPU (red
            cells, block transposes, direct tiles) where they build, else torch ops;
            ``"torch"``: torch ops; ``"native"`` / ``"triton"``: that implementation or a
            :class:`SessionError` naming why it cannot run (Triton on the CPU only under
            ``TRITON_INTERPRET=1``). :func:`lcsm_compile.codegen.select_kernels` decides;
            ``kernel_note`` says which path runs and why.
        split_from: the smallest delayed level whose tiles are split into units of about one
            FFT of size ``split_from`` each (:func:`.schedule.split_unit`, :mod:`.partitioned`):
            no step does a whole row of a large tile, and those levels store no spectra. None:
            :func:`.schedule.default_split_from` (where one row exceeds ``chunk_flops``).
        copy_filters: False lets the engine use ``k`` itself as its filter buffer when it is
            already ``[C, max_len]``, contiguous, in the compute dtype (no second copy of the
            filters; the caller must not change it).

    Memory (docs/memory.md, :mod:`lcsm_compile.runtime.memory`): one ``[B, C, max_len]`` buffer
    holds the input history *and* the accumulators (``hist`` and ``acc`` are the same tensor: a
    position's accumulator is last read when its red-cell block is loaded, its input first
    written when that block is flushed; every tile reads flushed inputs and writes outputs of
    blocks not loaded yet), the filters ``[C, max_len]`` once, spectra for the FFT levels below
    ``split_from`` only.
    """

    def __init__(self, k: torch.Tensor, max_len: int, batch_size: int = 1,
                 dtype: Optional[torch.dtype] = None, block: Optional[int] = None,
                 fft_from: Optional[int] = None, kernels: str = "auto", delay_from: Optional[int] = None,
                 chunk_flops: Optional[float] = None, state: Optional[dict] = None,
                 split_from: Optional[int] = None, copy_filters: bool = True):
        if not isinstance(k, torch.Tensor) or k.dim() != 2:
            raise SessionError(f"filters must be a [C, K] tensor, got {getattr(k, 'shape', type(k))}")
        if k.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            raise SessionError(f"filters must be a real floating dtype, got {k.dtype}")
        if max_len < 1 or batch_size < 1:
            raise SessionError(f"max_len and batch_size must be >= 1, got {max_len}, {batch_size}")
        self.max_len = int(max_len)
        self.batch_size = int(batch_size)
        self.dtype = dtype or k.dtype
        self.device = k.device
        self.cdtype = compute_dtype(self.dtype if self.dtype == torch.float64 else k.dtype)
        choice = select_kernels(kernels, self.cdtype, self.device)  # SessionError: unknown / unavailable
        self._nk, self._tk = choice.native, choice.triton  # native C (CPU) / emitted Triton (CUDA)
        self.kernel_note = choice.note
        C, K = k.shape
        self.channels = C
        if not copy_filters and K == self.max_len and k.dtype == self.cdtype and k.is_contiguous():
            kk = k  # the caller's buffer, e.g. the group's filters written once by instantiate
        else:
            kk = _zeros_huge(C, self.max_len, dtype=self.cdtype, device=k.device)
            m = min(K, self.max_len)
            kk[:, :m] = k[:, :m].to(self.cdtype)
        self.k = kk
        if block is None or fft_from is None:
            plan = choose_plan(self.batch_size, C, self.cdtype, self.device, self.max_len // 2,
                               native=self._nk is not None)
            block = plan.block if block is None else block
            fft_from = plan.fft_from if fft_from is None else fft_from
        schedule._check_block(int(block))
        self._rows = self.batch_size * C
        if delay_from is None:
            delay_from = schedule.default_delay_from(self._rows, int(block), int(fft_from))
        try:
            schedule._delay(int(delay_from), int(block))
        except ValueError as e:
            raise SessionError(str(e)) from None
        self.block = int(block)
        self.fft_from = int(fft_from)
        self.delay_from = int(delay_from)
        # a whole number of FLOPs: the ops pass the schedule as ints (``config``)
        self.chunk_flops = float(round(chunk_flops if chunk_flops is not None else schedule.CHUNK_FLOPS))
        if not self.chunk_flops > 0:
            raise SessionError(f"chunk_flops must be > 0, got {chunk_flops}")
        try:
            self.split_from = schedule._check_split(schedule.default_split_from(self.chunk_flops, self.fft_from)
                                                    if split_from is None else split_from)
        except ValueError as e:
            raise SessionError(str(e)) from None
        #: the delayed levels computed in units (no spectra stored), and their executor
        self._split_levels = [U for U in schedule.delayed_levels(self.max_len, 0, self.block, self.delay_from)
                              if U >= self.split_from]
        self._split = SplitTiles(self.split_from // 2, self.cdtype, self.device)
        self.plan = Plan(block=self.block, fft_from=self.fft_from, delay_from=self.delay_from)
        # Red cells: the first block of k, time-major: kb[i, 0, c] = k[c, i] (zero past max_len).
        kb = torch.zeros(C, self.block, dtype=self.cdtype, device=k.device)
        kb[:, : min(self.block, self.max_len)] = kk[:, : self.block]
        self._kb = kb.t().contiguous()[:, None, :]  # [block, 1, C]
        # per (level U, output offset o): immediate tiles o = 1, delayed tiles o = 2, 3
        self._tile_data: dict[tuple[int, int], tuple[str, Optional[torch.Tensor]]] = {}
        for U in schedule.levels(self.max_len, 0, self.block, self.delay_from):
            self._tile_data[(U, 1)] = self._make_level(U, 1)
        for U in schedule.delayed_levels(self.max_len, 0, self.block, self.delay_from):
            for o in (2, 3):
                if o * U < self.max_len:
                    self._tile_data[(U, o)] = self._make_level(U, o)
        self._itemsize = kk.element_size()
        shapes = {"hist": (self.batch_size, C, self.max_len), "acc": (self.batch_size, C, self.max_len),
                  "blk_hist": (self.block, self.batch_size, C), "blk_acc": (self.block, self.batch_size, C)}
        if state is None:
            self.hist = _zeros_huge(*shapes["hist"], dtype=self.cdtype, device=self.device)
            #: one buffer for inputs and accumulators (class doc); ``acc`` is the state tensor's
            #: placeholder ``[B, C, 0]`` (an engine adopting it knows the layout from its shape)
            self.merged = True
            self._acc_state = self.hist.new_zeros((self.batch_size, C, 0))
            self.acc = self.hist
            self.blk_hist = torch.zeros(shapes["blk_hist"], dtype=self.cdtype, device=self.device)
            self.blk_acc = torch.zeros_like(self.blk_hist)
            #: host metadata of the state: position, prefill length, block start, id, kernel flag
            #: of the red cells (codegen.STEP_CODES: 0 torch, 1 native, 2 triton)
            self.meta = torch.tensor([0, 0, 0, _new_uid(), STEP_CODES[choice.impl]], dtype=torch.int64)
        else:  # adopt existing state tensors (a program's buffers, an exported program's inputs)
            self.merged = tuple(state["acc"].shape) == (self.batch_size, C, 0)  # else a separate acc
            if self.merged:
                shapes["acc"] = (self.batch_size, C, 0)
            for name, shape in shapes.items():
                t = state[name]
                if tuple(t.shape) != shape or t.dtype != self.cdtype or t.device != self.device:
                    raise SessionError(f"state tensor {name} is {tuple(t.shape)} {t.dtype} on {t.device}, "
                                       f"expected {shape} {self.cdtype} on {self.device}")
            self.hist, self._acc_state, self.blk_hist, self.blk_acc = (state[n] for n in ("hist", "acc", "blk_hist",
                                                                                          "blk_acc"))
            self.acc = self.hist if self.merged else self._acc_state
            self.meta = state["meta"]
        # staging buffer for the block <-> state transposes: a transposing copy straight between
        # [block, B, C] and the strided [B, C, max_len] state costs ~8x more (TLB misses)
        self._stage = torch.empty(self.batch_size, C, self.block, dtype=self.cdtype, device=self.device)
        self.position = 0
        self.prefill_len = 0
        self._blk_start = 0  # first position of the block held in blk_*
        self._sched: schedule.Schedule
        self._level_due: list[int] = []  # per delayed level: the next step that does one of its chunks
        self._due = 0  # the first of them
        self._slices: dict = {}
        self._kernels = kernels
        self._meta_np = self.meta.numpy()
        self._set_schedule(0, 0)
        if state is not None:
            self.sync()
        _ENGINES[int(self.meta[3])] = weakref.ref(self)

    # ------------------------------------------------------------------ setup
    def _make_level(self, U: int, o: int = 1) -> tuple[str, Optional[torch.Tensor]]:
        """Precompute the tiles of level ``U`` with output offset ``o`` (lags ``(o-1)U + 1 ..
        (o+1)U - 1``): a Toeplitz block (direct), nothing (native direct: reads ``k`` itself;
        a split level: its units compute what they need), or the spectrum of the filter segment
        ``k[(o-1)U : (o+1)U]`` (FFT)."""
        if o > 1 and U >= self.split_from:
            return ("split", None)
        if U < self.fft_from and self._nk is not None:
            return ("native", None)
        if U < self.fft_from and self._tk is not None:
            return ("triton", None)  # reads k and the time-last state itself, like the native tile
        lo = (o - 1) * U
        hi = min(lo + 2 * U, self.max_len)
        if U < self.fft_from and self.channels * U * U * self.k.element_size() <= DIRECT_MAX_BYTES:
            kseg = torch.zeros(self.channels, 2 * U, dtype=self.cdtype, device=self.device)
            if hi > lo:
                kseg[:, :hi - lo] = self.k[:, lo:hi]
            i = torch.arange(U, device=self.device)
            lag = U + i[:, None] - i[None, :]  # [U(i), U(m)], values 1 .. 2U-1 (k lags lo + 1 ..)
            return ("direct", kseg[:, lag].contiguous())
        # the spectrum in channel chunks (rfft zero-pads the segment to 2U): no [C, 2U] copy of k
        spec = torch.zeros(self.channels, U + 1, dtype=torch.complex128 if self.cdtype == torch.float64
                           else torch.complex64, device=self.device)
        step = max(1, (4 << 20) // (2 * U * self.k.element_size()))
        with intra_op_threads(1):  # the same bits in every process (not saved: runtime/threads.py)
            for c0 in range(0, self.channels if hi > lo else 0, step):
                spec[c0:c0 + step] = torch.fft.rfft(self.k[c0:c0 + step, lo:hi], n=2 * U)
        return ("fft", spec)

    def _set_schedule(self, prefill: int, position: int) -> None:
        """The schedule of a run with this prefill, and each delayed level's next chunk from
        ``position`` (everything due before it is done: it is a function of the position)."""
        sched = self._sched = schedule.Schedule(prefill, self.max_len, self.block, self.delay_from, self._rows,
                                                self.chunk_flops, self.fft_from, self.split_from)
        self._level_due = [sched.next_level_step(position, l) for l in range(len(sched.table))]
        self._due = min(self._level_due, default=self.max_len)

    def _rects(self, r0: int, r1: int) -> list[tuple[int, int, int, int]]:
        """Rows ``[r0, r1)`` (batch-major) as rectangles ``(b0, b1, c0, c1)``: whole batches, or
        part of the channels of one batch."""
        C = self.channels
        out = []
        r = r0
        while r < r1:
            b, c = divmod(r, C)
            if c == 0 and r1 - r >= C:
                nb = (r1 - r) // C
                out.append((b, b + nb, 0, C))
                r += nb * C
            else:
                e = min(r1, (b + 1) * C)
                out.append((b, b + 1, c, e - b * C))
                r = e
        return out

    def _run_work(self, w: schedule.Work) -> None:
        """One piece of tile work of the schedule (an immediate tile, or a chunk of a delayed one)."""
        if w.units:  # a chunk of a split level: its units (partitioned.SplitTiles)
            self._split.run(self, w)
            return
        U, s0, s1 = w.level, w.s0, w.s1
        o, t0, t1 = w.outs[0]
        kind, data = self._tile_data[(U, o)]
        if not w.delayed:  # an immediate tile: all rows
            if kind == "native":  # lags 1 .. t1 - 1 - s0 < max_len, inside k's rows
                self._nk.direct_tile(self.hist.data_ptr(), self.acc.data_ptr(), self.k.data_ptr(), s0,
                                     t0, U, t1 - t0, self.batch_size, self.channels, self.max_len, self.max_len)
            elif kind == "triton":  # one launch for every row of the group
                self._tk.direct_tile(self.hist, self.acc, self.k, s0, t0, U, t1 - t0, 0, self.batch_size, 0,
                                     self.channels)
            else:
                tile_fn = direct_tile if kind == "direct" else fft_tile
                tile_fn(self.hist[..., s0:s1], data, self.acc[..., t0:t1], U)
            return
        L, C, isz = self.max_len, self.channels, self._itemsize
        for b0, b1, c0, c1 in self._rects(w.r0, w.r1):
            if kind == "native":  # rows of one rectangle: (b, c) -> (b - b0) * C' + (c - c0)
                off = (b0 * C + c0) * L * isz
                Cr = C if b1 - b0 > 1 else c1 - c0
                # both output blocks (o = 2, 3) are contiguous: one call, lags U+1 .. t1 - 1 - s0
                t0, t1 = w.outs[0][1], w.outs[-1][2]
                self._nk.direct_tile(self.hist.data_ptr() + off, self.acc.data_ptr() + off,
                                     self.k.data_ptr() + c0 * L * isz, s0, t0, U, t1 - t0, b1 - b0, Cr, L, L)
            elif kind == "triton":  # both output blocks (o = 2, 3) in one launch, as above
                self._tk.direct_tile(self.hist, self.acc, self.k, s0, w.outs[0][1], U, w.outs[-1][2] - w.outs[0][1],
                                     b0, b1, c0, c1)
            elif kind == "direct":
                a = self.hist[b0:b1, c0:c1, s0:s1]
                for o, t0, t1 in w.outs:
                    direct_tile(a, self._tile_data[(U, o)][1][c0:c1], self.acc[b0:b1, c0:c1, t0:t1], U)
            else:  # one forward transform for both output offsets
                fft_tile(self.hist[b0:b1, c0:c1, s0:s1], [self._tile_data[(U, o)][1][c0:c1] for o, _, _ in w.outs],
                         [self.acc[b0:b1, c0:c1, t0:t1] for _, t0, t1 in w.outs], U)

    def _load_block(self, start: int) -> None:
        """Make the block starting at ``start`` current: copy its accumulators (time-major).

        Inputs of the block already consumed (``start <= s < position``, after a
        ``load_state_dict``) are copied into the block's inputs again.
        """
        self._blk_start = start
        n = min(self.block, self.max_len - start)
        if n > 0:
            if self._nk is not None:
                self._nk.load_block(self.acc.data_ptr(), self.blk_acc.data_ptr(), start, n,
                                    self.batch_size, self.channels, self.max_len)
            else:
                red_cells.load_block_reference(self.acc, self.blk_acc, self._stage, start, n)
        done = max(0, self.position - start)
        if done:  # only after load_state_dict: inputs of this block already seen (steps pull
            # the red cells from blk_hist; blk_acc holds the tiles' contributions only)
            self.blk_hist[:done] = self.hist[..., start:start + done].permute(2, 0, 1)

    def _flush_block(self, upto: int) -> None:
        """Write the current block's inputs ``[blk_start, upto)`` back to ``hist``."""
        b0 = self._blk_start
        m = upto - b0
        if m > 0:
            if self._nk is not None:
                self._nk.flush_block(self.blk_hist.data_ptr(), self.hist.data_ptr(), b0, m,
                                     self.batch_size, self.channels, self.max_len)
            else:
                red_cells.flush_block_reference(self.blk_hist, self.hist, self._stage, b0, m)

    # ------------------------------------------------------------------ checks
    def _check_input(self, u: torch.Tensor, C: int, what: str) -> None:
        if not isinstance(u, torch.Tensor):
            raise SessionError(f"{what}: expected a tensor, got {type(u).__name__}")
        if u.device != self.device:
            raise SessionError(f"{what}: input is on {u.device}, the state is on {self.device}")
        if u.dtype != self.dtype:
            raise SessionError(f"{what}: input dtype {u.dtype} does not match the engine's {self.dtype}")
        if tuple(u.shape[:2]) != (self.batch_size, C) or u.dim() not in (2, 3):
            raise SessionError(f"{what}: input must be [{self.batch_size}, {C}{', P' if u.dim() == 3 else ''}], "
                               f"got {tuple(u.shape)}")

    # ------------------------------------------------------------------ API
    def reset(self) -> None:
        """Forget all inputs: back to position 0 (filters and plan are kept)."""
        self.hist.zero_()
        if not self.merged:
            self.acc.zero_()
        self.blk_hist.zero_()
        self.blk_acc.zero_()
        self.position = 0
        self.prefill_len = 0
        self._blk_start = 0
        self._set_schedule(0, 0)
        self._publish()

    def prefill(self, u: torch.Tensor) -> torch.Tensor:
        """Consume ``P`` prompt positions ``u [B, C, P]`` at position 0; return ``y [B, C, P]``.

        One convolution (:func:`.partitioned.prompt_conv`: FFTs in output blocks and channel
        chunks, bounded memory) gives the prompt's outputs and its contribution to every future
        output up to ``max_len``; stepping then continues relative to ``P``.
        """
        y = self.prefill_member(u)
        self.finish_prefill(u.shape[-1])
        return y

    def prefill_member(self, u: torch.Tensor, channels: slice = slice(None)) -> torch.Tensor:
        """The prefill of one group member (``u [B, C', P]`` for ``channels``).

        Does not move the position: call :meth:`finish_prefill` once all members are done.
        """
        if self.position != 0:
            raise SessionError(f"prefill must start at position 0 (the engine is at {self.position}); call reset()")
        C = len(range(*channels.indices(self.channels)))
        if not isinstance(u, torch.Tensor) or u.dim() != 3:
            raise SessionError(f"prefill input must be [{self.batch_size}, {C}, P], "
                               f"got {tuple(getattr(u, 'shape', ()))}")
        self._check_input(u, C, "prefill")
        P = u.shape[-1]
        if P > self.max_len:
            raise SessionError(f"prefill of {P} positions is past max_len={self.max_len}")
        if P == 0:
            return u.clone()
        uc = u.to(self.cdtype)
        y = prompt_conv(uc, self.k[channels], self.acc[:, channels, P:])
        self.hist[:, channels, :P] = uc
        return y.to(self.dtype)

    def finish_prefill(self, P: int) -> None:
        """Move to position ``P`` after every member's :meth:`prefill_member`."""
        if self.position != 0:
            raise SessionError(f"prefill must start at position 0 (the engine is at {self.position})")
        if not 0 <= P <= self.max_len:
            raise SessionError(f"prefill of {P} positions is past max_len={self.max_len}")
        self.position = P
        self.prefill_len = P
        self._set_schedule(P, P)
        self._load_block(P)
        self._publish()

    def _channels(self, channels: slice) -> tuple[int, int]:
        """``(c0, n)`` of a contiguous channel slice, cached per slice object."""
        hit = self._slices.get(id(channels))
        if hit is not None and hit[0] is channels:
            return hit[1]
        key = channels.indices(self.channels)
        if key[2] != 1:
            raise SessionError(f"channels must be a contiguous slice (step 1), got {channels}")
        val = (key[0], len(range(*key)))
        self._slices[id(channels)] = (channels, val)
        return val

    def diag(self, u: torch.Tensor, channels: slice = slice(None)) -> torch.Tensor:
        """Output of the current position for ``channels`` given their input ``u [B, C']``.

        Records ``u`` in the block's inputs and returns a new tensor: the block's accumulator
        row plus the red cells (the block's pairs so far, the diagonal included), see
        :func:`red_step`. Does not move the position, and running it again at the same
        position overwrites what it recorded. Call :meth:`advance` once after every member of
        the group has had its ``diag``.
        """
        t = self.position
        if t >= self.max_len:
            raise SessionError(f"position {t} is past max_len={self.max_len}")
        c0, n = self._channels(channels)
        if not isinstance(u, torch.Tensor) or u.shape != (self.batch_size, n) or u.dtype != self.dtype \
                or u.device != self.device:
            self._check_input(u, n, "step")
            raise SessionError(f"step: input must be [{self.batch_size}, {n}], got {tuple(u.shape)}")
        return red_step(u, self.blk_hist, self.blk_acc, self._kb, t - self._blk_start, c0,
                        self._nk if self._nk is not None else self._tk)

    def advance(self) -> None:
        """Finish the current position: run its tile work (all channels at once: the immediate
        tile at the end of a block, the chunks of delayed tiles due now), move on by one."""
        t = self.position
        if t >= self.max_len:
            raise SessionError(f"position {t} is past max_len={self.max_len}")
        self.position = t + 1
        boundary = t + 1 - self._blk_start >= self.block or t + 1 >= self.max_len
        if not boundary and t != self._due:
            self._meta_np[0] = t + 1
            return  # inside a block, no delayed chunk due: nothing but the red cells, already done
        sched = self._sched
        if boundary:
            self._flush_block(t + 1)
            w = sched.immediate(t)
            if w is not None:
                self._run_work(w)
        if t == self._due:  # the chunks of delayed tiles due now (schedule.step_work, per level)
            due = self._level_due
            for l in range(len(due)):
                if due[l] == t:
                    self._run_work(sched.level_chunk(t, l))
                    due[l] = sched.next_level_step(t + 1, l)
            self._due = min(due, default=self.max_len)
        if boundary:
            self._load_block(t + 1)
        self._publish()

    def rollback(self) -> None:
        """Undo the ``diag`` calls of the current, unfinished step (after an error half-way
        through a step of a model): nothing to do, ``diag`` only records its input in the
        block's row of the current position, which the next ``diag`` there overwrites."""

    # ------------------------------------------------------------------ the state as tensors
    def _publish(self) -> None:
        """Write the position, prefill length and block start to ``meta``."""
        m = self._meta_np
        m[0], m[1], m[2] = self.position, self.prefill_len, self._blk_start

    def sync(self) -> None:
        """Take the position from ``meta`` when it was changed outside this object (the state
        tensors copied or loaded as tensors, or the C++ ``online_advance`` of
        codegen/cpu_ops.cpp, which moves ``meta`` over steps without tile work): the schedule is
        a function of the position. Everything that reads :attr:`position` from outside the
        ops (a program's error handling, :meth:`state_dict`) syncs first."""
        position, prefill_len, blk_start = (int(v) for v in self._meta_np[:3])
        if (position, prefill_len, blk_start) == (self.position, self.prefill_len, self._blk_start):
            return
        if (prefill_len, blk_start) == (self.prefill_len, self._blk_start) and self.position <= position <= self._due:
            # moved forward over steps without tile work (the C++ advance, codegen/cpu_ops.cpp):
            # each level's next chunk is still the one from here (the schedule is a function of it)
            self.position = position
            return
        if not 0 <= prefill_len <= position <= self.max_len:
            raise SessionError(f"state has position {position}, prefill {prefill_len}: not valid for "
                               f"max_len={self.max_len}")
        self.position, self.prefill_len, self._blk_start = position, prefill_len, blk_start
        self._set_schedule(prefill_len, position)

    def state_position(self) -> int:
        """The position as the state tensors hold it (``meta[0]``), without syncing."""
        return int(self._meta_np[0])

    def quiet_until(self) -> int:
        """The first step ``>= position`` whose :meth:`advance` has tile work (a block end, a
        chunk of a delayed tile, or the last position): the steps before it only move the
        position (what the C++ ``online_advance`` does itself, codegen/cpu_ops.cpp)."""
        end = min(self._blk_start + self.block - 1, self.max_len - 1)
        return max(self.position, min(end, self._due))

    def bind(self, hist: torch.Tensor, acc: torch.Tensor, blk_hist: torch.Tensor, blk_acc: torch.Tensor,
             meta: torch.Tensor) -> None:
        """Run on these state tensors from now on (the ones an op was called with: a compiled
        program may pass other tensor objects of the same state), then :meth:`sync`."""
        if hist is not self.hist or acc is not self._acc_state or blk_hist is not self.blk_hist \
                or blk_acc is not self.blk_acc or meta is not self.meta:
            self.hist, self._acc_state, self.blk_hist, self.blk_acc, self.meta = hist, acc, blk_hist, blk_acc, meta
            self.acc = hist if self.merged else acc
            self._meta_np = meta.numpy()
        self.sync()

    def state_tensors(self) -> dict:
        """The state as tensors (not copies): ``hist`` (inputs and accumulators, class doc),
        ``acc`` (``[B, C, 0]``: the layout's mark; a full ``[B, C, max_len]`` in states of the
        earlier separate layout, still adopted), ``blk_hist``, ``blk_acc`` and ``meta`` (int64
        on the CPU: position, prefill length, block start, id, red-cell kernels: 0 torch, 1 native,
        2 triton)."""
        return {"hist": self.hist, "acc": self._acc_state, "blk_hist": self.blk_hist, "blk_acc": self.blk_acc,
                "meta": self.meta}

    @property
    def config(self) -> list:
        """The schedule as the ints the ``lcsm::online_*`` ops take: block, fft_from,
        delay_from, chunk_flops (rounded), kernels (0 auto, 1 torch, 2 native, 3 triton:
        :data:`lcsm_compile.codegen.KERNEL_CODES`), split_from."""
        return [self.block, self.fft_from, self.delay_from, int(self.chunk_flops), KERNEL_CODES[self._kernels],
                self.split_from]

    def step(self, u: torch.Tensor) -> torch.Tensor:
        """Consume one position ``u [B, C]`` for all channels; return ``y [B, C]``."""
        y = self.diag(u)
        self.advance()
        return y

    # ------------------------------------------------------------------ state
    def _schedule_key(self) -> dict:
        key = {"block": self.block, "fft_from": self.fft_from, "delay_from": self.delay_from,
               "chunk_flops": self.chunk_flops}
        if self._split_levels:  # only where it changes the schedule: earlier states still load
            key["split_from"] = self.split_from
        return key

    def state_dict(self, copy: bool = True) -> dict:
        """The streaming state: position, prefill length, the inputs and accumulators, and the
        schedule they belong to (block, fft_from, delay_from, chunk_flops, split_from: the
        accumulators hold the tiles and chunks of that schedule done so far, so only an engine
        with the same schedule can resume them).

        The state is ``line`` (the ``[B, C, max_len]`` buffer: inputs before the current
        red-cell block, accumulators from it on) and ``block_inputs`` (the inputs of the current
        block so far, ``[position - block start, B, C]``): one copy of the buffer, where the
        earlier format (``hist`` and ``acc``, which :meth:`load_state_dict` still takes) held
        two. ``copy=False``: views of the live state instead of copies (no extra memory: write
        them out, e.g. with ``torch.save``, before the next step)."""
        self.sync()  # the position as the state holds it (the C++ advance moves only meta)
        b = self._blk_start
        done = max(0, self.position - b)
        if self.merged:
            line = self.hist
        else:  # the earlier layout: inputs before the block, accumulators from it on
            line = torch.cat([self.hist[..., :b], self.acc[..., b:]], -1)
        blk = self.blk_hist[:done]
        if copy:
            line = line.clone() if line is self.hist else line
            blk = blk.clone()
        return {"position": self.position, "prefill_len": self.prefill_len, "line": line, "block_inputs": blk,
                "schedule": self._schedule_key()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from :meth:`state_dict` of an engine with the same filters and shapes
        (either format: ``line`` + ``block_inputs``, or the earlier ``hist`` + ``acc``)."""
        shape = (self.batch_size, self.channels, self.max_len)
        names = ("line",) if "line" in state else ("hist", "acc")
        for name in names:
            if tuple(state[name].shape) != shape:
                raise SessionError(f"state {name} has shape {tuple(state[name].shape)}, expected {shape}")
        position, prefill_len = int(state["position"]), int(state["prefill_len"])
        if not 0 <= prefill_len <= position <= self.max_len:
            raise SessionError(f"state has position {position}, prefill {prefill_len}: not valid for max_len={self.max_len}")
        sched = state.get("schedule")
        if (sched is not None and dict(sched) != self._schedule_key()) or (sched is None and self._split_levels):
            raise SessionError(f"state was saved with schedule {None if sched is None else dict(sched)}, this engine "
                               f"runs {self._schedule_key()}: pass the same block, fft_from, delay_from, chunk_flops "
                               f"and split_from")
        b = schedule.block_start(position, prefill_len, self.block) if position < self.max_len else position
        done = position - b
        if "line" in state:
            line, blk = state["line"], state["block_inputs"]
            if tuple(blk.shape) != (done, self.batch_size, self.channels):
                raise SessionError(f"state block_inputs has shape {tuple(blk.shape)}, expected "
                                   f"{(done, self.batch_size, self.channels)}")
            self.hist.copy_(line)
            if not self.merged:
                self.acc[..., b:] = line[..., b:]
        else:
            hist, acc = state["hist"], state["acc"]
            blk = hist[..., b:position].permute(2, 0, 1)
            if self.merged:
                self.hist[..., :b] = hist[..., :b]
                self.hist[..., b:] = acc[..., b:]
            else:
                self.hist.copy_(hist)
                self.acc.copy_(acc)
        self.position, self.prefill_len = position, prefill_len
        self._set_schedule(prefill_len, position)
        self._load_block(b)
        if done:  # the block's inputs so far (the buffer holds its accumulators there)
            self.blk_hist[:done] = blk
        self._publish()

    def flops_per_step(self, length: Optional[int] = None) -> float:
        """Average FLOPs per step of ``length`` steps from position 0 (default ``max_len``)."""
        length = length or self.max_len
        f = schedule.tiling_flops(length, self.channels, self.block, self.fft_from, self.batch_size, self.delay_from,
                                  self.chunk_flops, self.split_from)
        return f["total"] / length

    def __repr__(self) -> str:
        self.sync()
        return (f"OnlineConv(channels={self.channels}, max_len={self.max_len}, batch={self.batch_size}, "
                f"dtype={self.dtype}, block={self.block}, fft_from={self.fft_from}, delay_from={self.delay_from}, "
                f"position={self.position}, "
                f"kernels={'native' if self._nk is not None else 'triton' if self._tk is not None else 'torch'})")
