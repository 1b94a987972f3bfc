"""Time-axis analysis: which dim of every value is time, and what every node does to time.

Contract: :func:`classify` is a pure function ``(gm, TimeAxis, data input names) -> Analysis``.
It reads only ``meta['val']`` (symbolic sizes) and the op of each node; it never changes ``gm``.

* A dim "has time" if its size expression contains the length symbol ``L`` (symbolic graphs)
  or equals the capture length (static graphs): ``L`` itself, merged ``B*L`` / ``L*H`` (views
  that fold time into another dim), or an FFT domain (``2L``, ``L+1``, ``2**ceil(log2(2L))``).
* ``time_dim``: the index of the one dim that has time (None when there is none).
* Classes (:class:`NodeClass`):
  TIME_INVARIANT - parameters, sizes and everything computed without the input that is only
  used as a convolution filter/weight (folded once at ``max_len``) or has no time dim;
  TIME_SOURCE - values made from positions alone (``arange(L)``, ``table[:L]``): the step
  program feeds them the current position;
  POINTWISE - acts position by position (elementwise, views/permutes/reshapes that keep time,
  casts, matmuls and reductions over other dims, embeddings, layer norms ...);
  LONG_CONV / SHORT_CONV - the ``lcsm`` custom ops;
  UNSUPPORTED - mixes positions in a way that is not a verified causal convolution; ``reason``
  says how (softmax / sum / mean / cumsum over time, flip, pad or slice of time (shifts),
  FFTs or convolutions over time outside a verified region, matmul over time, ...).
  Scans (``cumsum`` over time) are refused: see docs/frontend.md.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import sympy
import torch
import torch.fx as fx

from .common import op_name, size_exprs, to_expr, val

aten = torch.ops.aten

__all__ = ["NodeClass", "NodeInfo", "Analysis", "TimeAxis", "classify", "data_dependent", "length_bound"]


class NodeClass(str, enum.Enum):
    TIME_INVARIANT = "TIME_INVARIANT"
    POINTWISE = "POINTWISE"
    TIME_SOURCE = "TIME_SOURCE"
    LONG_CONV = "LONG_CONV"
    SHORT_CONV = "SHORT_CONV"
    UNSUPPORTED = "UNSUPPORTED"


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    """Per-node result: the class, the time dim of the value (None: no time dim), and for
    UNSUPPORTED nodes the reason."""

    cls: NodeClass
    time_dim: Optional[int] = None
    reason: Optional[str] = None


def _is_min_of_time(x: Any, L: sympy.Symbol) -> bool:
    return type(x).__name__ == "Min" and L in x.args and all(a == L or a.is_number for a in x.args)


@dataclasses.dataclass(frozen=True)
class TimeAxis:
    """The length: ``symbol`` (sympy Symbol, or Integer for a static graph) and the batch.

    Frozen: reading an expression never changes it. ``Min(L, c)`` is read as ``L``; the bounds
    ``L <= c`` that reading assumes are collected separately by :func:`length_bound`.
    """

    symbol: sympy.Expr
    batch: Optional[sympy.Expr] = None

    @property
    def symbolic(self) -> bool:
        return isinstance(self.symbol, sympy.Symbol)

    def normalize(self, e: Any) -> Any:
        """``e`` with ``Min(L, c)`` read as ``L``."""
        if not self.symbolic or not isinstance(e, sympy.Expr) or not e.has(self.symbol):
            return e
        L = self.symbol
        return e.replace(lambda x: _is_min_of_time(x, L), lambda x: L)

    def min_bounds(self, e: Any) -> set:
        """The constants ``c`` of every ``Min(L, c)`` in ``e`` (the bounds ``L <= c`` that
        :meth:`normalize` assumes for it)."""
        if not self.symbolic or not isinstance(e, sympy.Expr) or not e.has(self.symbol):
            return set()
        L = self.symbol
        return {int(min(a for a in x.args if a.is_number)) for x in e.find(lambda x: _is_min_of_time(x, L))}

    def has_time(self, e: sympy.Expr) -> bool:
        e = self.normalize(e)
        if self.symbolic:
            return self.symbol in getattr(e, "free_symbols", ())
        L = int(self.symbol)
        return e == L or (self.batch is not None and e == L * self.batch)

    def is_time(self, e: sympy.Expr) -> bool:
        """Exactly ``L``."""
        e = self.normalize(e)
        if not self.symbolic or e == self.symbol:
            return e == self.symbol
        return bool(e.has(self.symbol) and sympy.expand(e - self.symbol) == 0)

    def is_fft(self, e: sympy.Expr) -> bool:
        """Has time but is neither ``L`` nor ``B*L``: an FFT domain (``2L``, ``L+1``, ...)."""
        if not self.symbolic or not self.has_time(e):
            return False
        e = self.normalize(e)
        q = e / self.symbol  # sympy cancels L in products: (B*L)/L = B, (2L)/L = 2
        if q == 1 or (self.batch is not None and q.free_symbols == {self.batch}):
            return False  # L itself, or L merged with the batch (B*L)
        return True  # 2L, L+1, 2L-1, 2**ceil(log2(2L)), ...

    def time_dims(self, node_or_val) -> List[int]:
        s = size_exprs(node_or_val)
        return [] if s is None else [i for i, e in enumerate(s) if self.has_time(e)]


@dataclasses.dataclass(frozen=True)
class Analysis:
    """``info[node name] -> NodeInfo`` for every node of the graph, plus the symbols."""

    info: Dict[str, NodeInfo]
    time_symbol: Any
    batch_symbol: Any = None

    def __getitem__(self, node: Union[fx.Node, str]) -> NodeInfo:
        return self.info[node.name if isinstance(node, fx.Node) else node]

    def unsupported(self) -> Dict[str, NodeInfo]:
        return {k: v for k, v in self.info.items() if v.cls == NodeClass.UNSUPPORTED}


def data_dependent(gm: fx.GraphModule, data_inputs: Iterable[str]) -> set:
    """Names of the tensor nodes whose value depends on the data input(s).

    SymInt nodes (sizes) never carry data dependence: a size is not data.
    """
    names = set(data_inputs)
    dep = set()
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            if n.name in names:
                dep.add(n.name)
            continue
        if n.op in ("call_function", "call_method", "call_module"):
            v = val(n)
            if isinstance(v, (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool)):
                continue
            if any(a.name in dep for a in n.all_input_nodes):
                dep.add(n.name)
    return dep


# ----------------------------------------------------------------------------- op tables
_VIEWS = {
    aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.permute.default,
    aten.transpose.int, aten.t.default, aten.expand.default, aten.squeeze.dim, aten.squeeze.dims,
    aten.squeeze.default, aten.unsqueeze.default, aten.clone.default, aten.alias.default,
    aten._to_copy.default, aten.split.Tensor, aten.split_with_sizes.default, aten.unbind.int,
    aten.chunk.default, aten.view_as_real.default, aten.view_as_complex.default,
    aten.lift_fresh_copy.default, aten.detach.default, aten.contiguous.default,
    aten.clone.default, aten.copy.default, aten.real.default, aten.imag.default,
    aten.conj.default, aten._conj.default, aten.resolve_conj.default, operator.getitem,
    aten.convert_element_type.default if hasattr(aten, "convert_element_type") else aten.alias.default,
}
_CREATE = {aten.full.default, aten.zeros.default, aten.ones.default, aten.empty.memory_format,
           aten.scalar_tensor.default, aten.empty_strided.default, aten.full_like.default,
           aten.zeros_like.default, aten.ones_like.default, aten.empty_like.default,
           aten.new_zeros.default, aten.new_ones.default, aten.new_full.default,
           aten.new_empty.default}
_REDUCE_DIM = {  # op -> (index of the dim argument, description)
    aten.sum.dim_IntList: (1, "sums over"), aten.mean.dim: (1, "averages over"),
    aten.amax.default: (1, "takes a max over"), aten.amin.default: (1, "takes a min over"),
    aten.var.correction: (1, "takes a variance over"), aten.var.dim: (1, "takes a variance over"),
    aten.std.correction: (1, "takes a std over"), aten.prod.dim_int: (1, "multiplies over"),
    aten.any.dim: (1, "reduces over"), aten.any.dims: (1, "reduces over"),
    aten.all.dim: (1, "reduces over"), aten.argmax.default: (1, "takes an argmax over"),
    aten.argmin.default: (1, "takes an argmin over"), aten.max.dim: (1, "takes a max over"),
    aten.min.dim: (1, "takes a min over"), aten.logsumexp.default: (1, "takes a logsumexp over"),
    aten._softmax.default: (1, "takes a softmax over"),
    aten._log_softmax.default: (1, "takes a log-softmax over"),
    aten.cumsum.default: (1, "takes a cumulative sum (a causal scan) over"),
    aten.cumprod.default: (1, "takes a cumulative product (a causal scan) over"),
    aten.sort.default: (1, "sorts along"), aten.topk.default: (2, "takes a top-k along"),
    aten.var_mean.correction: (1, "takes a variance over"),
    aten.linalg_vector_norm.default: (2, "takes a norm over"),
    aten.norm.ScalarOpt_dim: (2, "takes a norm over"),
}
_FFT = {aten._fft_r2c.default, aten._fft_c2r.default, aten._fft_c2c.default}


def _norm_dims(d, ndim) -> List[int]:
    if d is None:
        return list(range(ndim))
    if isinstance(d, int):
        d = [d]
    return [x % ndim if ndim else 0 for x in d]


def _is_full_slice(node: fx.Node, ta: TimeAxis) -> bool:
    x, dim = node.args[0], node.args[1] if len(node.args) > 1 else 0
    start = node.args[2] if len(node.args) > 2 else None
    end = node.args[3] if len(node.args) > 3 else None
    step = node.args[4] if len(node.args) > 4 else 1
    size = size_exprs(x)[dim]
    if step != 1 or start not in (None, 0):
        return False
    if end is None or (isinstance(end, int) and (end >= 2 ** 62 or (not ta.symbolic and end >= int(size)))):
        return True
    e = to_expr(val(end)) if isinstance(end, fx.Node) else sympy.Integer(end)
    return bool(sympy.simplify(e - size) == 0)


def _is_pointwise_conv(n: fx.Node) -> bool:
    """A convolution with kernel size 1, no padding, stride 1: a per-position linear map."""
    w = val(n.args[1])
    pad, stride = n.args[4], n.args[3]
    # compare sympy expressions: int() of a SymInt would specialize the length
    return (w is not None and all(to_expr(k) == 1 for k in w.shape[2:])
            and all(isinstance(p, int) and p == 0 for p in pad)
            and all(isinstance(s_, int) and s_ == 1 for s_ in stride) and not n.args[6])


def _per_position(n: fx.Node, ta: TimeAxis) -> tuple:
    """``(True, time_dim)`` if ``n`` acts position by position, else ``(False, reason)``."""
    t = n.target
    out_dims = ta.time_dims(n)
    ins = [a for a in n.all_input_nodes if isinstance(val(a), torch.Tensor)]
    in_dims = {a: ta.time_dims(a) for a in ins}
    timed_inputs = [a for a in ins if in_dims[a]]
    if len(out_dims) > 1:
        return False, "non-causal: value with two time axes (positions mixed with positions, e.g. attention scores)"
    if t in _FFT:
        x = n.args[0]
        dims = _norm_dims(n.args[1], val(x).dim())
        if any(d in in_dims.get(x, []) for d in dims):
            return False, "non-causal: FFT over the time axis that is not part of a verified causal convolution"
        return True, out_dims[0] if out_dims else None
    if t == aten.convolution.default:
        x = n.args[0]
        if _is_pointwise_conv(n):
            return True, out_dims[0] if out_dims else None
        if any(d >= 2 for d in in_dims.get(x, [])):
            return False, "non-causal: convolution over the time axis that is not a verified causal convolution"
        return True, out_dims[0] if out_dims else None
    if t in _REDUCE_DIM:
        idx, what = _REDUCE_DIM[t]
        x = n.args[0]
        d = n.args[idx] if len(n.args) > idx else n.kwargs.get("dim")
        if t in (aten._softmax.default, aten._log_softmax.default, aten.cumsum.default,
                 aten.cumprod.default, aten.sort.default):
            d = [d]
        dims = _norm_dims(d, val(x).dim())
        if any(dd in in_dims.get(x, []) for dd in dims):
            extra = ""
            if t in (aten.cumsum.default, aten.cumprod.default):
                extra = " (scans are not streamed by lcsm-compile; see docs/frontend.md)"
            return False, f"non-causal: {what} the time axis{extra}" if not extra else f"{what} the time axis{extra}"
        return True, out_dims[0] if out_dims else None
    if t in (aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default):
        a, b = (n.args[1], n.args[2]) if t in (aten.addmm.default, aten.baddbmm.default) else n.args[:2]
        ka, kb = val(a).dim() - 1, val(b).dim() - 2
        if ka in in_dims.get(a, []) or kb in in_dims.get(b, []):
            return False, "non-causal: matrix product over the time axis (mixes positions)"
        return True, out_dims[0] if out_dims else None
    if t == aten.slice.Tensor:
        x = n.args[0]
        dim = (n.args[1] if len(n.args) > 1 else 0) % val(x).dim()
        if dim in in_dims.get(x, []) and not _is_full_slice(n, ta):
            return False, "non-causal: slices the time axis (output position t reads another position: a shift or crop)"
        return True, out_dims[0] if out_dims else None
    if t == aten.constant_pad_nd.default:
        x, pad = n.args[0], n.args[1]
        nd = val(x).dim()
        for i in range(0, len(pad), 2):
            d = nd - 1 - i // 2
            if d in in_dims.get(x, []) and any(not (isinstance(p, int) and p == 0) for p in pad[i:i + 2]):
                return False, "non-causal: pads the time axis (a shift: position t reads position t - p)"
        return True, out_dims[0] if out_dims else None
    if t in (aten.flip.default,):
        x = n.args[0]
        if any(d in in_dims.get(x, []) for d in _norm_dims(n.args[1], val(x).dim())):
            return False, "non-causal: flips the time axis"
        return True, out_dims[0] if out_dims else None
    if t in (aten.roll.default,):
        return False, "non-causal: rolls the time axis (circular shift)"
    if t == aten.cat.default:
        ts = n.args[0]
        dim = n.args[1] if len(n.args) > 1 else 0
        nd = val(ts[0]).dim()
        if any((dim % nd) in ta.time_dims(x) for x in ts):
            return False, "non-causal: concatenates along the time axis (a shift)"
        return True, out_dims[0] if out_dims else None
    if t in (aten.select.int, aten.index_select.default, aten.gather.default):
        x = n.args[0]
        dim = n.args[1] % val(x).dim()
        if dim in in_dims.get(x, []):
            return False, "non-causal: selects positions along the time axis"
        return True, out_dims[0] if out_dims else None
    if t == aten.index.Tensor:
        x, idx = n.args[0], n.args[1]
        if any(i is not None and d in in_dims.get(x, []) for d, i in enumerate(idx)):
            return False, "non-causal: indexes the time axis"
        return True, out_dims[0] if out_dims else None
    if t in (aten.embedding.default, aten.native_layer_norm.default,
             aten._native_batch_norm_legit_no_training.default, aten.native_dropout.default,
             aten.where.self, aten.masked_fill.Scalar, aten.masked_fill.Tensor, aten.clamp.default,
             aten.stack.default, aten.triu.default, aten.tril.default, aten.bernoulli.p):
        if t == aten.native_layer_norm.default:
            x, shape = n.args[0], n.args[1]
            nd = val(x).dim()
            if any(d in in_dims.get(x, []) for d in range(nd - len(shape), nd)):
                return False, "non-causal: normalizes over the time axis"
        if t in (aten.triu.default, aten.tril.default) and timed_inputs:
            return False, "non-causal: masks by position (triu/tril)"
        return True, out_dims[0] if out_dims else None
    if t in _VIEWS or t in _CREATE:
        return True, out_dims[0] if out_dims else None
    if isinstance(t, torch._ops.OpOverload) and torch.Tag.pointwise in t.tags:
        return True, out_dims[0] if out_dims else None
    if not timed_inputs and not out_dims:
        return True, None
    return False, f"{op_name(n)} is not known to act position by position"


def classify(gm: fx.GraphModule, ta: TimeAxis, data_inputs: Sequence[str],
             region_reasons: Optional[Dict[str, str]] = None) -> Analysis:
    """Classify every node of ``gm`` (see the module doc). Pure: ``gm`` is not changed.

    ``region_reasons``: ``{node name: reason}`` from the matchers/verifier, used as the reason of
    FFT/convolution nodes that stay in the graph because their region was refused.
    """
    region_reasons = region_reasons or {}
    dep = data_dependent(gm, data_inputs)
    nodes = list(gm.graph.nodes)
    conv_ops = (torch.ops.lcsm.long_conv.default, torch.ops.lcsm.short_conv.default)
    # nodes computed without the input and only used as convolution filters/weights
    filter_only: Dict[fx.Node, bool] = {}
    for n in reversed(nodes):
        if n.name in dep or n.op == "output" or not n.users:
            filter_only[n] = False
            continue
        ok = True
        for u in n.users:
            if u.target in conv_ops:
                if u.args[0] is n:
                    ok = False
            elif not filter_only.get(u, False):
                ok = False
        filter_only[n] = ok
    info: Dict[str, NodeInfo] = {}
    for n in nodes:
        if n.op == "output":
            continue
        v = val(n)
        if isinstance(v, (torch.SymInt, int, float, bool, torch.SymFloat, torch.SymBool)) and \
                n.op != "placeholder":
            info[n.name] = NodeInfo(NodeClass.TIME_INVARIANT)
            continue
        tds = ta.time_dims(n) if isinstance(v, torch.Tensor) else []
        td = tds[0] if len(tds) == 1 else None
        if n.op == "placeholder":
            cls = NodeClass.POINTWISE if n.name in data_inputs else NodeClass.TIME_INVARIANT
            info[n.name] = NodeInfo(cls, td if n.name in data_inputs else None)
            continue
        if n.op == "get_attr":
            info[n.name] = NodeInfo(NodeClass.TIME_INVARIANT)
            continue
        if n.target in conv_ops:
            if any(isinstance(a, fx.Node) and a.name in dep for a in n.args[1:]):
                info[n.name] = NodeInfo(NodeClass.UNSUPPORTED, val(n).dim() - 1, reason=(
                    "the convolution filter depends on the input"))
            elif n.target == torch.ops.lcsm.long_conv.default:
                info[n.name] = NodeInfo(NodeClass.LONG_CONV, val(n).dim() - 1)
            else:
                info[n.name] = NodeInfo(NodeClass.SHORT_CONV, val(n).dim() - 1)
            continue
        if n.target == aten.copy_.default:  # in-place buffer write kept by the backend
            info[n.name] = NodeInfo(NodeClass.TIME_INVARIANT if n.name not in dep else NodeClass.POINTWISE, td)
            continue
        if n.name not in dep:
            if filter_only.get(n, False) or not tds:
                info[n.name] = NodeInfo(NodeClass.TIME_INVARIANT, None)
                continue
            if n.target in (aten.arange.start_step, aten.arange.default, aten.arange.start):
                info[n.name] = NodeInfo(NodeClass.TIME_SOURCE, td)
                continue
            if n.target == aten.slice.Tensor and not ta.time_dims(n.args[0]):
                start = n.args[2] if len(n.args) > 2 else None
                if start in (None, 0):
                    info[n.name] = NodeInfo(NodeClass.TIME_SOURCE, td)
                    continue
            if n.target in (aten.linspace.default, aten.logspace.default):
                info[n.name] = NodeInfo(NodeClass.UNSUPPORTED, td, reason=(
                    "linspace over the length: the value at a position depends on the total "
                    "length, so outputs change when the sequence grows"))
                continue
        ok, r = _per_position(n, ta)
        if ok:
            info[n.name] = NodeInfo(NodeClass.POINTWISE, r)
        else:
            reason = region_reasons.get(n.name, r)
            info[n.name] = NodeInfo(NodeClass.UNSUPPORTED, td, reason=reason)
    return Analysis(info, ta.symbol, ta.batch)


def length_bound(ta: TimeAxis, graphs: Iterable[fx.GraphModule]) -> Optional[int]:
    """The largest length the analysis of ``graphs`` holds for: the smallest ``c`` of every
    ``Min(L, c)`` in a size of any node (None: any length)."""
    bounds: set = set()
    for gm in graphs:
        for n in gm.graph.nodes:
            v = val(n)
            exprs = size_exprs(n) or ([to_expr(v)] if isinstance(v, torch.SymInt) else [])
            for e in exprs:
                bounds |= ta.min_bounds(e)
    return min(bounds) if bounds else None
