"""Running a graph once at a large length in as little memory as the graph allows.

The fold stage evaluates the filters at ``max_len`` (``passes/fold_filters.py``); a long
convolution's filter is computed in the graph as the region applied to an impulse
(``passes/rewrite.py``): FFTs of size ``2 max_len`` over every channel, three such buffers live
at once (the filter's spectrum, the padded impulse, the impulse's spectrum, then their
product). :class:`LeanInterpreter` runs the same ops, with the same results bit for bit, in
less memory:

* a ``constant_pad_nd`` whose only user is an ``_fft_r2c`` over the padded dims is never
  materialized: the transform runs over chunks of rows (dim 0), each padded on its own;
* an elementwise ``mul``/``add``/``sub``/``div`` whose first operand dies there (and has the
  result's shape and dtype, and no other live value shares its memory) is computed in place;
* a result that is a view into a larger buffer (a filter sliced ``[:L]`` out of a transform of
  size ``2L``) is copied compact, so the buffer is freed at its last use;
* every value is freed after its last use (``fx.Interpreter``).

:func:`pad_fuses` and :func:`runs_in_place` are the static conditions (on a node's ``meta``
values) that the memory model (``runtime/memory.py``) uses to predict the same peak.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.fx as fx

__all__ = ["LeanInterpreter", "pad_fuses", "chunk_dim", "runs_in_place", "INPLACE", "CHUNK_BYTES"]

aten = torch.ops.aten

#: elementwise ops computed in place when their first operand dies there
INPLACE = {aten.mul.Tensor: "mul_", aten.div.Tensor: "div_", aten.add.Tensor: "add_", aten.sub.Tensor: "sub_"}
#: bytes of one row chunk of a fused pad + transform
CHUNK_BYTES = 16 << 20


def _dims(d, ndim: int) -> set:
    return {int(x) % ndim for x in (d if isinstance(d, (list, tuple)) else [d])}


def chunk_dim(n: fx.Node) -> Optional[int]:
    """For a ``constant_pad_nd`` read only by one ``_fft_r2c`` that transforms every dim it pads
    (zero padding): the dim, neither padded nor transformed, over which the two can run in
    chunks (the largest such); else None."""
    if n.op != "call_function" or n.target != aten.constant_pad_nd.default or len(n.users) != 1:
        return None
    r = next(iter(n.users))
    if r.op != "call_function" or r.target != aten._fft_r2c.default or r.args[0] is not n:
        return None
    val = n.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() < 2:
        return None
    if len(n.args) > 2 and n.args[2] not in (0, 0.0):
        return None
    nd = val.dim()
    pad = list(n.args[1])
    padded = {nd - 1 - i // 2 for i, p in enumerate(pad) if not (isinstance(p, int) and p == 0)}
    fft = _dims(r.args[1], nd)
    if not padded <= fft:
        return None
    best = None
    for d in range(nd):
        if d in fft or d in padded:
            continue
        size = val.shape[d]
        hint = size.node.hint if isinstance(size, torch.SymInt) else int(size)
        if hint is not None and hint > 1 and (best is None or hint > best[1]):
            best = (d, hint)
    return None if best is None else best[0]


def pad_fuses(n: fx.Node) -> bool:
    """Whether ``n`` (a ``constant_pad_nd``) is fused into its transform (:func:`chunk_dim`)."""
    return chunk_dim(n) is not None


def runs_in_place(n: fx.Node) -> bool:
    """Whether the elementwise ``n`` may write into its first operand: same shape and dtype as
    the result, computed by the graph (not a parameter or an input), and last used by ``n``
    (aliasing with other live values is checked when it runs)."""
    if n.op != "call_function" or n.target not in INPLACE or not n.args or not isinstance(n.args[0], fx.Node):
        return False
    a = n.args[0]
    if a.op != "call_function" or any(u is not n and _after(u, n) for u in a.users):
        return False
    if n.target in (aten.add.Tensor, aten.sub.Tensor) and n.kwargs.get("alpha", 1) != 1:
        return False
    va, vn = a.meta.get("val"), n.meta.get("val")
    if not isinstance(va, torch.Tensor) or not isinstance(vn, torch.Tensor):
        return False
    return va.dtype == vn.dtype and tuple(va.shape) == tuple(vn.shape)


def _after(u: fx.Node, n: fx.Node) -> bool:
    """Whether ``u`` comes after ``n`` in their graph (or is ``n``'s user outside it)."""
    node = n.next
    while node.op != "root":
        if node is u:
            return True
        node = node.next
    return False


class _Deferred:
    """A pad that is never materialized (:func:`pad_fuses`)."""

    __slots__ = ("x", "pad", "dim")

    def __init__(self, x: torch.Tensor, pad, dim: int):
        self.x, self.pad, self.dim = x, list(pad), dim


class LeanInterpreter(fx.Interpreter):
    """Runs a module with the memory savings of the module doc (same values bit for bit)."""

    def run_node(self, n: fx.Node):
        cd = chunk_dim(n)
        if cd is not None:
            x = self.env[n.args[0]] if isinstance(n.args[0], fx.Node) else n.args[0]
            if isinstance(x, torch.Tensor) and x.dim() > cd:
                pad = [self.env[p] if isinstance(p, fx.Node) else p for p in n.args[1]]
                return _Deferred(x, pad, cd)
        if n.op == "call_function" and n.target == aten._fft_r2c.default and isinstance(
                self.env.get(n.args[0]), _Deferred):
            return self._r2c_rows(n)
        if runs_in_place(n):
            v = self._in_place(n)
            if v is not None:
                return v
        v = super().run_node(n)
        if isinstance(v, torch.Tensor) and any(u.op == "output" for u in n.users) \
                and v.untyped_storage().nbytes() > v.numel() * v.element_size():
            v = v.clone(memory_format=torch.contiguous_format)
        return v

    def _r2c_rows(self, n: fx.Node) -> torch.Tensor:
        d: _Deferred = self.env[n.args[0]]
        dims, norm, onesided = n.args[1], n.args[2], n.args[3]
        x, cd = d.x, d.dim
        rows = x.shape[cd]
        per_row = max(1, x.numel() // max(1, rows) * x.element_size() * 4)
        step = max(1, CHUNK_BYTES // per_row)
        out = None
        for r0 in range(0, rows, step):
            m = min(step, rows - r0)
            part = aten._fft_r2c.default(aten.constant_pad_nd.default(x.narrow(cd, r0, m), d.pad, 0.0), dims, norm,
                                         onesided)
            if out is None:
                shape = list(part.shape)
                shape[cd] = rows
                out = part.new_empty(shape)
            out.narrow(cd, r0, m).copy_(part)
        return out

    def _in_place(self, n: fx.Node) -> Optional[torch.Tensor]:
        a = self.env.get(n.args[0])
        b = self.env[n.args[1]] if isinstance(n.args[1], fx.Node) else n.args[1]
        if not isinstance(a, torch.Tensor) or not a.is_contiguous() or a.requires_grad:
            return None
        ptr = a.untyped_storage().data_ptr()
        if a.untyped_storage().nbytes() != a.numel() * a.element_size():
            return None
        for k, v in self.env.items():  # nothing else live shares its memory
            if k is not n.args[0] and isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() == ptr:
                return None
        if isinstance(b, torch.Tensor) and b.untyped_storage().data_ptr() == ptr:
            return None
        out_dtype = torch.result_type(a, b) if isinstance(b, (torch.Tensor, int, float, complex, bool)) else None
        if out_dtype != a.dtype:
            return None
        if isinstance(b, torch.Tensor) and torch.broadcast_shapes(a.shape, b.shape) != a.shape:
            return None
        return getattr(a, INPLACE[n.target])(b)
