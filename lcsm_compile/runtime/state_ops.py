"""Implementations of the stateful ``lcsm::`` ops (schemas in :mod:`lcsm_compile.ops`).

Every op is a function of its tensor arguments: the state is the tensors a program passes (its
buffers). The online-convolution ops find the :class:`~lcsm_compile.runtime.engine.OnlineConv`
that owns that state through the id in ``meta`` (the engine holds what is derived from the
filters and the schedule: tile spectra, the schedule's tables, the native kernels), bind it to
the tensors they were called with (a compiled program may pass other tensor objects of the
same state) and take the position from ``meta``; where no live engine owns the state (an
exported program run in a new process), one is built around the tensors from ``k`` and
``config``. The red cells of a step (``online_diag``) need no engine at all.

Importing this module registers the implementations (``lcsm_compile`` imports it).
"""

from __future__ import annotations

from typing import List, Optional

import torch

from ..codegen import KERNEL_CODES, STEP_CODES, cpu_ops, kernels_for, triton_kernels_for
from ..codegen.ring import kernels_preference, preferences, ring_step_reference
from ..codegen.triton import MAX_RING_TAPS
from ..errors import SessionError
from ..ops import causal_short_conv, compute_dtype, register_stateful_impl
from . import engine as _engine
from .engine import OnlineConv, red_step
from .partitioned import prompt_conv

__all__ = ["engine_for", "ring_triton", "use_cpp_step_ops"]

_NATIVE: dict = {}


def _native(dtype: torch.dtype, device: torch.device):
    key = (dtype, device.type)
    if key not in _NATIVE:
        _NATIVE[key] = kernels_for(dtype, device)[0]
    return _NATIVE[key]


def _triton(dtype: torch.dtype, device: torch.device):
    """The Triton kernels for this state, or None (then the torch twins run: same results)."""
    return triton_kernels_for(dtype, device)[0]


_KERNEL_NAMES = {v: k for k, v in KERNEL_CODES.items()}


def engine_for(hist: torch.Tensor, acc: torch.Tensor, blk_hist: torch.Tensor, blk_acc: torch.Tensor,
               meta: torch.Tensor, k: torch.Tensor, config: List[int]) -> OnlineConv:
    """The engine of this state, bound to these tensors (module doc)."""
    uid = meta.tolist()[3]
    ref = _engine._ENGINES.get(uid)
    eng = ref() if ref is not None else None
    if eng is None:
        eng = _engine._ADOPTED.get(uid)
        if eng is None:
            block, fft_from, delay_from, chunk_flops, code = (int(v) for v in config[:5])
            split_from = int(config[5]) if len(config) > 5 else None  # configs before split levels: the default
            state = {"hist": hist, "acc": acc, "blk_hist": blk_hist, "blk_acc": blk_acc, "meta": meta}
            opts = dict(max_len=hist.shape[-1], batch_size=hist.shape[0], dtype=hist.dtype, block=block,
                        fft_from=fft_from, delay_from=delay_from, chunk_flops=chunk_flops, state=state,
                        split_from=split_from, copy_filters=False)
            try:
                eng = OnlineConv(k, kernels=_KERNEL_NAMES.get(code, "auto"), **opts)
            except SessionError:  # kernels='native'/'triton' unavailable here: the state still streams
                eng = OnlineConv(k, kernels="auto", **opts)
            _engine._ADOPTED[uid] = eng
            while len(_engine._ADOPTED) > _engine._MAX_ADOPTED:
                _engine._ADOPTED.popitem(last=False)
        else:
            _engine._ADOPTED.move_to_end(uid)
    eng.bind(hist, acc, blk_hist, blk_acc, meta)
    return eng


def _online_diag(u, blk_hist, blk_acc, kb, meta, c0):
    m = meta.tolist()
    position, blk_start, code = m[0], m[2], m[4]
    r = position - blk_start
    if not 0 <= r < blk_hist.shape[0]:
        raise SessionError(f"online_diag: position {position} is outside the current block (start {blk_start}); "
                           f"the state is not consistent")
    nk = (_native(blk_hist.dtype, blk_hist.device) if code == STEP_CODES["native"]
          else _triton(blk_hist.dtype, blk_hist.device) if code == STEP_CODES["triton"] else None)
    return red_step(u, blk_hist, blk_acc, kb, r, c0, nk)


def _online_advance(hist, acc, blk_hist, blk_acc, meta, k, config):
    eng = engine_for(hist, acc, blk_hist, blk_acc, meta, k, config)
    eng.advance()
    if cpu_ops.active() and meta.device.type == "cpu":  # the C++ advance moves over the quiet steps
        m = eng._meta_np
        cpu_ops.publish_quiet(meta, int(m[3]), eng.prefill_len, eng._blk_start, eng.position, eng.quiet_until())


def _online_prefill(u, hist, acc, meta, k, c0):
    m = meta.numpy()
    if int(m[0]) != 0:
        raise SessionError(f"prefill must start at position 0 (the state is at {int(m[0])}); reset first")
    n, P = u.shape[-2], u.shape[-1]
    L = hist.shape[-1]
    if P > L:
        raise SessionError(f"prefill of {P} positions is past max_len={L}")
    if P == 0:
        return u.clone()
    cd = hist.dtype
    uc = u.to(cd)
    sl = slice(c0, c0 + n)
    if acc.shape[-1] == 0:  # one buffer for inputs and accumulators (OnlineConv's layout)
        acc = hist
    y = prompt_conv(uc, k[sl], acc[:, sl, P:])  # bounded memory, as OnlineConv.prefill_member
    hist[:, sl, :P] = uc
    return y.to(u.dtype)


def _online_finish_prefill(hist, acc, blk_hist, blk_acc, meta, k, config, length):
    engine_for(hist, acc, blk_hist, blk_acc, meta, k, config).finish_prefill(int(length))


def ring_triton(buf: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], pref: Optional[str] = None):
    """The Triton kernels a ring step on this state runs (they read the position on the device),
    or None where it runs another implementation. ``pref``: the program's ``kernels`` option
    (default: the one recorded for ``w``, :func:`lcsm_compile.codegen.ring.kernels_preference`)."""
    pref = kernels_preference(w) if pref is None else pref
    if not (pref == "triton" or (pref == "auto" and buf.device.type == "cuda")):
        return None
    dense = buf.is_contiguous() and w.is_contiguous() and (bias is None or bias.is_contiguous())
    return _triton(compute_dtype(buf.dtype), buf.device) if dense and buf.shape[-1] <= MAX_RING_TAPS else None


def _ring_step(u, buf, w, bias: Optional[torch.Tensor], pos):
    # which kernels (codegen.ring.kernels_preference: the program's ``kernels`` option): Triton
    # on CUDA ("auto") or where asked for, native C on the CPU, else the torch twin
    pref = kernels_preference(w)
    if pref == "triton" or (pref == "auto" and buf.device.type == "cuda"):
        tk = ring_triton(buf, w, bias, pref)
        if tk is not None:
            return tk.ring_step(u, buf, w, bias, pos)  # the position read on the device: no host sync
        return ring_step_reference(u, buf, w, bias, int(pos.reshape(-1)[0]))
    dense = buf.is_contiguous() and w.is_contiguous() and (bias is None or bias.is_contiguous())
    t = int(pos.item())  # one element on the CPU (a Python op's microseconds count: a step calls it per layer)
    nk = (_native(buf.dtype, buf.device) if pref != "torch" and u.dtype == buf.dtype == w.dtype
          else None)
    if nk is not None and dense:
        uc = u if u.is_contiguous() else u.contiguous()
        y = torch.empty_like(uc)
        B, C, K = buf.shape
        nk.ring_step(buf.data_ptr(), w.data_ptr(), None if bias is None else bias.data_ptr(), uc.data_ptr(),
                     y.data_ptr(), B, C, K, t)
        return y
    return ring_step_reference(u, buf, w, bias, t)


def _ring_prefill(u, buf, w, bias: Optional[torch.Tensor]):
    P = u.shape[-1]
    K = buf.shape[-1]
    if P == 0:
        return u.clone()
    y = causal_short_conv(u, w.to(u.dtype), None if bias is None else bias.to(u.dtype))
    lo = max(0, P - K)
    for p in range(lo, P):
        buf[..., p % K] = u[..., p]
    return y


def use_cpp_step_ops() -> bool:
    """Run the per-step ops (ring step, red cells, the quiet steps' advance, modal step) as the
    C++ CPU kernels of :mod:`lcsm_compile.codegen.cpu_ops`, with these Python bodies for every
    other case; returns whether they are on (``cpu_ops.status()`` says why not)."""
    if cpu_ops.active():
        return True
    from . import modal as modal_rt  # (imported here: runtime.modal is the modal ops' module)

    addresses = {}
    for dtype in (torch.float32, torch.float64):
        nk = kernels_for(dtype, torch.device("cpu"))[0]
        if nk is not None:
            s = "f32" if dtype == torch.float32 else "f64"
            addresses[f"lcsm_ring_step_{s}"] = cpu_ops.kernel_address(nk.ring_step)
            addresses[f"lcsm_red_step_{s}"] = cpu_ops.kernel_address(nk.red_step)
    mk = modal_rt.modal_kernel()
    if mk is not None:
        for dtype, fn in mk.fns.items():
            addresses["lcsm_modal_step_" + ("f32" if dtype == torch.float32 else "f64")] = cpu_ops.kernel_address(fn)
    # the bodies looked up now (module globals), so that a test's spy on them is what C++ calls
    fallbacks = {"ring_step": globals()["_ring_step"], "online_diag": globals()["_online_diag"],
                 "online_advance": globals()["_online_advance"], "modal_step": modal_rt._modal_step}
    python_only = [w for w, k in preferences() if k not in ("auto", "native")]
    return cpu_ops.activate(addresses, fallbacks, python_only)


for _name, _fn in (("online_diag", _online_diag), ("online_advance", _online_advance),
                   ("online_prefill", _online_prefill), ("online_finish_prefill", _online_finish_prefill),
                   ("ring_step", _ring_step), ("ring_prefill", _ring_prefill)):
    register_stateful_impl(_name, _fn)
