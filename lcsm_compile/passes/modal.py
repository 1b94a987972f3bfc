"""modal: long convolutions whose filter is a sum of exponentials, streamed as exact recurrences.

Contract: :func:`modal_plan` is a pure function of the lowered graph (``gm`` is not changed); it
returns a :class:`ModalPlan` saying, for every ``lcsm::long_conv``, which path it streams on
(``"modal"``: an O(state) recurrence per step; ``"online"``: the online engine) and why. No
exception escapes for an unsupported filter: the reason is data.

A filter ``k [C, L]`` is *modal* when ``k[c, t] = Re(sum_n r[c, n] * p[c, n] ** t)`` for every
``t < max_len``. Then ``x_t = p * x_{t-1} + u_t`` (complex state ``[B, C, N]``) and
``y_t = Re(sum_n r_n x_t[n])`` is the convolution, exactly, with O(C N) work and state per step
whatever the length (runtime: :mod:`lcsm_compile.runtime.modal`).

**Recognition (from the graph, never from the numbers alone).** The filter's subgraph (the
generator and the copy of the region applied to a unit impulse that the rewrite put there, see
:mod:`.rewrite`) is interpreted over an algebra of exponential sums: each node is

* ``Const``: no time dependence (parameters and ops on them, evaluated once, concretely);
* ``Lin``: affine in the position, ``a * t + b`` (``arange(L)``, a cached ``arange`` buffer
  sliced ``[:L]``, and arithmetic on them);
* ``Modes``: ``sum_m c[..., m] * z[..., m] ** t`` (its real part for a real node):
  ``exp(Lin)``, ``cos``/``sin(Lin)``, ``base ** Lin`` (``pow``), the impulse ``t == 0``
  (``z = 0``), and sums, products, reductions over non-time dims (``sum``, ``bmm``: the modes
  of the reduced dim join the mode axis), ``.real``/``view_as_real`` + ``select``, reshapes;
* ``Padded`` / ``Spec`` / ``Trunc``: a ``Modes`` value zero-padded along time, its DFT (with the
  FFT's normalization and scale factors kept exactly, ``/n`` as a symbol of ``L``), and the
  result of an inverse FFT of a product of spectra: the causal convolution of exponential sums
  is again one (``sum_s z1^s z2^(t-s) = (z2^(t+1) - z1^(t+1)) / (z2 - z1)``, the impulse is
  the identity), valid for ``t < L`` when the FFT size ``n >= 2L - 1`` (checked).

Any other op on a time-dependent value (an MLP over positional features, ``t * exp(..)``, a
shifted impulse, ...) ends the recognition with a reason naming the op and its source line.
The result is per channel poles and residues; conjugate poles of a real filter are folded
(``Re(c z^t) = Re(conj(c) conj(z)^t)``), equal poles merged, and channels padded to the same
number of modes ``N`` (pole 0, residue 0).

**Verification (numbers, fp64, relative to each channel's largest value).** A recognised
realisation is used only if it reproduces the model's own filter:

1. the whole filter subgraph (generator, FFTs and all) run by the model's ops at
   ``min(max_len, VERIFY_FULL_LEN)`` positions, against the realisation;
2. every *source* of the algebra (a ``Modes`` node whose value leaves the pointwise part: the
   generator's output before the region's padding/FFT) run by the model's own ops, in the
   model's dtype, over ``[0, max_len)`` in chunks of ``CHUNK`` positions (the time sources
   shifted to each chunk: every op between them and the source is pointwise in time, which is
   what the recognition accepted), against its exponential sum.

Both must hold within ``RTOL[dtype]`` (the model's filter in fp32 drifts from the exact
exponentials at large ``t``: a mode that has not decayed by then fails the check and the
convolution stays on the online engine). The folded filter is never kept: prefill regenerates
``h[:P]`` from poles and residues.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import sympy
import torch
import torch.fx as fx

from ..capture.symbolic import to_expr
from .common import LONG_CONV, op_name, subgraph_module, user_code, user_source, val

aten = torch.ops.aten

__all__ = ["ModalFilter", "ConvPath", "ModalPlan", "modal_plan", "recognise", "realize", "power_table", "NotModal",
           "RTOL", "CHUNK", "VERIFY_FULL_LEN", "MAX_MODES", "MODAL_OPTIONS", "without_members"]

#: values of the ``modal`` option: "auto" (modal filters stream as recurrences where verified),
#: False (every long convolution on the online engine)
MODAL_OPTIONS = ("auto", False)
#: relative tolerance of the verification per filter dtype (against each channel's largest value)
RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}
#: positions per chunk of the verification over [0, max_len)
CHUNK = 2048
_SUB = 512  # positions per block of the realisation (memory O(rows x modes x _SUB))
#: the whole filter subgraph (FFTs included) is checked at min(max_len, this) positions
VERIFY_FULL_LEN = 1024
#: more modes per channel than this stay on the online engine (the recurrence costs O(N) a step)
MAX_MODES = 128

_C = torch.complex128
_F = torch.float64


class NotModal(Exception):
    """Why a filter is not (recognised as) a sum of exponentials: ``reason`` and the node."""

    def __init__(self, reason: str, node: Optional[fx.Node] = None):
        super().__init__(reason)
        self.reason, self.node = reason, node


# ----------------------------------------------------------------------------- the algebra
@dataclasses.dataclass
class _Const:
    v: Any  # a tensor or a python / sympy number


@dataclasses.dataclass
class _Lin:
    """``a * t + b`` along time dim ``td`` (``a``, ``b``: the value's shape with time size 1)."""
    a: torch.Tensor
    b: torch.Tensor
    td: int


@dataclasses.dataclass
class _Modes:
    """``sum_m c[..., m] z[..., m] ** t`` (``Re`` of it when ``real``); ``c``, ``z``: the value's
    shape with time size 1, plus the mode axis last."""
    c: torch.Tensor
    z: torch.Tensor
    td: int
    real: bool

    @property
    def ndim(self) -> int:
        return self.c.dim() - 1


@dataclasses.dataclass
class _Padded:
    """A time signal of support ``[0, support)`` given by ``e`` on ``[0, L)``, zero up to ``n``
    (``exact``: ``e`` holds on the whole support; else only on ``[0, L)``)."""
    e: _Modes
    n: Any
    support: Any
    exact: bool = True


@dataclasses.dataclass
class _Spec:
    """The unnormalized DFT (size ``n``, over dim ``td``) of a :class:`_Padded` signal, times
    ``scale_t`` (a tensor or number without a frequency dim) and ``scale_s`` (sympy, in L)."""
    sig: _Padded
    onesided: bool
    scale_t: Any
    scale_s: Any


@dataclasses.dataclass
class _RealView:
    """``view_as_real`` of a complex time value (only a ``select`` of its last dim follows)."""
    inner: Any


def _norm_factor(code: int, n: Any) -> Any:
    """The scale of an aten FFT normalization code (0: none, 1: 1/sqrt(n), 2: 1/n)."""
    return {0: sympy.Integer(1), 1: 1 / sympy.sqrt(n), 2: 1 / sympy.sympify(n)}[int(code)]


def _pow(z: torch.Tensor, t: Any) -> torch.Tensor:
    """``z ** t`` for complex ``z`` and integer-valued ``t >= 0`` (a number or a tensor that
    broadcasts), with ``0 ** 0 = 1`` and ``0 ** t = 0`` for ``t > 0``."""
    tt = torch.as_tensor(t, dtype=_F)
    zero = z == 0
    safe = torch.where(zero, torch.ones_like(z), z)
    out = torch.pow(safe, tt.to(_C))
    return torch.where(zero, (tt == 0).to(_C), out)


def power_table(z: torch.Tensor, T: int) -> torch.Tensor:
    """``z[..., None] ** arange(T)`` (complex) by repeated doubling: each entry a product of at
    most ``log2(T)`` factors (relative error ~``log2(T) eps``), ``0 ** 0 = 1``; much faster than
    a complex ``pow``."""
    z = z.to(_C)
    out = torch.ones(*z.shape, 1, dtype=_C, device=z.device)
    zp = z
    while out.shape[-1] < T:
        out = torch.cat([out, out * zp.unsqueeze(-1)], -1)
        zp = zp * zp
    return out[..., :T]


def realize(poles: torch.Tensor, residues: torch.Tensor, t0: int, length: int, chunk: int = 1024) -> torch.Tensor:
    """``Re(sum_n residues[..., n] * poles[..., n] ** t)`` for ``t0 <= t < t0 + length``:
    ``[..., length]`` in fp64 (poles/residues ``[..., N]`` complex, or ``[..., N, 2]`` real
    pairs), computed in chunks of ``chunk`` positions (memory ``O(N chunk)`` per row)."""
    p, r = _complex(poles), _complex(residues)
    out = torch.zeros(*p.shape[:-1], length, dtype=_F, device=p.device)
    if p.shape[-1] == 0 or length == 0:
        return out
    T = min(chunk, length)
    zj = power_table(p, T)                                                 # [..., N, T]
    coef = r * _pow(p, t0)                                                 # [..., N]
    zT = zj[..., T - 1] * p
    for s in range(0, length, T):
        w = min(T, length - s)
        out[..., s:s + w] = torch.einsum("...n,...nt->...t", coef, zj[..., :w]).real
        coef = coef * zT
    return out


def _complex(x: torch.Tensor) -> torch.Tensor:
    """``x`` as complex128 (``[..., 2]`` real pairs are viewed as complex)."""
    if x.is_complex():
        return x.to(_C)
    return torch.view_as_complex(x.to(_F).contiguous())


# ----------------------------------------------------------------------------- the interpreter
def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float, complex, bool)) or (isinstance(x, sympy.Expr) and x.is_number)


class _Interp:
    """Interprets a filter's subgraph over the algebra above (module doc)."""

    def __init__(self, gm: fx.GraphModule, ta, target: fx.Node):
        self.gm, self.ta, self.target = gm, ta, target
        self.L = ta.symbol
        self.env: Dict[fx.Node, Any] = {}
        self.time_sources: Dict[fx.Node, str] = {}   # node -> "arange" | "buffer"
        self.nonlocal_: set = set()                   # nodes computed through a padded signal / spectrum

    # -- helpers
    def fail(self, n: fx.Node, why: str) -> NotModal:
        src = user_source(n)
        return NotModal(f"{op_name(n) if n.op == 'call_function' else n.target}"
                        f"{' at ' + src if src else ''}: {why}", n)

    def sym(self, x: Any) -> Any:
        """A size argument as sympy (ints stay ints)."""
        if isinstance(x, fx.Node):
            v = self.env.get(x)
            if isinstance(v, _Const) and not isinstance(v.v, torch.Tensor):
                return v.v
            raise NotModal(f"size {x.name} is not a number")
        if isinstance(x, (list, tuple)):
            return type(x)(self.sym(a) for a in x)
        return x

    def is_L(self, e: Any) -> bool:
        return isinstance(e, sympy.Expr) and self.ta.is_time(e)

    def mode_shape(self, n: fx.Node, td: int) -> List[int]:
        v = val(n)
        out = []
        for i, s in enumerate(v.shape):
            if i == td:
                out.append(1)
                continue
            e = self.ta.normalize(to_expr(s))
            if not e.is_number:
                raise self.fail(n, f"a non-time dim of symbolic size {e}")
            out.append(int(e))
        return out

    def time_dim(self, n: fx.Node, what: str = "L") -> int:
        v = val(n)
        dims = [i for i, s in enumerate(v.shape) if self.is_L(self.ta.normalize(to_expr(s)))]
        if len(dims) != 1:
            raise self.fail(n, f"expected one time dim of size L, found {len(dims)}")
        return dims[0]

    def const(self, x: Any) -> Any:
        """The concrete value of an argument (a tensor, number or list) or None if it is not
        constant in time."""
        if isinstance(x, fx.Node):
            v = self.env[x]
            if not isinstance(v, _Const):
                return None
            if isinstance(v.v, sympy.Expr):
                return int(v.v) if v.v.is_integer else float(v.v)
            return v.v
        if isinstance(x, (list, tuple)):
            out = [self.const(a) for a in x]
            return None if any(o is None and a is not None for o, a in zip(out, x)) else type(x)(out)
        return x

    # -- conversions
    def expand(self, n: fx.Node, m: _Modes) -> _Modes:
        """``m`` broadcast to the shape of node ``n`` (time dim size 1), right-aligned."""
        td = self.time_dim(n)
        shape = self.mode_shape(n, td)
        nd = len(shape)
        c, z = m.c, m.z
        while c.dim() - 1 < nd:
            c, z = c.unsqueeze(0), z.unsqueeze(0)
        if td - nd != m.td - m.ndim:
            raise self.fail(n, "the time dims of the operands do not line up")
        M = c.shape[-1]
        return _Modes(c.expand(*shape, M), z.expand(*shape, M), td, m.real)

    def const_modes(self, n: fx.Node, x: Any) -> _Modes:
        """A value constant in time as one mode with ``z = 1`` at node ``n``'s shape."""
        td = self.time_dim(n)
        shape = self.mode_shape(n, td)
        t = torch.as_tensor(x).to(_C)
        nd = len(shape)
        if t.dim() > nd:
            raise self.fail(n, "a constant with more dims than the result")
        t = t.reshape((1,) * (nd - t.dim()) + tuple(t.shape))
        c = t.expand(*shape).unsqueeze(-1)
        return _Modes(c, torch.ones_like(c), td, not torch.is_complex(torch.as_tensor(x)))

    def exact(self, m: _Modes) -> _Modes:
        """The same value without the ``Re``: conjugate pairs of the non-real modes."""
        if not m.real:
            return m
        if not (torch.is_complex(m.c) and (m.c.imag.abs().max() > 0 if m.c.numel() else False)) and \
                not (m.z.imag.abs().max() > 0 if m.z.numel() else False):
            return dataclasses.replace(m, real=False)
        c = torch.cat([m.c / 2, m.c.conj() / 2], -1)
        z = torch.cat([m.z, m.z.conj()], -1)
        return _Modes(c, z, m.td, False)

    @staticmethod
    def prune(m: _Modes) -> _Modes:
        if m.c.shape[-1] == 0:
            return m
        keep = (m.c != 0).flatten(0, -2).any(0) if m.c.dim() > 1 else (m.c != 0)
        if bool(keep.all()):
            return m
        return _Modes(m.c[..., keep], m.z[..., keep], m.td, m.real)

    # -- the run
    def run(self) -> Any:
        need = set()
        stack = [self.target]
        while stack:
            n = stack.pop()
            if n in need:
                continue
            need.add(n)
            stack.extend(n.all_input_nodes)
        for n in self.gm.graph.nodes:
            if n in need:
                self.env[n] = self.node(n)
                if isinstance(self.env[n], (_Padded, _Spec)) or any(a in self.nonlocal_ for a in n.all_input_nodes):
                    self.nonlocal_.add(n)
        return self.env[self.target]

    def node(self, n: fx.Node) -> Any:
        v = val(n)
        if isinstance(v, (torch.SymInt, int)) and not isinstance(v, bool):
            return _Const(self.ta.normalize(to_expr(v)))
        if isinstance(v, torch.SymFloat):
            return _Const(v.node.expr)
        if n.op == "placeholder":
            return _Const(None)  # only its sizes are read (sym_size nodes above)
        if n.op == "get_attr":
            obj: Any = self.gm
            for p in n.target.split("."):
                obj = getattr(obj, p)
            return _Const(obj.detach().cpu() if isinstance(obj, torch.Tensor) else obj)  # the algebra: CPU
        if n.op != "call_function":
            raise self.fail(n, f"unsupported node kind {n.op}")
        args = [self.env[a] if isinstance(a, fx.Node) else a for a in n.args]
        if not any(isinstance(self.env.get(a), _TIMED) for a in n.all_input_nodes):
            if n.target in (aten.arange.start_step, aten.arange.default, aten.arange.start):
                return self.arange(n)
            if n.target in (aten.zeros.default, aten.ones.default, aten.full.default, aten.new_zeros.default):
                shape = self.sym(n.args[0] if n.target != aten.new_zeros.default else n.args[1])
                if any(self.is_L(s) for s in shape):
                    fill = {aten.zeros.default: 0.0, aten.new_zeros.default: 0.0, aten.ones.default: 1.0}.get(
                        n.target, n.args[1] if n.target == aten.full.default else 0.0)
                    return self.prune(self.const_modes(n, fill))
            if n.target == aten.slice.Tensor:
                src = self.const(n.args[0])
                d = n.args[1] if len(n.args) > 1 else 0
                end = self.sym(n.args[3]) if len(n.args) > 3 else None
                if isinstance(src, torch.Tensor) and self.is_L(end):
                    return self.buffer_slice(n, src, d)
            return self.const_op(n)
        return self.timed(n, args)

    def const_op(self, n: fx.Node) -> _Const:
        def conv(a):
            if isinstance(a, fx.Node):
                c = self.const(a)
                if isinstance(c, sympy.Expr):
                    raise self.fail(n, "a constant that depends on L")
                return c
            if isinstance(a, (list, tuple)):
                return type(a)(conv(x) for x in a)
            if isinstance(a, sympy.Expr):
                if a.free_symbols:
                    raise self.fail(n, "a constant that depends on L")
                return int(a) if a.is_integer else float(a)
            return a
        if any(isinstance(self.env.get(a), _Const) and isinstance(self.env[a].v, sympy.Expr) and
               self.env[a].v.free_symbols for a in n.all_input_nodes):
            raise self.fail(n, "a constant shaped or padded by L (e.g. a fixed-length filter padded to L): "
                               "not generated by exponentials of the positions")
        try:
            args = conv(list(n.args))
            kwargs = {k: conv(v) for k, v in n.kwargs.items()}
            if "device" in kwargs:  # the algebra runs on the CPU (the model may live elsewhere)
                kwargs["device"] = torch.device("cpu")
            with torch.no_grad():
                out = n.target(*args, **kwargs)
        except NotModal:
            raise
        except Exception as e:  # noqa: BLE001
            raise self.fail(n, f"could not evaluate the constant ({type(e).__name__}: {e})") from None
        if isinstance(out, torch.Tensor) and any(self.is_L(self.ta.normalize(to_expr(s)))
                                                 for s in val(n).shape if isinstance(val(n), torch.Tensor)):
            raise self.fail(n, "a tensor with a time dim that is not generated from positions")
        return _Const(out)

    # -- sources
    def arange(self, n: fx.Node) -> Any:
        a = self.sym(list(n.args))
        if n.target == aten.arange.default:
            start, end, step = 0, a[0], 1
        elif n.target == aten.arange.start:
            start, end, step = a[0], a[1], 1
        else:
            start, end = a[0], a[1]
            step = a[2] if len(a) > 2 else n.kwargs.get("step", 1)
        if not self.is_L(sympy.sympify(end) - sympy.sympify(start)) or step != 1:
            if any(isinstance(x, sympy.Expr) and x.free_symbols for x in (start, end)):
                raise self.fail(n, "positions other than arange(L)")
            return self.const_op(n)
        if start != 0:
            raise self.fail(n, "positions that do not start at 0")
        self.time_sources[n] = "arange"
        return _Lin(torch.ones(1, dtype=_F), torch.zeros(1, dtype=_F), 0)

    def buffer_slice(self, n: fx.Node, src: torch.Tensor, d: int) -> Any:
        d = d % src.dim()
        start = self.sym(n.args[2]) if len(n.args) > 2 else 0
        step = n.args[4] if len(n.args) > 4 else 1
        if start != 0 or step != 1:
            raise self.fail(n, "a time slice that does not start at 0")
        shape = [1] * src.dim()
        shape[d] = src.shape[d]
        pos = torch.arange(src.shape[d], dtype=_F).reshape(shape)
        if src.is_floating_point() or src.is_complex() or src.dtype in (torch.int64, torch.int32, torch.int16):
            if torch.equal(src.to(_F).expand_as(src) if not src.is_complex() else src.real.to(_F),
                           pos.expand_as(src)):
                self.time_sources[n] = "buffer"
                td = self.time_dim(n)
                ms = self.mode_shape(n, td)
                return _Lin(torch.ones(ms, dtype=_F), torch.zeros(ms, dtype=_F), td)
        raise self.fail(n, "a buffer or parameter sliced [:L] whose values are not the positions 0, 1, 2, ... "
                           "(an explicit filter or precomputed positional features: not exponentials of t)")

    # -- time-dependent ops
    def timed(self, n: fx.Node, args: List[Any]) -> Any:
        t = n.target
        a0 = args[0] if args else None
        kinds = tuple(type(a).__name__ for a in args)
        if t in (aten._to_copy.default, aten.clone.default, aten.alias.default, aten.lift_fresh_copy.default,
                 aten.detach.default):
            return self.cast(n, a0)
        if t == aten.cat.default:
            if any(isinstance(self.env.get(a), _Lin) for a in n.args[0]):
                raise self.fail(n, "positions concatenated with other features (positional features, e.g. "
                                   "for an MLP filter): not a sum of exponentials")
            return self.cat(n)
        if isinstance(a0, _RealView):
            nd = val(n.args[0]).dim()
            if t == aten.select.int and int(n.args[1]) % nd == nd - 1:  # the (real, imag) dim
                return self.real_part(n, a0.inner, int(n.args[2]))
            raise self.fail(n, "view_as_real followed by something other than select")
        if t == aten.view_as_real.default:
            return _RealView(a0)
        if t in (aten.real.default, aten.imag.default):
            return self.real_part(n, a0, 0 if t == aten.real.default else 1)
        if isinstance(a0, _Lin) or any(isinstance(a, _Lin) for a in args):
            return self.lin_op(n, args)
        if isinstance(a0, (_Padded, _Spec)) or any(isinstance(a, (_Padded, _Spec)) for a in args):
            return self.spec_op(n, args)
        if any(isinstance(a, _Modes) for a in args):
            return self.modes_op(n, args)
        raise self.fail(n, f"unsupported operands {kinds}")

    def cast(self, n: fx.Node, a: Any) -> Any:
        out_dt = val(n).dtype if isinstance(val(n), torch.Tensor) else None
        if isinstance(a, _Lin):
            if out_dt is not None and not (out_dt.is_floating_point or out_dt.is_complex) and \
                    out_dt not in (torch.int64, torch.int32):
                raise self.fail(n, f"a cast of positions to {out_dt}")
            return a
        if isinstance(a, _Modes):
            if out_dt is not None and not out_dt.is_complex and not a.real:
                return _Modes(a.c, a.z, a.td, True)  # complex -> real keeps the real part
            if out_dt is not None and out_dt.is_complex and a.real:
                return self.exact(a)
            return a
        if isinstance(a, _Padded):
            return dataclasses.replace(a, e=self.cast_inner(n, a.e))
        if isinstance(a, _Spec):
            return a
        raise self.fail(n, "unsupported cast")

    def cast_inner(self, n, m: _Modes) -> _Modes:
        out_dt = val(n).dtype
        if not out_dt.is_complex and not m.real:
            return _Modes(m.c, m.z, m.td, True)
        if out_dt.is_complex and m.real:
            return self.exact(m)
        return m

    def real_part(self, n: fx.Node, a: Any, which: int) -> Any:
        if isinstance(a, _Padded):
            return dataclasses.replace(a, e=self.real_part_modes(n, a.e, which))
        if not isinstance(a, _Modes):
            raise self.fail(n, "the real part of an unsupported value")
        return self.real_part_modes(n, a, which)

    def real_part_modes(self, n: fx.Node, m: _Modes, which: int) -> _Modes:
        if which not in (0, 1, -2, -1):
            raise self.fail(n, "select of view_as_real other than the real or imaginary part")
        m = self.exact(m)
        c = m.c if which in (0, -2) else m.c * (-1j)
        return _Modes(c, m.z, m.td, True)

    # -- Lin
    def lin_op(self, n: fx.Node, args: List[Any]) -> Any:
        t = n.target
        x = args[0]
        if t in (aten.exp.default,):
            return self.lin_exp(n, x)
        if t in (aten.cos.default, aten.sin.default):
            if torch.is_complex(x.a) or torch.is_complex(x.b):
                raise self.fail(n, "cos/sin of a complex argument")
            td = x.td
            c = torch.exp(1j * x.b.to(_C))
            if t == aten.sin.default:
                c = c * (-1j)
            return self.expand(n, _Modes(c.unsqueeze(-1), torch.exp(1j * x.a.to(_C)).unsqueeze(-1), td, True))
        if t == aten.pow.Tensor_Scalar or (t == aten.pow.Tensor_Tensor and isinstance(x, _Lin)):
            raise self.fail(n, "a power of the positions (t ** k is not an exponential in t)")
        if t in (aten.pow.Tensor_Tensor, aten.pow.Scalar):
            base = self.const(n.args[0])
            if base is None or not isinstance(args[1], _Lin):
                raise self.fail(n, "a power of the positions (t ** k is not an exponential in t)")
            return self.lin_pow(n, base, args[1])
        if t == aten.eq.Scalar and isinstance(x, _Lin):
            v = n.args[1]
            a, b = x.a, x.b
            if torch.is_complex(a) or torch.is_complex(b) or bool((a == 0).any()) or \
                    not bool(((v - b) == 0).all()):
                raise self.fail(n, "a comparison of the positions other than t == 0 (a shifted impulse "
                                   "is a FIR tap, not an exponential)")
            c = torch.ones_like(a, dtype=_C).unsqueeze(-1)
            return self.expand(n, _Modes(c, torch.zeros_like(c), x.td, True))
        if t in (aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar, aten.add.Tensor,
                 aten.add.Scalar, aten.sub.Tensor, aten.sub.Scalar, aten.rsub.Scalar, aten.neg.default):
            return self.lin_arith(n, args)
        if t in _SHAPE_OPS:
            return self.lin_shape(n, x)
        mlp = " (a linear layer over positional features: an implicit MLP filter)" if t in (
            aten.mm.default, aten.addmm.default, aten.bmm.default, aten.linear.default
            if hasattr(aten, "linear") else aten.mm.default) else ""
        raise self.fail(n, f"this op on the positions is not one of the modal algebra's (affine maps, exp, cos, "
                           f"sin, base ** t, t == 0){mlp}")

    def lin_tensor(self, n: fx.Node, x: _Lin) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x``'s a, b broadcast to ``n``'s shape (time 1)."""
        td = self.time_dim(n)
        shape = self.mode_shape(n, td)
        a, b = x.a, x.b
        nd = len(shape)
        while a.dim() < nd:
            a, b = a.unsqueeze(0), b.unsqueeze(0)
        if td - nd != x.td - x.a.dim():
            raise self.fail(n, "the time dims of the operands do not line up")
        return a.expand(*shape), b.expand(*shape)

    def bcast(self, n: fx.Node, v: Any) -> torch.Tensor:
        """A constant (number or tensor) broadcast to ``n``'s shape with time size 1."""
        td = self.time_dim(n)
        shape = self.mode_shape(n, td)
        t = torch.as_tensor(v)
        t = t.to(_C if t.is_complex() else _F)
        nd = len(shape)
        if t.dim() > nd:
            raise self.fail(n, "a constant with more dims than the result")
        t = t.reshape((1,) * (nd - t.dim()) + tuple(t.shape))
        if t.shape[td] != 1:
            raise self.fail(n, "a constant with a time dim")
        return t.expand(*shape)

    def lin_arith(self, n: fx.Node, args: List[Any]) -> _Lin:
        t = n.target
        td = self.time_dim(n)
        if t == aten.neg.default:
            a, b = self.lin_tensor(n, args[0])
            return _Lin(-a, -b, td)
        x, y = args[0], args[1] if len(args) > 1 else None
        alpha = n.kwargs.get("alpha", 1)

        def part(v):
            if isinstance(v, _Lin):
                return self.lin_tensor(n, v)
            if isinstance(v, _Const):
                v = v.v
            if isinstance(v, sympy.Expr):
                if v.free_symbols:
                    raise self.fail(n, "a factor that depends on L")
                v = complex(v) if not v.is_real else float(v)
            return None, self.bcast(n, v)
        (xa, xb), (ya, yb) = part(x), part(y)
        if t in (aten.add.Tensor, aten.add.Scalar, aten.sub.Tensor, aten.sub.Scalar, aten.rsub.Scalar):
            sgn = -1 if t in (aten.sub.Tensor, aten.sub.Scalar) else 1
            if t == aten.rsub.Scalar:
                xa, xb, ya, yb = ya, yb, xa, xb
                sgn = -1
            a = (xa if xa is not None else 0) + sgn * alpha * (ya if ya is not None else 0)
            b = xb + sgn * alpha * yb
            return _Lin(torch.as_tensor(a).expand_as(b) if not isinstance(a, torch.Tensor) else a, b, td)
        if t in (aten.mul.Tensor, aten.mul.Scalar):
            if xa is not None and ya is not None:
                raise self.fail(n, "a product of two position terms (t ** 2 is not an exponential in t)")
            if xa is None:
                xa, xb, ya, yb = ya, yb, xa, xb
            return _Lin(xa * yb, xb * yb, td)
        if t in (aten.div.Tensor, aten.div.Scalar):
            if ya is not None or n.kwargs.get("rounding_mode") is not None:
                raise self.fail(n, "a division by the positions or a rounded division")
            return _Lin(xa / yb, xb / yb, td)
        raise self.fail(n, "unsupported arithmetic on positions")

    def lin_shape(self, n: fx.Node, x: _Lin) -> _Lin:
        m = self.shape_op(n, _Modes(x.a.to(_C).unsqueeze(-1), x.b.to(_C).unsqueeze(-1), x.td, False),
                          lin=True)
        a, b = m.c[..., 0], m.z[..., 0]
        if not (torch.is_complex(x.a) or torch.is_complex(x.b)):
            a, b = a.real, b.real
        return _Lin(a, b, m.td)

    def lin_exp(self, n: fx.Node, x: _Lin) -> _Modes:
        a, b = self.lin_tensor(n, x)
        real = not (torch.is_complex(a) or torch.is_complex(b))
        return _Modes(torch.exp(b.to(_C)).unsqueeze(-1), torch.exp(a.to(_C)).unsqueeze(-1), self.time_dim(n), real)

    def lin_pow(self, n: fx.Node, base: Any, x: _Lin) -> _Modes:
        a, b = self.lin_tensor(n, x)
        bt = self.bcast(n, base).to(_C)
        z = torch.pow(bt, a.to(_C))
        c = torch.pow(bt, b.to(_C))
        real = not val(n).dtype.is_complex
        return _Modes(c.unsqueeze(-1), z.unsqueeze(-1), self.time_dim(n), real)

    # -- Modes
    def modes_op(self, n: fx.Node, args: List[Any]) -> Any:
        t = n.target
        if t in _SHAPE_OPS:
            return self.shape_op(n, args[0])
        if t in (aten.mul.Tensor, aten.mul.Scalar):
            return self.prune(self.mul(n, args[0], args[1]))
        if t in (aten.div.Tensor, aten.div.Scalar):
            if isinstance(args[1], _Modes):
                raise self.fail(n, "a division by an exponential sum")
            if n.kwargs.get("rounding_mode") is not None:
                raise self.fail(n, "a rounded division")
            return self.mul(n, args[0], _Const(1 / self.scalar_or_tensor(n, args[1])))
        if t == aten.neg.default:
            m = self.expand(n, args[0])
            return _Modes(-m.c, m.z, m.td, m.real)
        if t in (aten.add.Tensor, aten.sub.Tensor, aten.add.Scalar, aten.sub.Scalar, aten.rsub.Scalar):
            return self.prune(self.add(n, args))
        if t in (aten.sum.dim_IntList, aten.sum.default, aten.mean.dim):
            return self.reduce(n, args[0])
        if t in (aten.bmm.default, aten.mm.default):
            return self.prune(self.matmul(n, args[0], args[1]))
        if t == aten.cat.default:
            return self.cat(n)
        if t == aten.constant_pad_nd.default:
            return self.pad(n, args[0])
        if t == aten.pow.Tensor_Scalar and isinstance(n.args[1], int) and 1 <= n.args[1] <= 4:
            out = args[0]
            for _ in range(n.args[1] - 1):
                out = self.prune(self.mul(n, out, args[0]))
            return out
        if t in (aten._fft_r2c.default, aten._fft_c2c.default):
            raise self.fail(n, "an FFT of a signal that is not zero-padded (circular)")
        raise self.fail(n, "this op on an exponential sum is not a sum of exponentials "
                           "(supported: +, -, *, /, sum, mm/bmm, .real, reshapes, FFT convolutions)")

    def scalar_or_tensor(self, n: fx.Node, v: Any) -> Any:
        if isinstance(v, _Const):
            v = v.v
        if isinstance(v, sympy.Expr):
            if v.free_symbols:
                raise self.fail(n, "a factor that depends on L")
            v = complex(v) if not v.is_real else float(v)
        if isinstance(v, torch.Tensor):
            return v.to(_C if v.is_complex() else _F)
        return v

    def mul(self, n: fx.Node, x: Any, y: Any) -> _Modes:
        out_real = not val(n).dtype.is_complex
        if isinstance(x, _Modes) and isinstance(y, _Modes):
            a, b = self.exact(self.expand(n, x)), self.exact(self.expand(n, y))
            c = (a.c.unsqueeze(-1) * b.c.unsqueeze(-2)).flatten(-2)
            z = (a.z.unsqueeze(-1) * b.z.unsqueeze(-2)).flatten(-2)
            return _Modes(c, z, a.td, out_real)
        if isinstance(y, _Modes):
            x, y = y, x
        m = self.expand(n, x)
        s = self.bcast(n, self.scalar_or_tensor(n, y))
        if m.real and torch.is_complex(s):
            m = self.exact(m)
        return _Modes(m.c * s.unsqueeze(-1), m.z, m.td, out_real and m.real or out_real)

    def add(self, n: fx.Node, args: List[Any]) -> _Modes:
        t = n.target
        out_real = not val(n).dtype.is_complex
        x, y = args[0], args[1]
        alpha = n.kwargs.get("alpha", 1)
        sgn = -alpha if t in (aten.sub.Tensor, aten.sub.Scalar) else alpha
        if t == aten.rsub.Scalar:
            x, y, sgn = y, x, -alpha

        def modes(v):
            if isinstance(v, _Modes):
                m = self.expand(n, v)
            else:
                m = self.const_modes(n, self.scalar_or_tensor(n, v))
            return m if out_real else self.exact(m)
        a, b = modes(x), modes(y)
        return _Modes(torch.cat([a.c, sgn * b.c], -1), torch.cat([a.z, b.z], -1), a.td, out_real)

    def reduce(self, n: fx.Node, x: _Modes) -> _Modes:
        if n.target == aten.sum.default:
            raise self.fail(n, "a sum over all dims (time included)")
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        keep = (n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", False))
        if n.kwargs.get("dtype") is not None:
            pass
        src = self.expand(n.args[0], x)
        nd = src.ndim
        dims = sorted({int(d) % nd for d in ([dims] if isinstance(dims, int) else dims)})
        if src.td in dims:
            raise self.fail(n, "a reduction over the time dim (not a pointwise function of t)")
        count = 1
        c, z = src.c, src.z
        for d in reversed(dims):
            count *= c.shape[d]
            c = c.movedim(d, -2).flatten(-2)
            z = z.movedim(d, -2).flatten(-2)
            if keep:
                c, z = c.unsqueeze(d), z.unsqueeze(d)
        if n.target == aten.mean.dim:
            c = c / count
        td = self.time_dim(n)
        return self.prune(_Modes(c, z, td, src.real))

    def matmul(self, n: fx.Node, x: Any, y: Any) -> _Modes:
        bat = n.target == aten.bmm.default
        out_real = not val(n).dtype.is_complex
        if isinstance(x, _Modes) and isinstance(y, _Modes):
            raise self.fail(n, "a product of two exponential sums contracted over a dim")
        if isinstance(y, _Modes):
            m = self.exact(self.expand(n.args[1], y))
            A = torch.as_tensor(self.scalar_or_tensor(n, x)).to(_C)
            if m.td != m.ndim - 1:
                raise self.fail(n, "a contraction over the time dim")
            c, z = m.c.select(-2, 0), m.z.select(-2, 0)    # [(b,) k, M]
            eq = "bik,bkm->bikm" if bat else "ik,km->ikm"
            cc = torch.einsum(eq, A, c)
            zz = z.unsqueeze(-3).expand_as(cc)
            cc, zz = cc.flatten(-2).unsqueeze(-2), zz.flatten(-2).unsqueeze(-2)  # [(b,) i, 1, k*M]
            return _Modes(cc, zz, m.ndim - 1, out_real)
        m = self.exact(self.expand(n.args[0], x))
        A = torch.as_tensor(self.scalar_or_tensor(n, y)).to(_C)
        if m.td != m.ndim - 2:
            raise self.fail(n, "a contraction over the time dim")
        c, z = m.c.select(-3, 0), m.z.select(-3, 0)        # [(b,) k, M]
        eq = "bkm,bkj->bjkm" if bat else "km,kj->jkm"
        cc = torch.einsum(eq, c, A)
        zz = z.unsqueeze(-3).expand_as(cc)
        cc, zz = cc.flatten(-2).unsqueeze(-3), zz.flatten(-2).unsqueeze(-3)      # [(b,) 1, j, k*M]
        return _Modes(cc, zz, m.ndim - 2, out_real)

    def cat(self, n: fx.Node) -> _Modes:
        tensors = n.args[0]
        d = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        parts = []
        for a in tensors:
            v = self.env[a]
            if isinstance(v, _Modes):
                parts.append(self.expand(a, v))
            elif isinstance(v, _Const):
                parts.append(self.const_modes(a, v.v))
            else:
                raise self.fail(n, "a concatenation of unsupported values")
        nd = parts[0].ndim
        d = d % nd
        if d == parts[0].td:
            raise self.fail(n, "a concatenation along time")
        M = max(p.c.shape[-1] for p in parts)
        cs, zs = [], []
        for p in parts:
            pad = M - p.c.shape[-1]
            cs.append(torch.nn.functional.pad(p.c, (0, pad)))
            zs.append(torch.nn.functional.pad(p.z, (0, pad)))
        real = all(p.real for p in parts) and not val(n).dtype.is_complex
        if not real:
            parts = [self.exact(p) for p in parts]
        return self.prune(_Modes(torch.cat(cs, d), torch.cat(zs, d), parts[0].td, real))

    def shape_op(self, n: fx.Node, x: _Modes, lin: bool = False) -> _Modes:
        t = n.target
        src = n.args[0]
        m = self.expand(src, x) if not lin else self.expand_lin(src, x)
        td = self.time_dim(n)
        shape = self.mode_shape(n, td)
        M = m.c.shape[-1]
        nd_in = m.ndim
        if t in (aten.view.default, aten.reshape.default, aten._unsafe_view.default):
            in_s = [self.ta.normalize(to_expr(s)) for s in val(src).shape]
            out_s = [self.ta.normalize(to_expr(s)) for s in val(n).shape]
            if sympy.expand(sympy.Mul(*in_s[:m.td]) - sympy.Mul(*out_s[:td])) != 0 or \
                    sympy.expand(sympy.Mul(*in_s[m.td + 1:]) - sympy.Mul(*out_s[td + 1:])) != 0:
                raise self.fail(n, "a reshape that merges the time dim with another")
            return _Modes(m.c.reshape(*shape, M), m.z.reshape(*shape, M), td, m.real)
        if t == aten.permute.default:
            perm = [int(p) % nd_in for p in n.args[1]] + [nd_in]
            return _Modes(m.c.permute(perm), m.z.permute(perm), td, m.real)
        if t == aten.expand.default:
            return self.expand(n, m)
        if t in (aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default,
                 aten.alias.default, aten.clone.default, aten.lift_fresh_copy.default):
            return _Modes(m.c.reshape(*shape, M), m.z.reshape(*shape, M), td, m.real)
        if t == aten.select.int:
            d = int(n.args[1]) % nd_in
            if d == m.td:
                raise self.fail(n, "a selection of one position")
            return _Modes(m.c.select(d, n.args[2]), m.z.select(d, n.args[2]), td, m.real)
        if t == aten.slice.Tensor:
            d = int(n.args[1] if len(n.args) > 1 else 0) % nd_in
            start = self.sym(n.args[2]) if len(n.args) > 2 else 0
            end = self.sym(n.args[3]) if len(n.args) > 3 else None
            step = n.args[4] if len(n.args) > 4 else 1
            if d == m.td:
                if start in (0, None) and step == 1 and (end is None or self.is_L(end) or
                                                         (_is_num(end) and int(end) >= 2 ** 62)):
                    return m
                raise self.fail(n, "a time slice other than [:L]")
            s = slice(None if start is None else int(start), None if end is None else int(min(int(end), 2 ** 62)),
                      int(step))
            idx = [slice(None)] * (nd_in + 1)
            idx[d] = s
            return _Modes(m.c[tuple(idx)], m.z[tuple(idx)], td, m.real)
        if t == aten.index_select.default:
            d = int(n.args[1]) % nd_in
            if d == m.td:
                raise self.fail(n, "an index along time")
            ix = self.const(n.args[2])
            return _Modes(m.c.index_select(d, ix), m.z.index_select(d, ix), td, m.real)
        if t == aten.repeat.default:
            reps = list(n.args[1])
            if reps[len(reps) - nd_in + m.td] != 1:
                raise self.fail(n, "a repeat along time")
            return _Modes(m.c.repeat(*reps, 1), m.z.repeat(*reps, 1), td, m.real)
        raise self.fail(n, "unsupported reshape")

    def expand_lin(self, node: fx.Node, m: _Modes) -> _Modes:
        td = self.time_dim(node)
        shape = self.mode_shape(node, td)
        c, z = m.c, m.z
        while c.dim() - 1 < len(shape):
            c, z = c.unsqueeze(0), z.unsqueeze(0)
        return _Modes(c.expand(*shape, 1), z.expand(*shape, 1), td, m.real)

    # -- spectra
    def pad(self, n: fx.Node, x: _Modes) -> _Padded:
        pads = self.sym(list(n.args[1]))
        value = n.args[2] if len(n.args) > 2 else 0
        if value != 0:
            raise self.fail(n, "a padding value other than 0")
        m = self.expand(n.args[0], x)
        nd = m.ndim
        for i in range(0, len(pads), 2):
            d = nd - 1 - i // 2
            left, right = pads[i], pads[i + 1]
            if d == m.td:
                if left != 0:
                    raise self.fail(n, "a left padding of the time dim (a delay)")
            elif left != 0 or right != 0:
                raise self.fail(n, "a padding of a non-time dim")
        n_expr = self.ta.normalize(to_expr(val(n).shape[m.td]))
        support = 1 if bool((m.z == 0).all()) else self.L
        return _Padded(m, n_expr, support, True)

    def spec_op(self, n: fx.Node, args: List[Any]) -> Any:
        t = n.target
        x = args[0]
        if t == aten._fft_r2c.default or (t == aten._fft_c2c.default and isinstance(x, _Padded)):
            dims = list(n.args[1])
            if not isinstance(x, _Padded) or len(dims) != 1 or dims[0] % x.e.ndim != x.e.td:
                raise self.fail(n, "an FFT that is not over the zero-padded time dim")
            if t == aten._fft_c2c.default and not n.args[3]:
                raise self.fail(n, "an inverse FFT of a time signal")
            onesided = bool(n.args[3]) if t == aten._fft_r2c.default else False
            return _Spec(x, onesided, 1.0, _norm_factor(n.args[2], x.n))
        if t in (aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar):
            if isinstance(x, _Spec) and len(args) > 1 and isinstance(args[1], _Spec):
                if t not in (aten.mul.Tensor,):
                    raise self.fail(n, "a division of two spectra")
                return self.spec_mul(n, x, args[1])
            if not isinstance(x, _Spec):
                if t in (aten.mul.Tensor, aten.mul.Scalar) and isinstance(args[1], _Spec):
                    x, other = args[1], args[0]
                else:
                    raise self.fail(n, "arithmetic on a zero-padded signal")
            else:
                other = args[1]
            ov = other.v if isinstance(other, _Const) else other
            if isinstance(ov, sympy.Expr):
                s = ov if t in (aten.mul.Tensor, aten.mul.Scalar) else 1 / ov
                return dataclasses.replace(x, scale_s=x.scale_s * s)
            if isinstance(ov, torch.Tensor):
                vt = val(n)
                fd = x.sig.e.td
                if ov.dim() > 0 and ov.dim() >= vt.dim() - fd and ov.shape[fd - (vt.dim() - ov.dim())] != 1:
                    raise self.fail(n, "a product of a spectrum with a tensor over frequency")
                ov = ov.to(_C if ov.is_complex() else _F)
            if isinstance(ov, _Modes):
                raise self.fail(n, "a product of a spectrum with a time signal")
            s = ov if t in (aten.mul.Tensor, aten.mul.Scalar) else 1 / ov
            return dataclasses.replace(x, scale_t=x.scale_t * s)
        if t in (aten._fft_c2r.default, aten._fft_c2c.default):
            if not isinstance(x, _Spec):
                raise self.fail(n, "an inverse FFT of something other than a spectrum product")
            dims = list(n.args[1])
            if len(dims) != 1 or dims[0] % x.sig.e.ndim != x.sig.e.td:
                raise self.fail(n, "an inverse FFT over another dim")
            if t == aten._fft_c2r.default:
                size = self.sym(n.args[3])
                if not x.onesided or sympy.expand(sympy.sympify(size) - x.sig.n) != 0:
                    raise self.fail(n, "an inverse real FFT of another size")
            elif n.args[3] or x.onesided:
                raise self.fail(n, "a forward FFT of a spectrum")
            factor = sympy.simplify(x.scale_s * x.sig.n * _norm_factor(n.args[2], x.sig.n))
            if factor.free_symbols:
                raise self.fail(n, f"the convolution's scale {factor} depends on the length")
            e = x.sig.e
            scale = self.bcast_inner(n, e, x.scale_t) * complex(factor)
            real = not val(n).dtype.is_complex
            inner = _Modes(e.c * scale.unsqueeze(-1), e.z, e.td, real and e.real)
            if real and not e.real:
                inner = _Modes(inner.c, inner.z, inner.td, True)
            return _Padded(inner, x.sig.n, x.sig.support, x.sig.exact)
        if t == aten.slice.Tensor and isinstance(x, _Padded):
            d = int(n.args[1]) % x.e.ndim
            start = self.sym(n.args[2]) if len(n.args) > 2 else 0
            end = self.sym(n.args[3]) if len(n.args) > 3 else None
            step = n.args[4] if len(n.args) > 4 else 1
            if d == x.e.td and start == 0 and step == 1 and self.is_L(end):
                return x.e
            if d != x.e.td:
                size = x.e.c.shape[d]
                s_ = slice(int(start or 0), None if end is None else int(min(int(end), 2 ** 62)), int(step))
                idx = [slice(None)] * (x.e.ndim + 1)
                idx[d] = s_
                if s_.indices(size) == (0, size, 1):
                    return x
                e = _Modes(x.e.c[tuple(idx)], x.e.z[tuple(idx)], x.e.td, x.e.real)
                return dataclasses.replace(x, e=e)
            raise self.fail(n, "a slice of the convolution other than [:L]")
        if t in _SHAPE_OPS and isinstance(x, _Padded) and t in (aten.clone.default, aten.alias.default):
            return x
        raise self.fail(n, "this op on a zero-padded signal or a spectrum is not a causal convolution")

    def bcast_inner(self, n: fx.Node, e: _Modes, s: Any) -> torch.Tensor:
        t = torch.as_tensor(s)
        t = t.to(_C)
        shape = list(e.c.shape[:-1])
        nd = len(shape)
        if t.dim() > nd:
            raise self.fail(n, "a scale with more dims than the signal")
        t = t.reshape((1,) * (nd - t.dim()) + tuple(t.shape))
        return t.expand(*shape)

    def spec_mul(self, n: fx.Node, x: _Spec, y: _Spec) -> _Spec:
        if x.onesided != y.onesided or sympy.expand(x.sig.n - y.sig.n) != 0:
            raise self.fail(n, "a product of spectra of different FFTs")
        a, b = x.sig.e, y.sig.e
        if a.td - a.ndim != b.td - b.ndim:
            raise self.fail(n, "a product of spectra over different dims")
        need = sympy.expand(sympy.sympify(x.sig.support) + y.sig.support - 1)
        n_fft = sympy.sympify(x.sig.n)
        if not _holds(lambda L: int(n_fft.subs(self.L, L)) >= int(sympy.sympify(need).subs(self.L, L))):
            raise self.fail(n, f"an FFT of size {x.sig.n} too small for a linear convolution of supports "
                               f"{x.sig.support} and {y.sig.support} (it wraps around)")
        # broadcast both inner values to the product's shape (frequency dim -> time dim size 1)
        vt = val(n)
        td = vt.dim() - (a.ndim - a.td)
        while a.c.dim() - 1 < vt.dim():
            a = _Modes(a.c.unsqueeze(0), a.z.unsqueeze(0), a.td + 1, a.real)
        while b.c.dim() - 1 < vt.dim():
            b = _Modes(b.c.unsqueeze(0), b.z.unsqueeze(0), b.td + 1, b.real)
        shape = self.mode_shape(n, td)
        a = _Modes(a.c.expand(*shape, a.c.shape[-1]), a.z.expand(*shape, a.z.shape[-1]), td, a.real)
        b = _Modes(b.c.expand(*shape, b.c.shape[-1]), b.z.expand(*shape, b.z.shape[-1]), td, b.real)
        conv = _conv_modes(self.exact(a), self.exact(b), lambda why: self.fail(n, why))
        sup = sympy.expand(x.sig.support + y.sig.support - 1)
        sig = _Padded(conv, x.sig.n, sup, exact=bool(x.sig.support == 1 or y.sig.support == 1) and
                      x.sig.exact and y.sig.exact)
        return _Spec(sig, x.onesided, x.scale_t * y.scale_t, x.scale_s * y.scale_s)


def _holds(pred: Callable[[int], bool]) -> bool:
    for L in list(range(1, 70)) + [2 ** k + d for k in range(7, 24) for d in (-1, 0, 1)]:
        try:
            if not pred(L):
                return False
        except (TypeError, ValueError):
            return False
    return True


def _conv_modes(a: _Modes, b: _Modes, fail) -> _Modes:
    """The causal convolution of two exact exponential sums:
    ``sum_{s<=t} z1^s z2^(t-s) = z2/(z2-z1) z2^t - z1/(z2-z1) z1^t`` (the impulse, ``z = 0``, is
    the identity). Equal nonzero poles would give ``(t+1) z^t``: not a sum of exponentials."""
    c1, z1 = a.c.unsqueeze(-1), a.z.unsqueeze(-1)      # [..., M1, 1]
    c2, z2 = b.c.unsqueeze(-2), b.z.unsqueeze(-2)      # [..., 1, M2]
    cc = c1 * c2
    live = cc != 0
    same = (z1 == z2) & live
    if bool((same & (z1 != 0)).any()):
        raise fail("a convolution of two exponentials with the same pole (t * z^t is not a sum of exponentials)")
    both0 = same  # z1 == z2 == 0: impulse * impulse = impulse
    d = torch.where(same, torch.ones_like(z1 - z2), z2 - z1)
    first = torch.where(both0, cc, cc * z2 / d)           # coefficient of z2^t
    second = torch.where(both0, torch.zeros_like(cc), -cc * z1 / d)   # coefficient of z1^t
    shape = torch.broadcast_shapes(first.shape, z2.shape)
    zz2 = z2.expand(shape)
    zz1 = z1.expand(shape)
    c = torch.cat([first.expand(shape).flatten(-2), second.expand(shape).flatten(-2)], -1)
    z = torch.cat([zz2.flatten(-2), zz1.flatten(-2)], -1)
    return _Interp.prune(_Modes(c, z, a.td, False))


_TIMED = (_Lin, _Modes, _Padded, _Spec, _RealView)

_SHAPE_OPS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.permute.default,
              aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default,
              aten.expand.default, aten.select.int, aten.slice.Tensor, aten.index_select.default,
              aten.alias.default, aten.clone.default, aten.repeat.default, aten.lift_fresh_copy.default}


# ----------------------------------------------------------------------------- canonical form
def _canonical(k: _Modes) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel poles and residues ``[C, N]`` of a real filter ``[C, L]`` (module doc)."""
    if k.ndim != 2 or k.td != 1:
        raise NotModal("the filter is not [C, L]")
    m = k if k.real else dataclasses.replace(k, real=True)
    c = m.c[:, 0, :].clone()
    z = m.z[:, 0, :].clone()
    flip = z.imag < 0
    c = torch.where(flip, c.conj(), c)
    z = torch.where(flip, z.conj(), z)
    realz = z.imag == 0
    c = torch.where(realz, c.real.to(_C), c)
    rows_p: List[List[complex]] = []
    rows_r: List[List[complex]] = []
    for ch in range(c.shape[0]):
        acc: Dict[complex, complex] = {}
        for cv, zv in zip(c[ch].tolist(), z[ch].tolist()):
            if cv == 0:
                continue
            acc[zv] = acc.get(zv, 0) + cv
        items = [(zv, cv) for zv, cv in acc.items() if cv != 0]
        rows_p.append([zv for zv, _ in items])
        rows_r.append([cv for _, cv in items])
    N = max((len(r) for r in rows_p), default=0)
    P = torch.zeros(c.shape[0], N, dtype=_C)
    R = torch.zeros(c.shape[0], N, dtype=_C)
    for ch, (ps, rs) in enumerate(zip(rows_p, rows_r)):
        if ps:
            P[ch, :len(ps)] = torch.tensor(ps, dtype=_C)
            R[ch, :len(rs)] = torch.tensor(rs, dtype=_C)
    return P, R


@dataclasses.dataclass
class _Recognised:
    poles: torch.Tensor
    residues: torch.Tensor
    sources: List[Tuple[fx.Node, _Modes]]
    time_sources: Dict[fx.Node, str]
    #: every exponential sum of the generator decays or stays (all ``|z| <= 1``, finite
    #: coefficients): the model's values are bounded by the modes' envelope (see :func:`verify`)
    bounded: bool = False


def recognise(gm: fx.GraphModule, k_node: fx.Node, ta) -> _Recognised:
    """The poles and residues ``[C, N]`` of the filter computed by ``k_node`` (module doc), the
    sources to verify and the time sources; raises :class:`NotModal` with the reason."""
    if not ta.symbolic:
        raise NotModal("the graph is not generic in the length")
    it = _Interp(gm, ta, k_node)
    k = it.run()
    if isinstance(k, _Const):
        raise NotModal("the filter does not depend on the positions")
    if isinstance(k, _Lin):
        raise NotModal("the filter is affine in t (a ramp), not a sum of exponentials")
    if not isinstance(k, _Modes):
        raise it.fail(k_node, "the filter is not a time signal of the algebra")
    k = it.expand(k_node, k)
    poles, residues = _canonical(k)
    # the sources: the last mode values computed pointwise in t (every op from the positions to
    # them acts on each t alone): those the padding / FFT of a region reads, or the filter itself
    sources = []
    for n, v in it.env.items():
        if not isinstance(v, _Modes) or n in it.nonlocal_:
            continue
        if n is k_node or any(u in it.nonlocal_ for u in n.users if u in it.env):
            sources.append((n, it.expand(n, v)))
    bounded = True
    for v in it.env.values():
        m = v.e if isinstance(v, _Padded) else v.sig.e if isinstance(v, _Spec) else v
        if isinstance(m, _Modes) and m.c.numel():
            if not (bool(torch.isfinite(m.c).all()) and float(m.z.abs().max()) <= 1 + 1e-12):
                bounded = False
    return _Recognised(poles, residues, sources, dict(it.time_sources), bounded)


# ----------------------------------------------------------------------------- verification
class _Window(fx.Interpreter):
    """Runs the ancestors of the sources with every time source shifted by ``t0`` (the graph is
    run at length ``W``: every size reads ``W``)."""

    def __init__(self, gm: fx.GraphModule, time_sources: Dict[str, str], t0: int):
        super().__init__(gm)
        self.ts, self.t0 = time_sources, t0

    def run_node(self, n: fx.Node) -> Any:
        kind = self.ts.get(n.name)
        if kind is None:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        if kind == "arange":
            if n.target == aten.arange.default:
                start, end = 0, args[0]
            else:
                start, end = args[0], args[1]
            kw = {k: v for k, v in kwargs.items() if k in ("dtype", "device", "layout", "pin_memory")}
            return torch.arange(start + self.t0, end + self.t0, **kw)
        # a buffer of positions sliced [:L]
        src, d = args[0], args[1]
        W = args[3] - (args[2] if len(args) > 2 and args[2] is not None else 0)
        if self.t0 + W > src.shape[d]:
            raise NotModal(f"the positions buffer {n.args[0].name} has {src.shape[d]} entries, fewer than "
                           f"max_len")
        return src.narrow(d, self.t0, W)


def _rows(v: torch.Tensor, td: int) -> torch.Tensor:
    """``v`` with time last and every other dim flattened: ``[R, T]``."""
    return v.movedim(td, -1).reshape(-1, v.shape[td])


def _mode_rows(m: _Modes) -> Tuple[torch.Tensor, torch.Tensor]:
    c = m.c.select(m.td, 0).reshape(-1, m.c.shape[-1])
    z = m.z.select(m.td, 0).reshape(-1, m.z.shape[-1])
    return c, z


def _compare(model_rows: torch.Tensor, ours: torch.Tensor, scale: torch.Tensor) -> Tuple[float, int, int]:
    """Largest ``|model - ours| / scale`` over rows and positions, and its (row, position)."""
    err = (model_rows.to(ours.dtype) - ours).abs()
    rel = err / scale[:, None]
    flat = int(rel.argmax()) if rel.numel() else 0
    worst = float(rel.flatten()[flat]) if rel.numel() else 0.0
    return worst, flat // max(rel.shape[1], 1), flat % max(rel.shape[1], 1)


def verify(gm: fx.GraphModule, k_node: fx.Node, rec: _Recognised, make_input: Callable[[int], Any],
           max_len: int, rtol: float) -> Tuple[float, str]:
    """Check the realisation against the model's own filter (module doc); returns the largest
    relative error and a description, or raises :class:`NotModal` naming where it fails."""
    # 1. the whole filter subgraph at a moderate length
    Lv = min(max_len, VERIFY_FULL_LEN)
    sub = subgraph_module(gm, [k_node])
    with torch.no_grad():
        kv = sub(*_args(make_input(Lv)))[0].cpu()
    if not torch.isfinite(kv).all():
        raise NotModal(f"the model's filter has non-finite values at length {Lv}")
    ours = realize(rec.poles, rec.residues, 0, Lv)
    kd = kv.to(_F)
    scale = _scales(kd.abs().amax(-1))
    worst, row, pos = _compare(kd, ours, scale)
    if not worst <= rtol:
        raise NotModal(f"the realisation differs from the model's filter by {worst:.2e} (relative to the "
                       f"channel's largest value; tolerance {rtol:.0e}) at channel {row}, t = {pos}")
    worst_all = worst
    # 2. each source over [0, max_len) in chunks, the model's ops in the model's dtype
    names = {n.name: k for n, k in rec.time_sources.items()}
    nodes = [n for n, _ in rec.sources]
    subs = subgraph_module(gm, nodes)
    rows = [_mode_rows(m) for _, m in rec.sources]
    tables = [power_table(z, _SUB) for _, z in rows]             # z ** j, j < _SUB
    coefs = [c.clone() for c, _ in rows]                          # c z ** t (Horner over the sub-blocks)
    reals = [not val(n).dtype.is_complex for n, _ in rec.sources]
    tds = [m.td for _, m in rec.sources]
    maxabs = [None] * len(nodes)
    errs = [None] * len(nodes)
    # |c| and log|z| of every term: the envelope env(t) = sum_m |c_m| |z_m|^t bounds the exact
    # value and (every intermediate of the generator being non-growing: rec.bounded) the model's
    # floating-point value alike (|fl(exp)|, |fl(cos)|, products and sums within (1 + O(eps)) of
    # the envelope of their operands); it never grows, so once 2 env(T) <= rtol * scale of every
    # row, no position >= T can differ by more than the tolerance: the rest need not be run
    mags = [(c.abs().to(_F), torch.log(z.abs().to(_F))) for c, z in rows]
    tail = None
    for t0 in range(0, max_len, CHUNK):
        W = min(CHUNK, max_len - t0)
        with torch.no_grad():
            if W < 2 and t0 > 0:  # a graph may not run at length 1: run two positions, keep the last
                vals = [v.narrow(tds[i], 1, 1) for i, v in
                        enumerate(_Window(subs, names, t0 - 1).run(*_args(make_input(2))))]
            else:
                vals = _Window(subs, names, t0).run(*_args(make_input(W)))
        for i, v in enumerate(vals):
            mv = _rows(v.detach().cpu(), tds[i])
            if not torch.isfinite(mv).all():
                raise NotModal(f"{nodes[i].name}: the model's filter generator gives non-finite values "
                               f"between t = {t0} and {t0 + W}")
            parts = []
            for s0 in range(0, W, _SUB):
                w = min(_SUB, W - s0)
                parts.append(torch.einsum("rn,rnt->rt", coefs[i], tables[i][..., :w]))
                coefs[i] = coefs[i] * tables[i][..., -1] * rows[i][1]  # z ** _SUB (the last block may be short:
                # only at max_len, where nothing follows)
            ours_i = torch.cat(parts, -1)
            ours_i = ours_i.real if reals[i] else ours_i
            e = (mv.to(ours_i.dtype) - ours_i).abs().amax(-1)
            a = mv.abs().to(_F).amax(-1)
            errs[i] = e if errs[i] is None else torch.maximum(errs[i], e)
            maxabs[i] = a if maxabs[i] is None else torch.maximum(maxabs[i], a)
        T = t0 + W
        if rec.bounded and T < max_len and all(
                bool((2.002 * (ca * torch.exp(T * lz)).sum(-1) <= rtol * _scales(maxabs[i])).all())
                for i, (ca, lz) in enumerate(mags)):
            tail = T
            break
    for i, n in enumerate(nodes):
        scale = _scales(maxabs[i])
        rel = errs[i].to(_F) / scale
        w = float(rel.max()) if rel.numel() else 0.0
        if not w <= rtol:
            src = user_source(n)
            raise NotModal(f"the filter generator ({op_name(n) if n.op == 'call_function' else n.name}"
                           f"{' at ' + src if src else ''}) computed by the model over [0, {max_len}) differs "
                           f"from its exponential sum by {w:.2e} (relative to each channel's largest value; "
                           f"tolerance {rtol:.0e}), row {int(rel.argmax())}")
        worst_all = max(worst_all, w)
    if tail is None:
        return worst_all, f"verified over [0, {max_len}) (max relative error {worst_all:.1e})"
    return worst_all, (f"verified over [0, {max_len}) (max relative error {worst_all:.1e}; positions >= {tail} "
                       f"by the decayed modes' envelope)")


def _args(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _scales(rowmax: torch.Tensor) -> torch.Tensor:
    """Each row's scale: its largest value, at least 1e-6 of the largest of all rows."""
    top = float(rowmax.max()) if rowmax.numel() else 0.0
    return rowmax.clamp_min(max(top * 1e-6, 1e-300))


# ----------------------------------------------------------------------------- the plan
@dataclasses.dataclass(frozen=True)
class ModalFilter:
    """A long convolution streamed as a recurrence: ``k[c, t] = Re(sum_n residues[c, n] *
    poles[c, n] ** t)`` (``[C, N]`` complex128), verified to ``max_err`` over ``[0, max_len)``."""

    node: str
    poles: torch.Tensor
    residues: torch.Tensor
    max_err: float
    max_len: int

    @property
    def modes(self) -> int:
        """Modes per channel (``N``)."""
        return int(self.poles.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.poles.shape[0])


@dataclasses.dataclass(frozen=True)
class ConvPath:
    """How one long convolution streams: ``path`` "modal" or "online", and why."""

    node: str
    path: str
    reason: str
    source: Optional[str] = None
    code: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class ModalPlan:
    """The modal filters (node name -> :class:`ModalFilter`) and every long convolution's path."""

    option: Any
    max_len: int
    filters: Dict[str, ModalFilter]
    paths: Dict[str, ConvPath]
    #: the seconds the recognition and verification took
    seconds: float = 0.0


def modal_plan(gm: fx.GraphModule, ta, make_input: Callable[[int], Any], max_len: int,
               option: Any = "auto", dtype_of: Optional[Callable[[fx.Node], torch.dtype]] = None) -> ModalPlan:
    """Decide, for every long convolution of ``gm``, whether it streams as a verified modal
    recurrence (module doc). ``option``: "auto" or False (everything on the online engine)."""
    if option not in MODAL_OPTIONS:
        raise ValueError(f"modal={option!r}: expected one of {MODAL_OPTIONS}")
    t_start = time.perf_counter()
    filters: Dict[str, ModalFilter] = {}
    paths: Dict[str, ConvPath] = {}
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target != LONG_CONV:
            continue
        src, code = user_source(n), user_code(n)
        if option is False:
            paths[n.name] = ConvPath(n.name, "online", "modal=False: the online engine is forced", src, code)
            continue
        k = n.args[1]
        try:
            rec = recognise(gm, k, ta)
            N = int(rec.poles.shape[-1])
            if N > MAX_MODES:
                raise NotModal(f"{N} modes per channel (more than {MAX_MODES}: the online engine is cheaper)")
            mags = rec.poles.abs()
            if N and float(mags.max()) > 1 + 1e-12:
                raise NotModal(f"a pole of modulus {float(mags.max()):.6g} > 1 (a growing mode: the recurrence "
                               f"would amplify rounding)")
            kdt = val(k).dtype
            rtol = RTOL.get(kdt)
            if rtol is None:
                raise NotModal(f"a {str(kdt).replace('torch.', '')} filter (modal recurrences are checked for fp32 "
                               f"and fp64 filters)")
            err, how = verify(gm, k, rec, make_input, max_len, rtol)
        except NotModal as e:
            paths[n.name] = ConvPath(n.name, "online", f"not modal: {e.reason}", src, code)
            continue
        except Exception as e:  # noqa: BLE001 - never break a session over the analysis
            paths[n.name] = ConvPath(n.name, "online", f"not modal: the analysis failed ({type(e).__name__}: "
                                     f"{e})", src, code)
            continue
        filters[n.name] = ModalFilter(n.name, rec.poles, rec.residues, err, max_len)
        paths[n.name] = ConvPath(n.name, "modal", f"modal recurrence, {N} mode(s) per channel x "
                                 f"{rec.poles.shape[0]} channels; {how}", src, code)
    return ModalPlan(option, int(max_len), filters, paths, time.perf_counter() - t_start)


def without_members(groups, names) -> Any:
    """A :class:`~lcsm_compile.passes.groups.GroupPlan` without the long convolutions ``names``
    (the modal ones): their channels leave the groups, empty groups are dropped."""
    names = set(names)
    if not names:
        return groups
    out = []
    for g in groups.groups:
        members = [m for m in g.members if m not in names]
        if not members:
            continue
        slices, start = {}, 0
        for m in members:
            C = g.slices[m].stop - g.slices[m].start
            slices[m] = slice(start, start + C)
            start += C
        out.append(dataclasses.replace(g, members=members, slices=slices,
                                       depths={m: g.depths[m] for m in members}))
    return dataclasses.replace(groups, groups=out)



# ----------------------------------------------------------------------------- the slot kind
@dataclasses.dataclass(frozen=True)
class ModalSlot:
    """Where a modal long convolution's slot goes: its input reshaped to ``[batch, n]`` (step)
    / ``[batch, n, P]`` (prefill), the state tensors named :func:`~.step_graph.state_attr`
    ``(node, "modal_state" | "modal_poles" | "modal_residues")``."""

    batch: int
    n: int


#: the state attributes of a modal convolution (see :class:`ModalSlot`)
MODAL_STATE = ("modal_state", "modal_poles", "modal_residues")


def lower_modal_slots(gm: fx.GraphModule, mode: str, slots: Dict[str, ModalSlot]) -> fx.GraphModule:
    """A copy of a slot program (``build_step_graph`` / ``build_prefill_graph``) whose slots
    named in ``slots`` are ``lcsm::modal_step`` / ``lcsm::modal_prefill`` calls on the state
    attributes (pure: ``gm`` unchanged; other slots are kept for
    :func:`~.step_graph.lower_slots`). ``mode`` is "step" (signature ``(x_t, pos)``) or
    "prefill"."""
    from .step_graph import Slot, state_attr

    if not slots:
        return gm
    ops = torch.ops.lcsm
    g = fx.Graph()
    env: Dict[fx.Node, fx.Node] = {}
    pos = None
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            env[n] = g.node_copy(n)
            if n.name == "pos":
                pos = env[n]
            continue
        if n.op == "call_function" and isinstance(n.target, Slot) and n.target.name in slots:
            s, name = slots[n.target.name], n.target.name
            u = env[n.args[0]]
            st, p, r = (g.get_attr(state_attr(name, f)) for f in MODAL_STATE)
            if mode == "step":
                if pos is None:
                    raise ValueError("lower_modal_slots: a step program needs its 'pos' placeholder")
                u2 = g.call_method("reshape", (u, s.batch, s.n))
                y = g.call_function(ops.modal_step.default, (u2, st, p, r, pos))
            else:
                u2 = g.call_method("reshape", (u, s.batch, s.n, -1))
                y = g.call_function(ops.modal_prefill.default, (u2, st, p, r))
            env[n] = g.call_method("reshape_as", (y, u))
            env[n].meta = dict(n.meta)
            continue
        env[n] = g.node_copy(n, lambda a: env[a])
    mine = {state_attr(name, f) for name in slots for f in MODAL_STATE}
    root: Dict[str, Any] = {}
    for n in g.nodes:
        if n.op in ("get_attr", "call_module"):
            if n.target in mine:
                root[n.target] = torch.empty(0)  # placeholders: the runtime binds the state
            else:
                obj: Any = gm
                for part in n.target.split("."):
                    obj = getattr(obj, part)
                root[n.target] = obj
    out = fx.GraphModule(root, g, class_name=type(gm).__name__)
    return out
