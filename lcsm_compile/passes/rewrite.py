"""Rewrite verified regions into the ``lcsm`` custom ops, in canonical layout.

Contract: :func:`rewrite_regions` is a pure function ``(gm, regions, ...) -> GraphModule``: it
copies the graph of ``gm`` (sharing its tensors) and returns the copy, where every VERIFIED region (``problem is None``)

* long: ``y`` is replaced by ``uncanon(lcsm::long_conv(canon(u), k))`` where ``k [C, L]`` is
  computed IN THE GRAPH by a copy of the region applied to a unit impulse built from ``L``
  (``arange(L) == 0``), with the batch size set to 1 when the batch is symbolic. The copy
  reads only parameters and sizes, so it is a TIME_INVARIANT subgraph (the filter generator,
  ``/n``, norm modes, decay windows, products of several filter spectra, all included exactly);
* short: ``y`` is replaced by ``uncanon(lcsm::short_conv(canon(u), w[:, 0, :], bias))`` (a left
  padding larger than ``K - 1`` becomes leading zero taps).

``canon`` permutes time last and reshapes to ``[Bc, C, L]`` (see :mod:`.region`); every size
is an ``aten.sym_size.int`` of the data input (or arithmetic on it), so the graph stays valid
at any length. Dead nodes of the old regions are removed and ``meta['val']`` is recomputed.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Dict, List, Sequence, Tuple

import sympy
import torch
import torch.fx as fx

from .common import propagate_fake_nodes, size_exprs, val
from .region import Region, batch_in_front, canon_perm
from .time_axis import TimeAxis

aten = torch.ops.aten

__all__ = ["rewrite_regions"]


class _Inexpressible(Exception):
    """A size of a region has no expression in the input's sizes (the region stays as is)."""


class _Emitter:
    """Emits size arithmetic (sympy -> fx nodes) from ``aten.sym_size.int`` of the data input."""

    def __init__(self, g: fx.Graph, data: fx.Node, tdim: int, ta: TimeAxis):
        self.g, self.data, self.tdim, self.ta = g, data, tdim, ta
        self.sym: Dict[sympy.Symbol, fx.Node] = {}
        for n in g.nodes:  # reuse the sym_size nodes capture made
            if n.target == aten.sym_size.int and n.args[0] is data:
                e = val(n).node.expr if isinstance(val(n), torch.SymInt) else None
                if isinstance(e, sympy.Symbol) and e not in self.sym:
                    self.sym[e] = n
        for d, s in enumerate(val(data).shape):
            if isinstance(s, torch.SymInt) and isinstance(s.node.expr, sympy.Symbol) and \
                    s.node.expr not in self.sym:
                with g.inserting_after(data):
                    n = g.call_function(aten.sym_size.int, (data, d))
                n.meta["val"] = s
                self.sym[s.node.expr] = n

    def __call__(self, e: sympy.Expr) -> Any:
        e = self.ta.normalize(sympy.sympify(e))
        if e.is_Integer:
            return int(e)
        if e in self.sym:
            return self.sym[e]
        if e.is_Mul or e.is_Add:
            op = operator.mul if e.is_Mul else operator.add
            parts = [self(a) for a in e.args]
            acc = parts[0]
            for p in parts[1:]:
                acc = self.g.call_function(op, (acc, p))
            return acc
        raise _Inexpressible(f"the rewrite cannot express the size {e} of a matched region in terms "
                             f"of the input's batch and length")


def _canon(g, em: _Emitter, x: fx.Node, tdim: int, ndim: int, bnode: Any, Lnode: Any) -> fx.Node:
    perm = canon_perm(ndim, tdim)
    p = x if perm == list(range(ndim)) else g.call_function(aten.permute.default, (x, perm))
    return g.call_function(aten.reshape.default, (p, [bnode, -1, Lnode]))


def _uncanon(g, em: _Emitter, c: fx.Node, like: fx.Node, tdim: int) -> fx.Node:
    ndim = val(like).dim()
    perm = canon_perm(ndim, tdim)
    sizes = size_exprs(like)
    shape = [em(sizes[d]) for d in perm]
    r = g.call_function(aten.reshape.default, (c, shape))
    inv = [perm.index(d) for d in range(ndim)]
    return r if inv == list(range(ndim)) else g.call_function(aten.permute.default, (r, inv))


def rewrite_regions(gm: fx.GraphModule, regions: Sequence[Region], ta: TimeAxis,
                    data_input: str, time_dim: int, fake_mode=None) -> Tuple[fx.GraphModule, List[Region]]:
    """Return a copy of ``gm`` with the verified regions replaced (see the module doc), and
    the regions: a region whose sizes the rewrite cannot express is left in the graph as
    captured and comes back with ``problem`` set (a refusal, never an exception)."""
    g = fx.Graph()
    out = g.graph_copy(gm.graph, {})
    g.output(out)
    new = fx.GraphModule(gm, g)  # shares the parameters/buffers of gm (no copies)
    old_nodes = set(g.nodes)
    by_name = {n.name: n for n in g.nodes}
    data = by_name[data_input]
    em = _Emitter(g, data, time_dim, ta)
    B = ta.batch if isinstance(ta.batch, sympy.Symbol) else None
    replaced: Dict[str, fx.Node] = {}  # y of an earlier region -> its replacement
    result: List[Region] = []
    for r0 in regions:
        if r0.problem is not None or r0.u is None:
            result.append(r0)
            continue
        try:
            yn = _rewrite_one(g, em, r0, by_name, replaced, B)
        except _Inexpressible as e:
            result.append(dataclasses.replace(r0, problem=str(e), verified=None))
            continue
        result.append(r0)
        replaced[r0.y.name] = yn
    g.eliminate_dead_code()
    g.lint()
    new.recompile()
    if fake_mode is not None:  # values of the new nodes (the old ones keep theirs)
        propagate_fake_nodes(fake_mode, [n for n in g.nodes if n not in old_nodes])
    return new, result


def _rewrite_one(g: fx.Graph, em: _Emitter, r0: Region, by_name: Dict[str, fx.Node],
                 replaced: Dict[str, fx.Node], B: Any) -> fx.Node:
    """Insert the ``lcsm`` op of one region and route the users of its output to it."""
    u, y = by_name[r0.u.name], by_name[r0.y.name]
    u_in = replaced.get(u.name, u)  # chained regions: read the rewritten value
    nodes = [by_name[m.name] for m in r0.nodes]
    uv, yv = val(u), val(y)
    bfront = batch_in_front(u, r0.u_tdim, B)
    Lexpr = size_exprs(u)[r0.u_tdim]
    with g.inserting_before(y.next):
        Lnode = em(Lexpr)
        if r0.batch_dim0 and not bfront:  # conv layout [B, C, L] with a static batch
            bnode = em(size_exprs(u)[0])
        else:
            bnode = em(B) if bfront else 1
        uc = _canon(g, em, u_in, r0.u_tdim, uv.dim(), bnode, Lnode)
        if r0.kind == "long":
            # impulse with u's shape (batch 1 when the batch is symbolic and in front)
            sizes = size_exprs(u)
            if bfront:
                sizes = [s.subs(B, 1) for s in sizes]
            shape = [em(s) for s in sizes]
            ar = g.call_function(aten.arange.default, (Lnode,), {"device": uv.device})
            eq = g.call_function(aten.eq.Scalar, (ar, 0))
            eqf = g.call_function(aten._to_copy.default, (eq,), {"dtype": uv.dtype})
            vshape = [1] * uv.dim()
            vshape[r0.u_tdim] = Lnode
            eqv = g.call_function(aten.view.default, (eqf, vshape))
            z = g.call_function(aten.zeros.default, (shape,), {"dtype": uv.dtype, "device": uv.device})
            imp = g.call_function(aten.add.Tensor, (z, eqv))
            env: Dict[fx.Node, fx.Node] = {u: imp, u_in: imp}
            cache: Dict[fx.Node, Any] = {}

            def subst(a):
                if a in env:
                    return env[a]
                v = val(a)
                if bfront and isinstance(v, torch.SymInt) and B in v.node.expr.free_symbols:
                    if a not in cache:
                        cache[a] = em(v.node.expr.subs(B, 1))
                    return cache[a]
                return a

            for m in nodes:
                env[m] = g.node_copy(m, subst)
            kfull = env[y]
            kperm = canon_perm(yv.dim(), r0.y_tdim)
            kp = g.call_function(aten.permute.default, (kfull, kperm))
            if bfront or r0.batch_dim0:  # batch row 0 (the filter side may broadcast the batch
                # back in; a static batch in conv layout stays in the impulse: every row is k)
                kp = g.call_function(aten.select.int, (kp, 0, 0))
            k = g.call_function(aten.reshape.default, (kp, [-1, Lnode]))
            out = g.call_function(torch.ops.lcsm.long_conv.default, (uc, k))
        else:
            w = g.call_function(aten.squeeze.dim, (by_name[r0.weight.name], 1))
            K = int(val(r0.weight).shape[-1])
            if r0.left_pad + 1 > K:
                w = g.call_function(aten.constant_pad_nd.default, (w, [r0.left_pad + 1 - K, 0], 0.0))
            b = by_name[r0.bias.name] if r0.bias is not None else None
            out = g.call_function(torch.ops.lcsm.short_conv.default, (uc, w, b))
        out.meta["lcsm_region"] = r0.anchor.name
        for key in ("stack_trace", "nn_module_stack", "source_fn_stack"):
            if key in r0.anchor.meta:
                out.meta[key] = r0.anchor.meta[key]
        yn = _uncanon(g, em, out, y, r0.y_tdim)
        if yv.dtype != uv.dtype:
            yn = g.call_function(aten._to_copy.default, (yn,), {"dtype": yv.dtype})
    y.replace_all_uses_with(yn, delete_user_cb=lambda n: n is not yn)
    return yn
