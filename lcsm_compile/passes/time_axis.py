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
  LONG_CONV / SHORT_CONV - the ``lcsm`` custom ops; ATTENTION - ``lcsm::causal_attention``;
  UNSUPPORTED - mixes positions in a way that is not a verified causal convolution; ``reason``
  says how (softmax / sum / mean / cumsum over time, flip, pad or slice of time (shifts),
  FFTs or convolutions over time outside a verified region, matmul over time, ...).
  Scans (``cumsum`` over time) are refused: see docs/frontend.md.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import operator
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import sympy
import torch
import torch.fx as fx

from .common import op_name, size_exprs, to_expr, val

aten = torch.ops.aten

__all__ = ["NodeClass", "NodeInfo", "Analysis", "TimeAxis", "classify", "data_dependent", "filter_only", "length_bound",
           "RegionReason", "user_expr"]


class NodeClass(str, enum.Enum):
    TIME_INVARIANT = "TIME_INVARIANT"
    POINTWISE = "POINTWISE"
    TIME_SOURCE = "TIME_SOURCE"
    LONG_CONV = "LONG_CONV"
    SHORT_CONV = "SHORT_CONV"
    ATTENTION = "ATTENTION"  # lcsm::causal_attention (passes/match_attention.py): a KV cache when streamed
    UNSUPPORTED = "UNSUPPORTED"


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    """Per-node result: the class, the time dim of the value (None: no time dim), and for
    UNSUPPORTED nodes the reason; ``region``: the anchor name of the failed convolution region
    the reason comes from (its member nodes make ONE refusal), None otherwise."""

    cls: NodeClass
    time_dim: Optional[int] = None
    reason: Optional[str] = None
    region: Optional[str] = None


class RegionReason(str):
    """The reason a convolution region failed (a ``str``), tagged with the region's anchor node
    name (``.region``): :func:`classify` records it in :attr:`NodeInfo.region` so that the
    region's member nodes give one refusal, not one per node or line."""

    region: Optional[str]

    def __new__(cls, text: str, region: Optional[str] = None) -> "RegionReason":
        obj = super().__new__(cls, text)
        obj.region = region
        return obj

    def __reduce__(self):
        return (RegionReason, (str(self), self.region))


# ----------------------------------------------------------------------------- sizes for people
#: the names sizes are printed with: the length ``L``, the batch ``B``
_L = sympy.Symbol("L", integer=True, positive=True)
_B = sympy.Symbol("B", integer=True, positive=True)
_log2 = sympy.Function("log2")
_round = sympy.Function("round")


def _plain(e: Any) -> Any:
    """``e`` with torch's sympy functions (``FloorDiv``, ``PythonMod``, ``CeilToInt``,
    ``PowByNatural``, ``OpaqueUnaryFn_log2``, ...) rewritten as plain sympy (floor, ceiling,
    powers), so that sympy can simplify and print them."""
    if not isinstance(e, sympy.Basic) or not e.args:
        return e
    a = [_plain(x) for x in e.args]
    name = type(e).__name__
    if name == "FloorDiv":
        return sympy.floor(a[0] / a[1])
    if name == "CeilDiv":
        return sympy.ceiling(a[0] / a[1])
    if name in ("CleanDiv", "IntTrueDiv", "FloatTrueDiv"):
        return a[0] / a[1]
    if name in ("PythonMod", "Mod"):
        return a[0] - a[1] * sympy.floor(a[0] / a[1])
    if name == "ModularIndexing":  # (x // d) % m
        q = sympy.floor(a[0] / a[1])
        return q - a[2] * sympy.floor(q / a[2])
    if name == "CeilToInt":
        return sympy.ceiling(a[0])
    if name in ("FloorToInt", "TruncToInt"):  # sizes are >= 0: truncation is the floor
        return sympy.floor(a[0])
    if name == "RoundToInt":
        return _round(a[0])
    if name in ("ToFloat", "TruncToFloat", "Identity"):
        return a[0]
    if name in ("PowByNatural", "FloatPow"):
        return a[0] ** a[1]
    if name == "LShift":
        return a[0] * 2 ** a[1]
    if name == "RShift":
        return sympy.floor(a[0] / 2 ** a[1])
    if name == "OpaqueUnaryFn_log2":
        return _log2(a[0])
    if name.startswith("OpaqueUnaryFn_"):
        return sympy.Function(name[len("OpaqueUnaryFn_"):])(a[0])
    if name == "Min":
        return sympy.Min(*a)
    if name == "Max":
        return sympy.Max(*a)
    try:
        return e.func(*a)
    except Exception:  # noqa: BLE001 - an opaque function: keep its name
        return sympy.Function(name)(*a)


def _tidy(e: Any) -> Any:
    """``floor(-x) = -ceil(x)``, ``ceil(-x) = -floor(x)``, ``floor(ceil(x)) = ceil(x)`` (and
    the like), and ``log2(2**k * x) = k + log2(x)``: the forms sympy does not reach alone."""
    def fl(x):
        if x.args[0].could_extract_minus_sign():
            return -sympy.ceiling(-x.args[0])
        return x

    def ce(x):
        if x.args[0].could_extract_minus_sign():
            return -sympy.floor(-x.args[0])
        return x

    for _ in range(3):
        old = e
        e = e.replace(lambda x: isinstance(x, sympy.floor), fl)
        e = e.replace(lambda x: isinstance(x, sympy.ceiling), ce)
        e = e.replace(lambda x: isinstance(x, (sympy.floor, sympy.ceiling)) and
                      isinstance(x.args[0], (sympy.floor, sympy.ceiling)), lambda x: x.args[0])
        if e == old:
            break
    return e


_mod = sympy.Function("mod")


def _mods(e: Any) -> Any:
    """``x - c*floor(x/c)`` printed as ``x mod c`` (``x`` one term of the sum)."""
    if not isinstance(e, sympy.Basic):
        return e
    if e.args and not isinstance(e, sympy.Add):
        return e.func(*[_mods(a) for a in e.args]) if not isinstance(e, sympy.Function) or \
            isinstance(e, (sympy.floor, sympy.ceiling)) else e
    if not isinstance(e, sympy.Add):
        return e
    terms = list(e.args)
    for t in list(terms):
        c, rest = t.as_coeff_Mul()
        if c.is_Integer and c < -1 and isinstance(rest, sympy.floor):
            x = sympy.expand(rest.args[0] * (-c))
            if x in terms:
                terms.remove(t)
                terms.remove(x)
                terms.append(_mod(x, -c))
    return sympy.Add(*terms) if len(terms) != len(e.args) else e


class _UserPrinter(sympy.printing.str.StrPrinter):
    """``ceil(...)`` for ``ceiling(...)``, ``(x mod c)``."""

    def _print_ceiling(self, e):
        return f"ceil({self._print(e.args[0])})"

    def _print_floor(self, e):
        return f"floor({self._print(e.args[0])})"

    def _print_Function(self, e):
        if e.func == _mod:
            return f"({self._print(e.args[0])} mod {self._print(e.args[1])})"
        return super()._print_Function(e)


def user_expr(e: Any, ta: Optional["TimeAxis"] = None) -> str:
    """A size as the user thinks of it: the length symbol printed as ``L``, the batch as ``B``
    (any other size symbol as ``N1``, ``N2``, ...), ``Min(L, c)`` read as ``L`` (the analysis
    records the bound separately), torch's ``FloorDiv`` / ``PythonMod`` / ``CeilToInt`` /
    ``PowByNatural`` rewritten as floor / ceil / powers and simplified where sympy can:
    ``L + PythonMod(-L, 16)`` -> ``16*ceil(L/16)``, ``PowByNatural(2, CeilToInt(log2(2*L)))``
    -> ``2**ceil(log2(2*L))``. Never a raw ``s<digits>`` symbol. Ints and SymInts are accepted."""
    if e is None:
        return "?"
    if isinstance(e, bool):
        return str(e)
    if isinstance(e, (int, float)):
        return str(e)
    if isinstance(e, torch.SymInt):
        e = to_expr(e)
    if not isinstance(e, sympy.Basic):
        return str(e)
    if ta is not None:
        e = ta.normalize(e)
    L = ta.symbol if ta is not None and isinstance(ta.symbol, sympy.Symbol) else None
    B = ta.batch if ta is not None and isinstance(getattr(ta, "batch", None), sympy.Symbol) else None
    try:
        return _user_expr(e, L, B)
    except Exception:  # noqa: BLE001 - never fail a message for its size
        return re.sub(r"\bs\d+\b", "N", str(e))


@functools.lru_cache(maxsize=1024)
def _user_expr(e: sympy.Basic, L: Optional[sympy.Symbol], B: Optional[sympy.Symbol]) -> str:
    """:func:`user_expr` of a normalized expression (cached: every record of a model with the
    same FFT size asks for the same string)."""
    rep = {}
    if L is not None:
        rep[L] = _L
    if B is not None:
        rep[B] = _B
    others = sorted((s for s in e.free_symbols if s not in rep and s.name not in ("L", "B")),
                    key=lambda s: s.name)
    for i, s in enumerate(others):
        rep[s] = sympy.Symbol(f"N{i + 1}", integer=True, positive=True)
    e = _plain(e).xreplace(rep)
    if e.atoms(sympy.Function):  # floor / ceil / log2 ...: worth sympy's simplify
        e = _tidy(sympy.expand(e))
        try:
            s2 = _tidy(sympy.simplify(e))
            if sympy.count_ops(s2) <= sympy.count_ops(e):
                e = s2
        except Exception:  # noqa: BLE001 - keep the unsimplified form
            pass
        e = _mods(e)
    else:  # a polynomial in L, B: the cheap path (every record's shapes come here)
        e = sympy.expand(e)
    return _UserPrinter().doprint(e)



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

    def user_expr(self, e: Any) -> str:
        """``e`` in the user's terms (``L``, ``B``, ``ceil``/``floor``): see :func:`user_expr`."""
        return user_expr(e, self)

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
        if n.target == torch.ops.lcsm.causal_attention.default:  # q, k, v [N, L, D]: time dim 1
            info[n.name] = NodeInfo(NodeClass.ATTENTION, 1)
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
            region = getattr(reason, "region", None)
            info[n.name] = NodeInfo(NodeClass.UNSUPPORTED, td, reason=str(reason), region=region)
    return Analysis(info, ta.symbol, ta.batch)


def filter_only(gm: fx.GraphModule) -> set:
    """Names of the nodes whose values reach the outputs only as convolution filters: every
    use is the filter/weight argument of an ``lcsm`` op or another filter-only node. A size
    ``Min(L, N)`` there is a filter of ``N`` taps (zero beyond them), valid at every length."""
    convs = (torch.ops.lcsm.long_conv.default, torch.ops.lcsm.short_conv.default)
    out: set = set()
    for n in reversed(list(gm.graph.nodes)):
        if n.op in ("output", "placeholder") or not n.users:
            continue
        if all((u.target in convs and u.args[0] is not n) or u.name in out for u in n.users):
            out.add(n.name)
    return out


def length_bound(ta: TimeAxis, graphs: Iterable[fx.GraphModule], skip: Iterable[str] = ()) -> Optional[int]:
    """The largest length the analysis of ``graphs`` holds for: the smallest ``c`` of every
    ``Min(L, c)`` in a size of any node but those named in ``skip`` (None: any length)."""
    skip = set(skip)
    bounds: set = set()
    for gm in graphs:
        for n in gm.graph.nodes:
            if n.name in skip:
                continue
            v = val(n)
            exprs = size_exprs(n) or ([to_expr(v)] if isinstance(v, torch.SymInt) else [])
            for e in exprs:
                bounds |= ta.min_bounds(e)
    return min(bounds) if bounds else None
