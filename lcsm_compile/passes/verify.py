"""Verify candidate regions with probes: never accept a convolution on syntax alone.

Contract: :func:`verify_regions` is a pure function ``(gm, regions, ...) -> [Region]``: it
returns copies of the regions with ``verified`` (text) or ``problem`` (the reason) set; ``gm``
is not changed.

For each probe length ``L`` (default 5 and 12: odd, not a power of two; symbolic graphs only,
a static graph is probed at its own length) the whole graph runs on a probe input of that
length and, at each region's ``u``, the value is replaced by

1. a random signal  -> ``y_rand``,
2. a unit impulse at ``t = 0`` (every channel, every batch row) -> ``y_imp``,
3. zeros -> ``y_zero``.

Long regions: the filter the region actually uses is ``k = canon(y_imp - y_zero)[0]`` and the
region must equal ``lcsm_compile.ops.causal_conv_fft(canon(u_rand), k)`` (in fp64) within
``tol`` (relative to the largest output). Short regions: the region must equal
``lcsm::short_conv`` with the conv's own weight and bias. A circular FFT conv (``n = L``), a
bidirectional or "same"-padded conv, a future shift, a time flip or a block-restarting conv
fails this test.

Block lengths (:func:`block_lengths`): a region whose sizes divide ``L`` by a constant ``b``
(time padded to a multiple of ``b`` and cut into blocks) is also probed at ``2b + 3``: a
convolution that restarts every ``b`` positions equals a causal one at every length ``<= b``.

Why a region failed (:func:`diagnose`, :func:`describe_diagnosis`) comes from more impulses at
the failing length: an impulse at ``p`` that changes an output before ``p`` = reads the future
(``non-causal: ...``, naming the probe; a response that is the impulse-at-0 response rotated =
a circular FFT of size ``L``); an impulse whose response stops at the end of its block, the
next block starting afresh = ``block-restarting convolution: outputs restart every b
positions``. A region the matcher flagged as circular (a fixed FFT size) is probed at its block
lengths too, and renamed when it is a block-restarting conv. Sizes in reasons are printed in
the user's terms (``TimeAxis.user_expr``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence

import sympy
import torch
import torch.fx as fx
import torch.nn.functional as F

from ..ops import causal_conv_fft
from .common import ProbeInterpreter, probe_threads, size_exprs, to_expr, val
from .match_long_conv import CIRCULAR
from .region import Region, batch_in_front, canon_eager, uncanon_eager
from .time_axis import TimeAxis

__all__ = ["verify_regions", "tolerance", "rel_err", "diagnose", "describe_diagnosis", "block_lengths", "block_sizes", "Diagnosis"]


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


# ----------------------------------------------------------------------------- block lengths
_BLOCK_FNS = ("FloorDiv", "CeilDiv", "PythonMod", "Mod", "ModularIndexing", "CleanDiv")


def block_sizes(r: Region, ta: TimeAxis) -> List[int]:
    """The constants ``b`` the sizes of a region's real (time-domain) values divide ``L`` by (or
    take it modulo): time padded to a multiple of ``b`` and cut into blocks (``F.pad(u, (0,
    -L % b))``, ``view(.., L // b, b)``). Symbolic graphs only."""
    if not ta.symbolic or r.u is None:
        return []
    consts = set()
    for m in [r.u] + list(r.nodes):
        v = val(m)
        if not isinstance(v, torch.Tensor) or v.is_complex():
            continue  # a half spectrum (n // 2 + 1) is no block
        for e in size_exprs(m) or ():
            if not isinstance(e, sympy.Basic) or not e.has(ta.symbol):
                continue
            for f in e.atoms(sympy.Function):
                if type(f).__name__ in _BLOCK_FNS and len(f.args) >= 2 and f.args[0].has(ta.symbol):
                    c = f.args[1] * (f.args[2] if type(f).__name__ == "ModularIndexing" else 1)
                    if getattr(c, "is_Integer", False) and 2 <= int(c) <= 1024:
                        consts.add(int(c))
    return sorted(consts)


def block_lengths(r: Region, ta: TimeAxis, lengths: Sequence[int]) -> List[int]:
    """Extra probe lengths for a region that cuts time into blocks (:func:`block_sizes`): a
    block-restarting convolution equals a causal one at every length ``<= b``, so the region is
    also probed at ``2b + 3`` (two whole blocks and a partial one) when that is longer than the
    probe lengths. At most three lengths."""
    top = max(lengths) if lengths else 0
    return sorted({2 * c + 3 for c in block_sizes(r, ta) if 2 * c + 3 > top})[:3]


# ----------------------------------------------------------------------------- diagnosis
@dataclasses.dataclass
class Diagnosis:
    """What the impulse probes of one region at one length showed.

    ``kind``: ``"non-causal"`` (an impulse at ``p`` changes the output at ``t < p``; ``circular``
    when the response is the impulse-at-0 response rotated: an FFT of size ``L``), or
    ``"block"`` (causal, but an impulse reaches outputs only up to the end of its block of
    ``block`` positions; ``first_end``: the end of the first block)."""

    kind: str
    L: int
    p: int = 0
    t: int = 0
    circular: bool = False
    block: int = 0
    first_end: int = 0


class _Impulses:
    """Responses of one region to unit impulses (``y(impulse at p) - y(zeros)``, canonical
    ``[Bc, C, L]``, fp64), from runs of the whole graph at one probe length."""

    def __init__(self, gm, r: Region, ta: TimeAxis, args: List[Any]):
        self.gm, self.r, self.args = gm, r, args
        self.bfront = r.batch_dim0 or batch_in_front(r.u, r.u_tdim, ta.batch)
        y0, u0 = self._run(lambda x: torch.zeros_like(x))
        self.L = u0.shape[r.u_tdim]
        self.zero = y0
        self.tol = tolerance(y0.dtype)
        self.cache: Dict[int, torch.Tensor] = {}

    def _run(self, fn):
        interp = ProbeInterpreter(self.gm, {self.r.u: fn}, {self.r.u, self.r.y})
        with torch.no_grad():
            interp.run(*self.args)
        return interp.recorded_pre[self.r.y], interp.recorded[self.r.u]

    def __call__(self, p: int) -> torch.Tensor:
        if p not in self.cache:
            y, _ = self._run(lambda x: _impulse(x, self.r.u_tdim, p))
            self.cache[p] = canon_eager((y.double() - self.zero.double()), self.r.y_tdim, self.bfront)
        return self.cache[p]

    def active(self, p: int, thr: float) -> torch.Tensor:
        """Positions whose output the impulse at ``p`` changes (bool ``[L]``)."""
        return self(p).abs().amax(dim=(0, 1)) > thr


def diagnose(gm: fx.GraphModule, r: Region, ta: TimeAxis, args: List[Any]) -> Optional[Diagnosis]:
    """Explain, from impulse probes, why region ``r`` is not a causal convolution over the whole
    sequence at the length of ``args``: it reads the future (and whether as a circular FFT
    conv does), or it restarts every ``b`` positions. None when the probes show neither, or the
    region cannot be probed (the graph fails, the shapes do not fit)."""
    if r.u is None or r.y is None or r.u_tdim is None or r.y_tdim is None:
        return None
    try:
        imp = _Impulses(gm, r, ta, args)
        L = imp.L
        if L < 2:
            return None
        r0, rl = imp(0), imp(L - 1)
        scale = max(r0.abs().max().item(), rl.abs().max().item())
        if scale <= 1e-30:
            return None
        thr = imp.tol * scale
        # reads the future: an impulse at p changes an output before p
        for p in (L - 1, L // 2):
            act = imp.active(p, thr)
            if p > 0 and bool(act[:p].any()):
                t = int(act.nonzero()[0])
                circ = p == L - 1 and r0.shape == rl.shape and \
                    (rl - torch.roll(r0, shifts=p, dims=-1)).abs().max().item() <= 10 * thr
                return Diagnosis("non-causal", L, p=p, t=t, circular=circ)
        # block restart: the response to an impulse ends at the end of the impulse's block
        act0 = imp.active(0, thr)
        if not bool(act0.any()):
            return None
        e0 = int(act0.nonzero()[-1]) + 1
        if e0 >= L:
            return None

        def end(p):
            a = imp.active(p, thr)
            if bool(a[:p].any()) or not bool(a.any()):
                return None
            return int(a.nonzero()[-1]) + 1

        e1 = end(e0)
        if e1 is None:
            return None
        b = e1 - e0
        if b < 2 or e0 > b or e1 >= L:
            return None  # not distinguishable from a causal conv with a short filter
        if end(e1 - 1) != e1 or (e0 >= 2 and end(e0 - 1) != e0) or end(e1) != min(e1 + b, L):
            return None
        return Diagnosis("block", L, p=e0, t=e1 - 1, block=b, first_end=e0)
    except Exception:  # noqa: BLE001 - no diagnosis; the caller keeps its own reason
        return None


def _arg_expr(a: Any, ta: TimeAxis) -> str:
    """A graph argument (an int, or a node holding a SymInt) in the user's terms."""
    if isinstance(a, fx.Node):
        v = val(a)
        return ta.user_expr(to_expr(v) if v is not None else None)
    return ta.user_expr(a)


def _what_reads_ahead(r: Region, ta: TimeAxis) -> str:
    """What, in the region's own code, reads the future (for the non-causal reason)."""
    if r.anchor.target == torch.ops.aten.convolution.default:
        K = size_exprs(r.anchor.args[1])[-1]
        pad = r.anchor.args[4][0] if r.anchor.args[4] else 0
        pads = [m for m in r.nodes if m.target == torch.ops.aten.constant_pad_nd.default]
        right = pads[0].args[1][1] if pads and len(pads[0].args[1]) > 1 else 0
        if not (isinstance(pad, int) and pad == 0):
            return (f"bidirectional convolution: {ta.user_expr(K)} taps with padding="
                    f"{_arg_expr(pad, ta)} on both sides")
        if not (isinstance(right, int) and right == 0):
            return (f"convolution of an input padded by {_arg_expr(right, ta)} on the right "
                    "(a future shift)")
        return "bidirectional / 'same'-padded convolution or a future shift"
    y = r.y
    if y is not None and y.target == torch.ops.aten.slice.Tensor and len(y.args) > 2 and \
            not (isinstance(y.args[2], int) and y.args[2] == 0) and y.args[2] is not None:
        return (f"two-sided FFT convolution: the slice after the inverse FFT starts at "
                f"{_arg_expr(y.args[2], ta)}, not 0, FFT size n = {ta.user_expr(r.fft_size)}")
    return (f"two-sided FFT convolution, FFT size n = {ta.user_expr(r.fft_size)}: the filter has "
            f"taps at negative lags, so it reaches future inputs")


def describe_diagnosis(d: Diagnosis, r: Region, ta: TimeAxis) -> str:
    """The refusal reason of a diagnosis, in the user's terms, naming the probe that showed it."""
    if d.kind == "block":
        tail = ""
        if d.first_end != d.block:
            tail = ("; the blocks are counted from the end of the sequence, so outputs also "
                    "change when it grows")
        return (f"block-restarting convolution: outputs restart every {d.block} positions (not a "
                f"causal convolution over the whole sequence): an impulse reaches outputs only up "
                f"to the end of its block (impulse probes at L={d.L}: position {d.p} reaches "
                f"outputs {d.p}..{d.t}, position {d.t} only output {d.t}){tail}")
    ahead = d.p - d.t
    probe = (f"probe at L={d.L}: an impulse at position {d.p} changes the output at position "
             f"{d.t}, {ahead} position{'s' if ahead != 1 else ''} earlier")
    if d.circular:
        what = "circular FFT convolution: FFT size n = L < 2L - 1 wraps around"
    else:
        what = _what_reads_ahead(r, ta)
    return f"non-causal: the output at position t depends on inputs after t ({what}; {probe})"


# ----------------------------------------------------------------------------- the pass
def _verify(gm, regions, ta, make_args, lengths) -> List[Region]:
    out = [dataclasses.replace(r) for r in regions]
    extra = {id(r): block_lengths(r, ta, lengths) for r in out}
    cands = [r for r in out if r.problem is None]
    worst: Dict[int, float] = {id(r): 0.0 for r in cands}
    checked: Dict[int, List[int]] = {id(r): [] for r in cands}
    more = sorted({Ld for r in cands for Ld in extra[id(r)]
                   if r.bound is None or Ld <= r.bound} - set(lengths))
    for L in list(lengths) + more:
        optional = L not in lengths  # a block length: a graph that fails there is no refusal
        alive = [r for r in cands if r.problem is None and
                 (not optional or (L in extra[id(r)] and (r.bound is None or L <= r.bound)))]
        if not alive:
            continue
        try:
            args = make_args(L)
        except Exception:  # noqa: BLE001
            if optional:
                continue
            raise
        gen = torch.Generator().manual_seed(1234 + L)

        def rnd(x):
            return torch.randn(x.shape, generator=gen, dtype=torch.float64).to(device=x.device, dtype=x.dtype)

        probes = {
            "rand": rnd,
            "imp": lambda x, r: _impulse(x, r.u_tdim, 0),
            "zero": lambda x, r: torch.zeros_like(x),
        }
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
                    if not optional:
                        for r in alive:
                            r.problem = f"probe run at L={L} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    return False
                res[name] = {k: interp.recorded[k] for k in interp.recorded}
                for r in alive:  # outputs as computed (a node may also be another region's input)
                    res[name][("y", r.y)] = interp.recorded_pre[r.y]
            return True

        if not run_probes(probes):
            if optional:
                continue
            break  # every region alive at this length has its problem
        for r in alive:
            u, y = res["rand"][r.u], res["rand"][("y", r.y)]
            if optional and u.shape[r.u_tdim] != L:
                continue  # make_args ignored the length (the backend probes its real inputs)
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
            checked[id(r)].append(u.shape[r.u_tdim])
            if err <= tol:
                continue
            d = diagnose(gm, r, ta, args)
            scale = max(res["imp"][("y", r.y)].abs().max().item(), 1e-30)
            if d is not None:  # reads the future, or restarts every b positions
                r.problem = describe_diagnosis(d, r, ta)
            elif r.kind == "long" and res["zero"][("y", r.y)].abs().max().item() > tol * scale:
                r.problem = f"not linear in its input (output for a zero input is not zero; probe at L={L})"
            else:
                r.problem = (f"not a per-channel time-invariant causal convolution: probe mismatch, "
                             f"max rel err {err:.1e} at L={L}")
    _refine_circular(gm, out, ta, make_args, lengths, extra)
    for r in cands:
        if r.problem is None:
            r.max_err = worst[id(r)]
            at = sorted(set(checked[id(r)])) or list(lengths)
            r.verified = (f"verified: random + impulse probes at L={','.join(map(str, at))}, "
                          f"max rel err {worst[id(r)]:.1e}")
    return out


def _refine_circular(gm, regions, ta, make_args, lengths, extra) -> None:
    """A region the matcher flagged as a circular FFT conv because its FFT size is fixed
    (``n = 2b`` over blocks of ``b``) may instead be a block-restarting conv: probe it at the
    lengths that hold two blocks (the probe lengths that do, then its block lengths) and name
    that pattern when the impulses show it."""
    for r in regions:
        if r.problem is None or not r.problem.startswith(CIRCULAR) or r.kind != "long":
            continue
        sizes = block_sizes(r, ta)
        if not sizes:
            continue
        tries = [L for L in lengths if L >= 2 * min(sizes) + 1] + list(extra[id(r)])
        for L in dict.fromkeys(tries):
            try:
                args = make_args(L)
            except Exception:  # noqa: BLE001
                continue
            d = diagnose(gm, r, ta, args)
            if d is not None and d.kind == "block":
                r.problem = describe_diagnosis(d, r, ta)
                break
        else:  # the graph did not run past one block: say what the sizes show
            r.problem += (f" (the region cuts time into blocks of {min(sizes)}: possibly a "
                          f"block-restarting convolution; the impulse probes could not show it"
                          f"{' at L=' + ','.join(map(str, tries)) if tries else ''})")
