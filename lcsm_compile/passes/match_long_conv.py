"""Match long-convolution regions built on FFTs.

Contract: :func:`match_long_convs` is a pure function ``(gm, TimeAxis, data_dep) -> [Region]``;
``gm`` is not changed. A region is a CANDIDATE: :mod:`.verify` probes it before any rewrite.

How (structure, not names): every inverse FFT on input-dependent data (``_fft_c2r``, or
``_fft_c2c`` with ``forward=False``) anchors a region. Walking backwards through
input-dependent nodes from the anchor, the walk stops at the first real value that has a dim
of size exactly ``L``: that is ``u`` (the signal; pads to ``2L``/next power of two, casts,
forward FFTs, products with filter spectra, ``/n`` and norm modes lie in between). Walking
forwards from the anchor through single-user nodes (``view_as_real``/``select`` for ``.real``,
casts, the ``[:L]`` slice) the walk stops at the first real value with a dim of size exactly
``L``: that is ``y``. The filter side (anything computed without the input: parameters sliced
``[:L]``, implicit MLP filters, modal/complex generators, shared per-head filters, decay
windows) is whatever the region reads besides ``u``; it is not pattern-matched at all - the
rewrite gets the filter by feeding the region an impulse. Skip terms ``u * D`` stay outside
the region as pointwise ops. Structural problems (two input-dependent signals, no way back to
length ``L``, a size ``n < 2L - 1``) are recorded in ``Region.problem``.
"""

from __future__ import annotations

from typing import List, Set

import sympy
import torch
import torch.fx as fx

from .common import size_exprs, topo_between, val
from .region import Region
from .time_axis import TimeAxis

aten = torch.ops.aten

__all__ = ["match_long_convs", "match_scans", "is_inverse_fft", "circular_reason", "CIRCULAR"]


def is_inverse_fft(n: fx.Node) -> bool:
    return n.op == "call_function" and (
        n.target == aten._fft_c2r.default or
        (n.target == aten._fft_c2c.default and len(n.args) > 3 and not n.args[3]))


def _time_domain(n: fx.Node, ta: TimeAxis) -> bool:
    v = val(n)
    if not isinstance(v, torch.Tensor) or v.is_complex():
        return False
    return any(ta.is_time(e) for e in size_exprs(n))


def _tdim(n: fx.Node, ta: TimeAxis):
    d = [i for i, e in enumerate(size_exprs(n)) if ta.is_time(e)]
    return d[0] if len(d) == 1 else None


#: how the match names an FFT size that wraps around (verify refines such regions by probes)
CIRCULAR = "circular FFT convolution"


def _size_at(n_expr, ta: TimeAxis, L: int):
    """The FFT size at length ``L`` (an int), or None when it cannot be evaluated."""
    try:
        v = n_expr.subs(ta.symbol, L)
        return int(v) if v.is_number else None
    except Exception:  # noqa: BLE001 - opaque torch sympy functions
        return None


def _fft_size_ok(n_expr, ta: TimeAxis):
    """False if the FFT size is provably < 2L - 1 for some L in 2..64 (circular wrap-around)."""
    if not ta.symbolic:
        return int(n_expr) >= 2 * int(ta.symbol) - 1
    for L in (2, 3, 5, 8, 13, 31, 64):
        v = _size_at(n_expr, ta, L)
        if v is not None and v < 2 * L - 1:
            return False
    return True


def circular_reason(n_expr, ta: TimeAxis) -> str:
    """``circular FFT convolution: FFT size n = L < 2L - 1 wraps around`` with the size in the
    user's terms, and from which length on when it does not wrap at every length (a fixed
    ``n = 32``: ``for L > 16``)."""
    n = ta.user_expr(n_expr)
    if not ta.symbolic:
        return f"{CIRCULAR}: FFT size n = {n} < 2L - 1 = {2 * int(ta.symbol) - 1} wraps around (L = {int(ta.symbol)})"
    first = next((L for L in range(2, 129) if (v := _size_at(n_expr, ta, L)) is not None and v < 2 * L - 1), None)
    when = f" for L > {first - 1}" if first is not None and first > 2 else ""
    return f"{CIRCULAR}: FFT size n = {n} < 2L - 1 wraps around{when}"


_SCALE_OPS = {torch.ops.aten.mul.Tensor, torch.ops.aten.div.Tensor, torch.ops.aten.mul.Scalar,
              torch.ops.aten.div.Scalar}


def _absorb_scalar_scales(y: fx.Node, dep) -> fx.Node:
    """``y`` extended through multiplications / divisions by scalars that do not depend on the
    input (``* sqrt(n)`` after an ``norm="ortho"`` FFT, ``* scale``): the region stays linear and
    time-invariant, and an L-dependent factor that cancels one inside the region (1/sqrt(n))
    then cancels inside the filter, which is computed from the whole region."""
    while True:
        users = [u for u in y.users if dep(u)]
        if len(users) != 1 or users[0].target not in _SCALE_OPS or users[0].args[0] is not y:
            return y
        other = users[0].args[1]
        if isinstance(other, fx.Node):
            v = val(other)
            if dep(other) or (isinstance(v, torch.Tensor) and v.dim() != 0):
                return y
        elif not isinstance(other, (int, float)):
            return y
        y = users[0]


def match_long_convs(gm: fx.GraphModule, ta: TimeAxis, data_dep: Set[str]) -> List[Region]:
    """Candidate FFT long-conv regions of ``gm`` (see the module doc)."""
    out: List[Region] = []
    dep = lambda n: n.name in data_dep  # noqa: E731
    for n in gm.graph.nodes:
        if not is_inverse_fft(n) or not dep(n):
            continue
        # backwards to u
        us, seen, stack = [], set(), [n]
        while stack:
            m = stack.pop()
            if m in seen:
                continue
            seen.add(m)
            for a in m.all_input_nodes:
                if not dep(a) or a in seen:
                    continue
                if _time_domain(a, ta):
                    if a not in us:
                        us.append(a)
                    seen.add(a)
                else:
                    stack.append(a)
        # forwards to y
        y, cur = (n if _time_domain(n, ta) else None), n
        for _ in range(12 if y is None else 0):
            users = [u for u in cur.users if dep(u)]
            if len(users) != 1:
                break
            cur = users[0]
            if _time_domain(cur, ta):
                y = cur
                break
        if y is not None:
            y = _absorb_scalar_scales(y, dep)
        fft_dim = n.args[1][-1] % val(n).dim()
        n_expr = size_exprs(n)[fft_dim]
        # a fixed FFT size (e.g. 2 * l_max) is causal only for 2L - 1 <= n
        bound = (int(n_expr) + 1) // 2 if ta.symbolic and n_expr.is_Integer else None
        r = Region("long", n, us[0] if len(us) == 1 else None, y, [], fft_size=n_expr, bound=bound)
        if len(us) != 1:
            r.problem = (f"the FFT product involves {len(us)} input-dependent signals "
                         "(not a convolution with a fixed filter)") if us else \
                "no input-dependent signal of length L before the FFT"
        elif y is None:
            r.problem = (f"no [:L] slice back to length L after the inverse FFT (its output has "
                         f"{ta.user_expr(n_expr)} positions along the FFT dim)")
        elif not _fft_size_ok(n_expr, ta):
            r.problem = circular_reason(n_expr, ta)
        if len(us) == 1 and y is not None:  # also for flagged regions: the probe can still run
            r.u_tdim, r.y_tdim = _tdim(r.u, ta), _tdim(y, ta)
            r.nodes = topo_between([r.u], y, allowed=dep)
        elif len(us) == 1:  # no way back to L: the nodes from u to the anchor are the region
            r.nodes = topo_between([r.u], n, allowed=dep)
        if r.problem is None:
            inside = set(r.nodes) | {r.u}
            for m in r.nodes:
                if any(dep(a) and a not in inside for a in m.all_input_nodes):
                    r.problem = "the region reads a second input-dependent value"
                    break
            if r.u_tdim is None or r.y_tdim is None:
                r.problem = r.problem or "ambiguous time dim (two dims of size L)"
            elif sympy.simplify(sympy.Mul(*[ta.normalize(e) for i, e in enumerate(size_exprs(r.u)) if i != r.u_tdim]) -
                                sympy.Mul(*[ta.normalize(e) for i, e in enumerate(size_exprs(y)) if i != r.y_tdim])) != 0:
                r.problem = r.problem or "the region changes the number of channels"
        if r.problem is not None and y is not None and not r.nodes:
            r.nodes = [m for m in gm.graph.nodes if m is n]
        out.append(r)
    return out


def match_scans(gm: fx.GraphModule, ta: TimeAxis, data_dep: Set[str]) -> List[Region]:
    """``cumsum`` over the time axis of input-dependent data: a causal conv with an all-ones
    filter. Returned as long regions tagged ``scan`` (``k_origin``); verified and rewritten like
    any long conv, so the streaming side needs no new op (see docs/frontend.md)."""
    out: List[Region] = []
    for n in gm.graph.nodes:
        if n.target != aten.cumsum.default or n.name not in data_dep:
            continue
        x = n.args[0]
        d = n.args[1] % val(x).dim()
        if not ta.is_time(size_exprs(x)[d]) or _tdim(x, ta) != d:
            continue
        r = Region("long", n, x, n, [n], u_tdim=d, y_tdim=d, k_origin="scan: cumsum over time")
        if n.kwargs.get("dtype") not in (None, val(x).dtype):
            r.problem = "cumsum with a dtype change"
        out.append(r)
    return out
