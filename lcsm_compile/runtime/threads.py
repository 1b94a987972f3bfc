"""Intra-op thread counts and the garbage collector around the runtime's work.

Steps run on one thread by default (:class:`~lcsm_compile.runtime.session.Session`), and data
that every process must compute to the same bits (the filter spectra, which are not part of a
saved state) is computed on a fixed thread count: torch's CPU FFTs give different roundings at
different thread counts for some sizes (measured: ``rfft`` of ``[32, 16]`` at ``n=16``), so a
state saved by a process with 2 threads would not resume bitwise in one with 1.

:func:`frozen_gc` keeps the collector's pauses out of a generation loop: measured on a 2^17
run (docs/benchmarks.md section 10), young-generation collections during the steps took up to
11.8 ms without it and 0.8 ms with it.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Optional

import torch

__all__ = ["intra_op_threads", "frozen_gc", "fp32_convolutions"]


@contextlib.contextmanager
def intra_op_threads(n: Optional[int]):
    """Run the block with ``n`` intra-op threads (None: unchanged), restored afterwards. A step
    is a few thousand tiny ops: on a shared CPU, OpenMP threads on them cost more than they
    give (measured: 1.6 ms/token with 1 thread, 2.1 ms with 2 on a quiet machine, 11 ms with
    2 while another process spins), so steps default to one thread."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def frozen_gc():
    """``gc.freeze()`` for the block, ``gc.unfreeze()`` after: the objects that exist when it
    starts (torch's, the compiled programs', the session's) are left out of the collector's
    scans, so a collection during a step scans only what the loop made. Objects made in the
    block are collected as usual; nothing is kept alive. Does nothing where someone froze
    objects already (their freeze is theirs to undo) or where ``gc.freeze`` is missing."""
    if not hasattr(gc, "freeze") or gc.get_freeze_count() > 0:
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def fp32_convolutions(on: bool):
    """cuDNN convolutions in full fp32 for the block (``on``: the program's state is on CUDA),
    the user's setting restored afterwards.

    PyTorch lets cuDNN use TF32 for fp32 convolutions by default (``cudnn.allow_tf32``), and
    cuDNN picks its algorithm per shape: a model's ``Conv1d(k=1)`` projection ran in fp32 over
    the whole sequence in the eager forward (1.6e-7 from an fp64 golden) and at TF32 precision
    in the one-position step (2.9e-4; two example models, measured on an H100). A streamed
    output must equal the full forward, so the programs' convolutions run in fp32."""
    if not on:
        yield
        return
    cudnn = torch.backends.cudnn
    old = cudnn.allow_tf32
    if not old:
        yield
        return
    cudnn.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32 = old
