"""Verify candidate regions with probes: never accept a convolution on syntax alone.

Contract: :func:`verify_regions` is a pure function ``(gm, regions, ...) -> [Region]``: it
returns copies of the regions with ``verified`` (text) or ``problem`` (the reason) set; ``gm``
is not changed.

For each probe length ``L`` (default 5 and 12: odd, not a power of two; symbolic graphs only,
a static graph is probed at its own length) the whole graph runs on a probe input of that
length and, at each region's ``u``, the value is replaced by

1. a random signal  -> ``y_rand``,
2. a unit impulse at ``t = 0`` (every channel, every batch row) -> ``y_imp``,
3. zeros -> ``y_zero``,
4. an impulse at ``t = L - 1`` -> ``y_last`` (used to explain failures).

Long regions: the filter the region actually uses is ``k = canon(y_imp - y_zero)[0]`` and the
region must equal ``lcsm_compile.ops.causal_conv_fft(canon(u_rand), k)`` (in fp64) within
``tol`` (relative to the largest output). Short regions: the region must equal
``lcsm::short_conv`` with the conv's own weight and bias. A circular FFT conv (``n = L``), a
bidirectional or "same"-padded conv, a future shift or a time flip fails this test, and the
reason says which (``y_last`` non-zero before ``L - 1`` = reads the future).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..ops import causal_conv_fft
from .common import ProbeInterpreter, probe_threads
from .region import Region, batch_in_front, canon_eager, uncanon_eager
from .time_axis import TimeAxis

__all__ = ["verify_regions", "tolerance", "rel_err"]


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of a probe: 1e-4 for fp32, 1e-9 for fp64, 2e-2 for half types."""
    if dtype == torch.float64:
        return 1e-9
    if dtype in (torch.float16, torch.bfloat16):
        return 2e-2
    return 1e-4


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|`` in fp64."""
    a, b = a.double(), b.double()
    den = b.abs().max().item() if b.numel() else 0.0
    return (a - b).abs().max().item() / max(den, 1e-30) if a.numel() else 0.0


def _impulse(x: torch.Tensor, tdim: int, at: int) -> torch.Tensor:
    z = torch.zeros_like(x)
    z.select(tdim, at).fill_(1)
    return z


def _short_weight(w: torch.Tensor, left_pad: int) -> Optional[torch.Tensor]:
    """``[C, K']`` weight of ``lcsm::short_conv`` equal to the conv with ``left_pad``."""
    K = w.shape[-1]
    if left_pad + 1 < K:
        return None  # reads the future
    return F.pad(w[:, 0, :], (left_pad + 1 - K, 0))


def short_conv_ref(u: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    """``lcsm::short_conv`` by its definition (a K-term sum; fast in fp64, unlike conv1d)."""
    K, L = w.shape[-1], u.shape[-1]
    up = F.pad(u, (K - 1, 0))
    y = sum(w[:, i, None] * up[..., i:i + L] for i in range(K))
    return y if b is None else y + b[:, None]


def verify_regions(gm: fx.GraphModule, regions: Sequence[Region], ta: TimeAxis,
                   make_args: Callable[[int], List[Any]], lengths: Sequence[int] = (5, 12),
                   ) -> List[Region]:
    """Probe every candidate (``problem is None``) region; see the module doc."""
    with probe_threads():
        return _verify(gm, regions, ta, make_args, lengths)


def _verify(gm, regions, ta, make_args, lengths) -> List[Region]:
    out = [dataclasses.replace(r) for r in regions]
    cands = [r for r in out if r.problem is None]
    if not cands:
        return out
    worst: Dict[int, float] = {id(r): 0.0 for r in cands}
    for L in lengths:
        args = make_args(L)
        alive = [r for r in cands if r.problem is None]
        if not alive:
            break
        gen = torch.Generator().manual_seed(1234 + L)

        def rnd(x):
            return torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype)

        probes = {
            "rand": rnd,
            "imp": lambda x, r: _impulse(x, r.u_tdim, 0),
            "zero": lambda x, r: torch.zeros_like(x),
        }
        last = {"last": lambda x, r: _impulse(x, r.u_tdim, x.shape[r.u_tdim] - 1)}
        res: Dict[str, Dict[fx.Node, Any]] = {}

        def run_probes(probes):
            for name, fn in probes.items():
                ov = {}
                for r in alive:
                    ov[r.u] = (lambda f: (lambda x: f(x)))(fn) if name == "rand" else \
                        (lambda f, rr: (lambda x: f(x, rr)))(fn, r)
                rec = set()
                for r in alive:
                    rec |= {r.u, r.y}
                    if r.weight is not None:
                        rec.add(r.weight)
                    if r.bias is not None:
                        rec.add(r.bias)
                interp = ProbeInterpreter(gm, ov, rec)
                try:
                    with torch.no_grad():
                        interp.run(*args)
                except Exception as e:  # noqa: BLE001
                    for r in alive:
                        r.problem = f"probe run at L={L} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    return False
                res[name] = {k: interp.recorded[k] for k in interp.recorded}
                for r in alive:  # outputs as computed (a node may also be another region's input)
                    res[name][("y", r.y)] = interp.recorded_pre[r.y]
            return True

        if not run_probes(probes):
            return out
        for r in alive:
            u, y = res["rand"][r.u], res["rand"][("y", r.y)]
            tol = tolerance(y.dtype)
            bfront = r.batch_dim0 or batch_in_front(r.u, r.u_tdim, ta.batch)
            try:
                if r.kind == "short":
                    w = _short_weight(res["rand"][r.weight], r.left_pad)
                    if w is None:
                        ref = None
                    else:
                        b = res["rand"].get(r.bias) if r.bias is not None else None
                        uc = canon_eager(u, r.u_tdim, bfront)
                        refc = short_conv_ref(uc.double(), w.double(),
                                              None if b is None else b.double())
                        ref = uncanon_eager(refc, y, r.y_tdim)
                else:
                    k = canon_eager(res["imp"][("y", r.y)] - res["zero"][("y", r.y)], r.y_tdim, bfront)[0]
                    uc = canon_eager(u, r.u_tdim, bfront)
                    ref = uncanon_eager(causal_conv_fft(uc.double(), k.double()), y, r.y_tdim)
                err = float("inf") if ref is None else rel_err(y, ref)
            except Exception:  # noqa: BLE001 - a shape mismatch is a failed probe
                err, ref = float("inf"), None
            worst[id(r)] = max(worst[id(r)], err)
            if err <= tol:
                continue
            if "last" not in res and not run_probes(last):
                return out
            yl = res["last"][("y", r.y)]
            before = yl.narrow(r.y_tdim, 0, yl.shape[r.y_tdim] - 1)
            scale = max(res["imp"][("y", r.y)].abs().max().item(), 1e-30)
            if before.abs().max().item() > tol * scale:
                if r.kind == "long" and r.anchor.target != torch.ops.aten.convolution.default:
                    r.problem = (f"non-causal: the output at position t depends on inputs after t "
                                 f"(circular or two-sided FFT convolution, FFT size n = {r.fft_size}; "
                                 f"probe at L={L})")
                else:
                    r.problem = (f"non-causal: the output at position t depends on inputs after t "
                                 f"(bidirectional / 'same'-padded convolution or a future shift; "
                                 f"probe at L={L})")
            elif r.kind == "long" and res["zero"][("y", r.y)].abs().max().item() > tol * scale:
                r.problem = f"not linear in its input (output for a zero input is not zero; probe at L={L})"
            else:
                r.problem = (f"not a per-channel time-invariant causal convolution: probe mismatch, "
                             f"max rel err {err:.1e} at L={L}")
    for r in cands:
        if r.problem is None:
            r.max_err = worst[id(r)]
            r.verified = (f"verified: random + impulse probes at L={','.join(map(str, lengths))}, "
                          f"max rel err {worst[id(r)]:.1e}")
    return out
