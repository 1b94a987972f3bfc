"""Causal softmax attention: match, verify (probes, never syntax) and rewrite to ``lcsm::causal_attention``.

Contract: pure functions of the graph, like the convolution passes. :func:`match_attention`
returns candidate :class:`AttentionRegion` s, :func:`verify_attention` copies of them with the
extracted spec (scale, window, ALiBi slopes) and ``verified`` or ``problem`` set,
:func:`rewrite_attention` a new graph where every verified region is one
``lcsm::causal_attention`` node, :func:`attention_records` what ``explain`` prints.

**Match.** Every attention idiom reaches the aten graph the same way (the core decompositions
turn ``F.scaled_dot_product_attention``, ``q @ k.transpose(-2, -1)``, ``einsum`` and
``softmax`` into two batched matmuls around a softmax): a ``_softmax`` over one of the two time
axes of an input-dependent value, a score ``bmm(q [N, L, D], kT [N, D, L])`` behind it and a
``bmm(p [N, L, L], v [N, L, Dv])`` after it (``N`` = batch x heads). The region is every
input-dependent node on a path from ``q``, ``kT``, ``v`` to that second matmul ``y``; the
rest it reads (masks, biases, scales, sizes) is its *bias side*, never pattern-matched.
Rotary embeddings, grouped heads (``repeat_interleave`` / ``expand``), projections and the
scale multiplications SDPA applies to q and k before its matmul are outside the region:
position-wise ops that the step program runs at length 1.

**Verify.** The whole graph runs at the probe lengths (and at a *mask length* past every
number the bias side is built from, in its ops' arguments or in small tensors it reads, so that
a sliding window or a prefix of ``c`` positions shows: ``2c + 3``; a larger table it reads, a
mask cached at length ``T`` and sliced to ``L``, sends the mask probe to ``T``), with the
region's ``q``, ``kT``, ``v`` replaced by

1. ``q = kT = 0`` (``v`` random): the softmax input is then the bias and mask pattern
   ``S0[n, t, s]`` (``-inf`` or below ``-1e4``: masked). The mask must be the causal band
   ``0 <= t - s < W`` (W: the window, or the whole length), the same for every row ``n``; the
   bias, relative to the diagonal, must be ``-m[n] * (t - s)`` (ALiBi; slopes fitted by least
   squares and checked) or zero;
2. random ``q``, ``kT``, ``v`` (in the model's dtype and in fp64): the scale is fitted from
   ``S - S0 = scale * q kT`` on the unmasked entries, and the region's output must equal
   ``lcsm::causal_attention`` with the extracted spec within ``verify.tolerance`` (fp32 1e-4,
   fp64 1e-6: the bias side keeps its own dtype);
3. the keys and values of one position ``p`` perturbed: no output before ``p`` may change.

Grouped-query heads: where the model's own keys and values (recorded in the random-probe runs,
before they are replaced) are equal within blocks of ``g`` consecutive rows of ``N``, the KV
cache keeps one row per block (``kv_group``; a random input makes rows equal only when they are
copies: ``repeat_interleave`` / ``expand`` of kv heads).

A mask that is not causal is refused with what the probe showed: no mask (bidirectional), a
prefix-LM mask (the first ``c`` positions see each other both ways), a mask that lets position
``t`` see ``t + d``. A bias that is not linear in the distance, a bias side that reads a learned
parameter, scores soft-capped or scaled by the length fail likewise, each with its reason.

**Rewrite.** ``y`` becomes ``lcsm::causal_attention(q, kT.transpose(1, 2), v, scale, window,
slopes)``; the region and its bias side become dead code and are removed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import sympy
import torch
import torch.fx as fx

from ..ops import causal_attention_math
from ..report import AttentionRecord
from .common import (ProbeInterpreter, op_name, probe_threads, propagate_fake_nodes, size_exprs, topo_between,
                     user_code, user_source, val)
from .region import Region
from .time_axis import TimeAxis
from .verify import rel_err, tolerance

__all__ = ["AttentionRegion", "ATTENTION", "match_attention", "verify_attention", "rewrite_attention",
           "attention_records", "MASK_PROBE_CAP", "args_at_length"]

aten = torch.ops.aten
ATTENTION = torch.ops.lcsm.causal_attention.default

#: the longest length the mask side is probed at (a constant ``c`` on the bias side needs ``2c + 3``)
MASK_PROBE_CAP = 2051
#: a softmax input at or below this is a masked entry (``-inf``, ``-1e9``, ``finfo.min`` ...)
_MASKED = -1e4


@dataclasses.dataclass(eq=False)
class AttentionRegion(Region):
    """A candidate attention region (``kind == "attention"``): ``u`` is ``q [N, L, D]``, ``kt``
    the score matmul's second operand ``[N, D, L]``, ``v [N, L, Dv]``, ``y`` the second matmul
    ``[N, L, Dv]``, ``anchor`` the softmax. Verification fills the spec: ``scale``, ``window``
    (0: none), ``slopes`` (ALiBi, per head; None: no bias), ``heads`` (rows of ``N`` per batch
    row), ``mask_len`` (the longest length the mask was probed at), ``kv_group`` (grouped-query
    heads: rows ``n`` of ``k`` and ``v`` are the same within blocks of ``kv_group`` consecutive
    rows, found by the probes; the KV cache keeps one row per block)."""

    kt: Optional[fx.Node] = None
    v: Optional[fx.Node] = None
    softmax: Optional[fx.Node] = None
    scale: Optional[float] = None
    window: int = 0
    slopes: Optional[Tuple[float, ...]] = None
    heads: Optional[int] = None
    mask_len: int = 0
    kv_group: int = 1

    def spec(self) -> str:
        """The extracted spec in words."""
        w = f"window {self.window}" if self.window else "no window"
        b = "ALiBi slopes " + ", ".join(f"{m:.4g}" for m in self.slopes) if self.slopes else "no bias"
        g = f", kv heads shared by {self.kv_group} query heads" if self.kv_group > 1 else ""
        return f"scale {self.scale:.6g}, {w}, {b}{g}"


# ----------------------------------------------------------------------------- match
def _tdims(n: Any, ta: TimeAxis) -> List[int]:
    return ta.time_dims(n) if isinstance(n, fx.Node) and isinstance(val(n), torch.Tensor) else []


def match_attention(gm: fx.GraphModule, ta: TimeAxis, dep: set) -> List[AttentionRegion]:
    """Candidate attention regions of ``gm`` (module doc). A softmax over one of two time axes
    whose matmuls are not found becomes a region with ``problem`` set (reported as attention)."""
    out: List[AttentionRegion] = []
    for sm in gm.graph.nodes:
        if sm.op != "call_function" or sm.target != aten._softmax.default or sm.name not in dep:
            continue
        x = sm.args[0]
        tx = _tdims(x, ta)
        if len(tx) != 2 or (sm.args[1] % val(x).dim()) not in tx:
            continue
        out.append(_match_one(sm, ta, dep))
    return out


def _is_bmm(n: fx.Node) -> bool:
    return n.op == "call_function" and n.target == aten.bmm.default


def _match_one(sm: fx.Node, ta: TimeAxis, dep: set) -> AttentionRegion:
    x = sm.args[0]
    bad = lambda why: AttentionRegion("attention", sm, None, None, [sm], softmax=sm,  # noqa: E731
                                      problem=f"unsupported causal attention: {why}")
    if sm.args[1] % val(x).dim() != val(x).dim() - 1 or _tdims(x, ta)[0] != val(x).dim() - 2:
        return bad("the softmax is not over the last (key) axis of [.., L, L] scores")
    scores: List[fx.Node] = []  # score matmuls behind the softmax
    seen, stack = set(), [x]
    while stack:
        n = stack.pop()
        if n in seen or n.name not in dep or len(_tdims(n, ta)) != 2:
            continue
        seen.add(n)
        if _is_bmm(n):
            scores.append(n)
            continue
        stack.extend(n.all_input_nodes)
    pvs: List[fx.Node] = []  # value matmuls after it
    seen, stack = set(), [sm]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        for u in n.users:
            if _is_bmm(u) and u.args[0] is n and len(_tdims(u, ta)) == 1:
                pvs.append(u)
            elif len(_tdims(u, ta)) == 2:
                stack.append(u)
    if len(scores) != 1 or len(pvs) != 1:
        return bad(f"found {len(scores)} score matmul(s) [N, L, L] before the softmax and {len(pvs)} matmul(s) "
                   f"with the values after it (expected one each)")
    sb, pv = scores[0], pvs[0]
    q, kt, v = sb.args[0], sb.args[1], pv.args[1]
    if not (_tdims(q, ta) == [1] and _tdims(kt, ta) == [2] and _tdims(v, ta) == [1] and _tdims(pv, ta) == [1]
            and ta.is_time(size_exprs(q)[1]) and ta.is_time(size_exprs(kt)[2])):
        return bad("the matmul operands are not q [N, L, D], k^T [N, D, L], v [N, L, Dv]")
    srcs = {q, kt, v}
    nodes = topo_between(srcs, pv, lambda n: n.name in dep)
    inside = set(nodes)
    r = AttentionRegion("attention", sm, q, pv, nodes, u_tdim=1, y_tdim=1, kt=kt, v=v, softmax=sm)
    if sm not in inside or sb not in inside:
        r.problem = "unsupported causal attention: the softmax is not between the two matmuls"
        return r
    for m in nodes:
        for a in m.all_input_nodes:
            if a.name in dep and a not in inside and a not in srcs:
                r.problem = (f"unsupported causal attention: the scores depend on the input through "
                             f"{op_name(a)} at {user_source(a) or '?'} (an input-dependent mask or bias)")
                return r
        if m is not pv and any(u not in inside for u in m.users):
            u = next(u for u in m.users if u not in inside)
            r.problem = (f"unsupported causal attention: the attention weights or scores ({op_name(m)}) are "
                         f"also used outside the attention, by {op_name(u)}")
            return r
    return r


# ----------------------------------------------------------------------------- probes
class _Stop(Exception):
    """Raised by :class:`_RegionProbe` once it has what it needs."""


class _RegionProbe(ProbeInterpreter):
    """A :class:`ProbeInterpreter` that stops after ``stop`` (the rest of the graph is not run:
    cheaper, and fp64 probes need not flow into the fp32 layers after the region)."""

    def __init__(self, gm, overrides, record, stop):
        super().__init__(gm, overrides, record)
        self.stop = stop

    def run_node(self, n):
        v = super().run_node(n)
        if n is self.stop:
            raise _Stop
        return v


def _region_run(gm: fx.GraphModule, args: List[Any], r: AttentionRegion, fills: Dict[fx.Node, Callable],
                stop: fx.Node) -> Dict[fx.Node, torch.Tensor]:
    """Run ``gm`` on ``args`` with the region's inputs replaced (``fills[node](value)``), up to
    ``stop``; the recorded values of q, kT, v, the softmax input and ``y``."""
    rec = {r.u, r.kt, r.v, r.softmax.args[0], r.y}
    it = _RegionProbe(gm, dict(fills), rec, stop)
    try:
        with torch.no_grad():
            it.run(*args)
    except _Stop:
        pass
    out = dict(it.recorded)
    out.update({("own", n): v for n, v in it.recorded_pre.items()})  # as the model computed them
    return out


def _bias_side(r: AttentionRegion, dep: set) -> List[fx.Node]:
    """The input-independent nodes the region reads, and their ancestors (masks, biases, sizes)."""
    inside = set(r.nodes) | {r.u, r.kt, r.v}
    out, seen = [], set()
    stack = [a for m in r.nodes for a in m.all_input_nodes if a not in inside]
    while stack:
        a = stack.pop()
        if a in seen or a.name in dep:
            continue
        seen.add(a)
        out.append(a)
        stack.extend(a.all_input_nodes)
    return out


def _numbers(args: Any) -> List[float]:
    out: List[float] = []
    for a in args if isinstance(args, (list, tuple)) else [args]:
        if isinstance(a, (list, tuple)):
            out += _numbers(a)
        elif isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) and abs(a) < 1e4:
            out.append(abs(float(a)))
    return out


def _tensor_of(gm: fx.GraphModule, n: fx.Node, args: List[Any]) -> Any:
    """The tensor a ``get_attr`` node, or a placeholder given in ``args``, holds (else None)."""
    if n.op == "get_attr":
        t = gm
        for p in n.target.split("."):
            t = getattr(t, p, None)
        return t
    if n.op == "placeholder":
        phs = list(gm.graph.find_nodes(op="placeholder"))
        i = phs.index(n)
        return args[i] if i < len(args) else None
    return None


def mask_constant(bias_side: Sequence[fx.Node], gm: Optional[fx.GraphModule] = None,
                  args: Sequence[Any] = ()) -> float:
    """The largest number (below 1e4 in magnitude, e.g. a window or a prefix length) the bias
    side is computed with: the numbers in its ops' arguments and the values of the small tensors
    it reads (a window kept in a buffer); a mask that changes with the length shows by ``2c + 3``."""
    nums = [0.0]
    for n in bias_side:
        if n.op == "call_function":
            nums += _numbers(list(n.args) + list(n.kwargs.values()))
        elif gm is not None:
            t = _tensor_of(gm, n, list(args))
            if isinstance(t, torch.Tensor) and 0 < t.numel() <= 1024 and not t.is_complex():
                nums += _numbers(t.detach().double().flatten().tolist())
    return max(nums)


def table_length(bias_side: Sequence[fx.Node], gm: fx.GraphModule, args: Sequence[Any] = ()) -> int:
    """The longest dim of a larger tensor the bias side reads (a mask or bias table cached at
    some length and sliced to ``L``, e.g. ``tril(ones(T, T))[:L, :L]``): probing the mask at that
    length checks the whole table (0: none)."""
    out = 0
    for n in bias_side:
        t = _tensor_of(gm, n, list(args))
        if isinstance(t, torch.Tensor) and t.numel() > 1024:
            out = max(out, max(int(d) for d in t.shape))
    return out


def _learned(gm: fx.GraphModule, bias_side: Sequence[fx.Node], args: List[Any]) -> Optional[str]:
    """The name of a learned parameter the bias side reads (the extracted spec would not follow
    it when it changes), or None."""
    for n in bias_side:
        t = _tensor_of(gm, n, args)
        if isinstance(t, torch.nn.Parameter) and t.requires_grad:
            return n.meta.get("lcsm_origin") or str(n.target)
    return None


def args_at_length(make_args: Callable[[int], List[Any]], gm: fx.GraphModule, data_inputs: Sequence[fx.Node],
                   time_dims: Dict[str, int]) -> Callable[[int], List[Any]]:
    """``make_args``, or, where it ignores the length (the backend probes a graph on its real
    inputs), the same arguments with every data input cut or repeated to the length asked for
    along its time dim (the mask side depends on the length only; the region's own inputs are
    replaced by the probes). For symbolic graphs, whose sizes are read from the inputs."""
    phs = list(gm.graph.find_nodes(op="placeholder"))
    idx = [(phs.index(p), time_dims[p.name]) for p in data_inputs if p in phs]

    def at(L: int) -> List[Any]:
        args = list(make_args(L))
        for i, d in idx:
            t = args[i]
            if not isinstance(t, torch.Tensor) or t.shape[d] == L or t.shape[d] == 0:
                continue
            reps = -(-L // t.shape[d])
            t = torch.cat([t] * reps, d) if reps > 1 else t
            args[i] = t.narrow(d, 0, L).contiguous()
        return args
    return at


# ----------------------------------------------------------------------------- spec extraction
def _mask_problem(A: torch.Tensor, L: int) -> Optional[str]:
    """Why the allowed pattern ``A [L, L]`` (query t, key s) is not causal, in the user's terms."""
    up = torch.triu(A, 1)
    if not bool(up.any()):
        return None
    if bool(A.all()):
        return (f"non-causal attention: bidirectional (no causal mask: every position attends to every "
                f"other; probe at L={L})")
    t, s = (int(i) for i in up.nonzero()[0])
    fut = up.nonzero()
    c = int(fut[:, 1].max()) + 1
    prefix = bool((fut[:, 1] < c).all()) and bool((fut[:, 0] < c).all()) and bool(A[:c, :c].all())
    if prefix and c < L:
        return (f"non-causal attention: prefix-LM mask (positions 0..{c - 1} attend to each other in both "
                f"directions: position {t} sees position {s}; probe at L={L})")
    lead = int((fut[:, 1] - fut[:, 0]).max())
    return (f"non-causal attention: the mask lets position {t} attend to position {s}, {s - t} later (up to "
            f"{lead} position{'s' if lead != 1 else ''} ahead; probe at L={L})")


def _spec_from_bias(S0: torch.Tensor, heads: int, L: int) -> Tuple[Optional[str], int, Optional[tuple]]:
    """``(problem, window, slopes)`` from the bias/mask pattern ``S0 [N, L, L]`` (fp64)."""
    if bool(torch.isnan(S0).any()):
        return "unsupported causal attention: the scores of zero queries and keys are NaN", 0, None
    allowed = S0 > _MASKED
    A = allowed[0]
    if not bool((allowed == A).all()):
        return "unsupported causal attention: the mask differs between heads or batch rows", 0, None
    why = _mask_problem(A, L)
    if why is not None:
        return why, 0, None
    if not bool(A.diagonal().all()):
        t = int((~A.diagonal()).nonzero()[0])
        return (f"unsupported causal attention: position {t} does not attend to itself (probe at L={L})", 0, None)
    ti = torch.arange(L)[:, None]
    si = torch.arange(L)[None, :]
    W = int(A.sum(1).max())
    band = (ti - si >= 0) & (ti - si < W)
    if not bool((A == band).all()):
        t = int((A != band).any(1).nonzero()[0])
        return (f"unsupported causal attention: the mask is causal but not a band 0 <= t - s < W (row {t} "
                f"attends to {A[t].nonzero().flatten().tolist()}; probe at L={L})"), 0, None
    window = W if W < L else 0
    d = (ti - si).to(S0.dtype).expand_as(S0[0])
    rel = S0 - S0.diagonal(dim1=1, dim2=2)[:, :, None]       # bias relative to the diagonal
    sel = A & (ti > si)
    if not bool(sel.any()):
        return None, window, None
    D = rel[:, sel]                                          # [N, pairs]
    dd = d[sel]
    scale = max(float(D.abs().max()), 1.0)
    if float(D.abs().max()) <= 1e-12:
        return None, window, None
    m = -(D * dd).sum(1) / (dd * dd).sum()                   # per row n: D = -m (t - s)
    resid = float((D + m[:, None] * dd).abs().max())
    if resid > 1e-5 * scale:
        return (f"unsupported causal attention: the attention bias is not linear in the distance t - s "
                f"(only ALiBi biases -m * (t - s) are streamed; residual {resid:.1e}; probe at L={L})", window, None)
    N = m.numel()
    if N % heads or not torch.allclose(m, m[:heads].repeat(N // heads), rtol=1e-6, atol=1e-9):
        return ("unsupported causal attention: the ALiBi slopes are not the same for every batch row "
                "(rows of batch x heads, batch-major)", window, None)
    return None, window, tuple(float(x) for x in m[:heads])


def _heads(r: AttentionRegion, ta: TimeAxis, n_rows: int) -> int:
    """Rows of ``N`` per batch row: ``N / B`` when ``N`` carries the batch symbol, else ``N``."""
    e = size_exprs(r.u)[0]
    if ta.batch is not None and isinstance(ta.batch, sympy.Symbol) and isinstance(e, sympy.Expr) and \
            e.has(ta.batch):
        h = sympy.simplify(e / ta.batch)
        if h.is_Integer and int(h) > 0:
            return int(h)
    return n_rows


def _kv_group(owns: Sequence[tuple], heads: int) -> int:
    """The largest ``g`` dividing ``heads`` such that the model's own keys and values (``kT``,
    ``v`` at every probe length, on the probe inputs) are equal within every block of ``g``
    consecutive rows of ``N`` (grouped-query heads repeated by ``repeat_interleave`` or
    ``expand``): a random input makes rows equal only when they are copies. 1: none."""
    if not owns:
        return 1
    for g in range(heads, 1, -1):
        if heads % g:
            continue
        ok = True
        for kt, v in owns:
            for t in (kt, v):
                if t.shape[0] % g:
                    ok = False
                    break
                b = t.reshape(t.shape[0] // g, g, -1)
                if not torch.equal(b, b[:, :1].expand_as(b)):
                    ok = False
                    break
            if not ok:
                break
        if ok:
            return g
    return 1


# ----------------------------------------------------------------------------- verify
def verify_attention(gm: fx.GraphModule, regions: Sequence[AttentionRegion], ta: TimeAxis,
                     make_args: Callable[[int], List[Any]], lengths: Sequence[int] = (5, 12),
                     dep: Optional[set] = None) -> List[AttentionRegion]:
    """Probe every candidate region (module doc); copies come back with the spec and
    ``verified``, or ``problem``."""
    out = [dataclasses.replace(r) for r in regions]
    with probe_threads():
        for r in out:
            if r.problem is None:
                try:
                    _verify_one(gm, r, ta, make_args, list(lengths), dep or set())
                except Exception as e:  # noqa: BLE001 - a probe that fails is a refusal
                    r.problem = (f"unsupported causal attention: probe failed ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})")
    return out


def _fills(dtype: torch.dtype, gen: torch.Generator, zero_qk: bool, r: AttentionRegion) -> Dict[fx.Node, Callable]:
    def rnd(x):  # drawn on the CPU (one generator for every device), placed on the region's device
        return torch.randn(x.shape, generator=gen, dtype=torch.float64).to(device=x.device, dtype=dtype)

    def zero(x):
        return torch.zeros(x.shape, dtype=dtype, device=x.device)
    return {r.u: zero if zero_qk else rnd, r.kt: zero if zero_qk else rnd, r.v: rnd}


def _verify_one(gm, r: AttentionRegion, ta: TimeAxis, make_args, lengths: List[int], dep: set) -> None:
    side = _bias_side(r, dep)
    args0 = make_args(lengths[-1])
    learned = _learned(gm, side, args0)
    if learned is not None:
        r.problem = (f"unsupported causal attention: the attention bias/mask is computed from the learned "
                     f"parameter {learned} (only fixed masks and ALiBi slopes are streamed)")
        return
    c = mask_constant(side, gm, args0)
    # a static graph holds for its one length (dynamo guards it); a symbolic one for every length
    need = int(2 * math.ceil(c) + 3) if ta.symbolic else 0
    if need > MASK_PROBE_CAP:
        r.problem = (f"unsupported causal attention: the mask is built with the number {c:g} (a window or a "
                     f"prefix that long); masks are verified up to length {MASK_PROBE_CAP}")
        return
    table = table_length(side, gm, args0) if ta.symbolic else 0
    if table > MASK_PROBE_CAP:
        r.problem = (f"unsupported causal attention: the mask or bias is read from a table of {table} positions; "
                     f"masks are verified up to length {MASK_PROBE_CAP}")
        return
    need = max(need, table)
    dt = val(r.u).dtype
    probe_lens = sorted(set(lengths))
    mask_len = max(probe_lens + [need])
    runs: Dict[int, dict] = {}
    S0s: Dict[int, torch.Tensor] = {}
    owns: List[tuple] = []  # the model's own kT, v at the probe lengths
    for L in sorted(set(probe_lens + [mask_len])):
        args = args0 if L == lengths[-1] else make_args(L)
        gen = torch.Generator().manual_seed(4321 + L)
        z = None
        for zdt in (torch.float64, dt):  # the bias pattern, in fp64 where the region runs in it
            try:
                z = _region_run(gm, args, r, _fills(zdt, gen, True, r), r.softmax)
                break
            except Exception:  # noqa: BLE001 - fp64 not possible: the model's dtype
                continue
        if z is None:
            raise RuntimeError("the region does not run on probe inputs")
        Lr = z[r.u].shape[1]
        N = z[r.u].shape[0]
        S0 = z[r.softmax.args[0]].double().cpu()  # the mask analysis runs on the CPU
        if S0.numel() != N * Lr * Lr:
            raise RuntimeError(f"scores of {S0.numel()} values for N={N}, L={Lr}")
        S0s[Lr] = S0.reshape(N, Lr, Lr)
        if L in probe_lens:
            runs[Lr] = {"args": args}
    Lm = max(S0s)
    if Lm < need:  # the graph only runs at one length (the backend): the mask is not proven past it
        r.problem = (f"unsupported causal attention: the mask is built with the number {c:g}; it must be probed "
                     f"at length >= {need}, but this graph was probed at L={Lm} only")
        return
    heads = _heads(r, ta, S0s[Lm].shape[0])
    why, window, slopes = _spec_from_bias(S0s[Lm], heads, Lm)
    if why is not None:
        r.problem = why
        return
    r.window, r.slopes, r.heads, r.mask_len = window, slopes, heads, Lm
    # random probes: the scale, then the whole region against the canonical op (model dtype, fp64)
    worst = 0.0
    scales = []
    for Lr, run in sorted(runs.items()):
        for rdt in (torch.float64, dt):  # fp64 first: the scale is fitted on the first run
            gen = torch.Generator().manual_seed(777 + Lr)
            try:
                res = _region_run(gm, run["args"], r, _fills(rdt, gen, False, r), r.y)
            except Exception:  # noqa: BLE001 - no fp64 run for this region
                if rdt == dt:
                    raise
                continue
            if rdt == torch.float64 and res[r.y].dtype != torch.float64:
                continue  # the region casts to its own dtype: no fp64 probe
            q, kt, v, y = res[r.u], res[r.kt], res[r.v], res[r.y]
            if rdt == dt:
                owns.append((res[("own", r.kt)], res[("own", r.v)]))
            S = res[r.softmax.args[0]].double().cpu().reshape(q.shape[0], Lr, Lr)
            S0 = S0s[Lr] if Lr in S0s else None
            qk = torch.bmm(q.double(), kt.double()).cpu()
            if r.scale is None and S0 is not None:
                keep = S0 > _MASKED
                dS = (S - S0)[keep]
                den = float((qk[keep] ** 2).sum())
                scales.append(float((dS * qk[keep]).sum()) / max(den, 1e-300))
                r.scale = scales[-1]
            ref = causal_attention_math(q.double(), kt.double().transpose(1, 2), v.double(), r.scale, window, slopes)
            err = rel_err(y, ref)
            tol = tolerance(rdt) if rdt != torch.float64 else 1e-6
            if rdt == dt:
                worst = max(worst, err)
            if err > tol:
                r.problem = (f"unsupported causal attention: the region is not softmax(scale * q k^T + bias) v "
                             f"with the causal mask it was found to use ({r.spec()}): rel err {err:.1e} at L={Lr} "
                             f"({str(rdt).replace('torch.', '')} probe; scores soft-capped or scaled by the length?)")
                return
            if rdt == dt and Lr == max(runs):  # a future key/value must not reach earlier outputs
                for p in sorted({Lr - 1, Lr // 2}):
                    kt2, v2 = kt.clone(), v.clone()
                    kt2[:, :, p:] += 1.0
                    v2[:, p:] += 1.0
                    fills = {r.u: lambda x, q=q: q, r.kt: lambda x, kt2=kt2: kt2, r.v: lambda x, v2=v2: v2}
                    y2 = _region_run(gm, run["args"], r, fills, r.y)[r.y]
                    if p > 0 and rel_err(y2[:, :p], y[:, :p]) > tolerance(rdt):
                        r.problem = (f"non-causal attention: changing the keys and values from position {p} on "
                                     f"changes outputs before {p} (probe at L={Lr})")
                        return
    r.max_err = worst
    r.kv_group = _kv_group(owns, heads)
    r.verified = (f"verified: random, zero-q/k and future-perturbation probes at L={','.join(map(str, sorted(runs)))}"
                  f" (mask probed at L={Lm}), max rel err {worst:.1e}; {r.spec()}")


# ----------------------------------------------------------------------------- rewrite
def rewrite_attention(gm: fx.GraphModule, regions: Sequence[AttentionRegion],
                      fake_mode=None) -> Tuple[fx.GraphModule, List[AttentionRegion]]:
    """A copy of ``gm`` (sharing its tensors) with every verified region replaced by
    ``lcsm::causal_attention`` (module doc); the regions are returned unchanged."""
    if not any(r.problem is None for r in regions):
        return gm, list(regions)
    g = fx.Graph()
    out = g.graph_copy(gm.graph, {})
    g.output(out)
    new = fx.GraphModule(gm, g)
    by_name = {n.name: n for n in g.nodes}
    added: List[fx.Node] = []
    for r in regions:
        if r.problem is not None:
            continue
        q, kt, v, y = (by_name[n.name] for n in (r.u, r.kt, r.v, r.y))
        with g.inserting_before(y.next):
            k = g.call_function(aten.transpose.int, (kt, 1, 2))
            att = g.call_function(ATTENTION, (q, k, v, float(r.scale), int(r.window),
                                              list(r.slopes) if r.slopes else None))
            nodes = [k, att]
            if val(y).dtype != val(v).dtype:
                nodes.append(g.call_function(aten._to_copy.default, (att,), {"dtype": val(y).dtype}))
        att.meta["lcsm_region"] = r.anchor.name
        att.meta["lcsm_kv_group"] = int(r.kv_group)  # the KV cache keeps one row of k, v per group
        for key in ("stack_trace", "nn_module_stack", "source_fn_stack"):
            if key in r.anchor.meta:
                att.meta[key] = r.anchor.meta[key]
        keep = set(nodes)
        y.replace_all_uses_with(nodes[-1], delete_user_cb=lambda n: n not in keep)
        added += nodes
    g.eliminate_dead_code()
    g.lint()
    new.recompile()
    if fake_mode is not None:
        propagate_fake_nodes(fake_mode, added)
    return new, list(regions)


# ----------------------------------------------------------------------------- records
def attention_records(gm: fx.GraphModule, regions: Sequence[AttentionRegion], ta: TimeAxis) -> List[AttentionRecord]:
    """What ``explain`` prints for every verified attention region, in region order."""
    from .describe import fmt_shape

    by_region = {n.meta.get("lcsm_region"): n for n in gm.graph.nodes if n.target == ATTENTION}
    out = []
    for r in regions:
        if r.problem is not None:
            continue
        node = by_region.get(r.anchor.name)
        qv, vv = val(r.u), val(r.v)
        out.append(AttentionRecord(
            kind="attention", node=node.name if node is not None else "?", op=op_name(r.anchor),
            source=user_source(r.anchor), code=user_code(r.anchor),
            q_shape=fmt_shape(r.u, ta), k_shape=fmt_shape(r.kt, ta), v_shape=fmt_shape(r.v, ta),
            heads=int(r.heads or qv.shape[0]), head_dim=int(qv.shape[-1]), v_dim=int(vv.shape[-1]),
            scale=float(r.scale), window=int(r.window), slopes=r.slopes,
            kv_heads=int(r.heads or qv.shape[0]) // r.kv_group,
            itemsize=torch.empty((), dtype=qv.dtype).element_size(), verified=r.verified or "",
            max_err=r.max_err))
    return out
