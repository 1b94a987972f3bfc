"""Symbolic-size helpers of the capture: sizes as sympy, sizes read from the input.

* :func:`val` / :func:`to_expr` / :func:`size_exprs`: the fake value of a node and its sizes as
  sympy expressions (used by every pass).
* :func:`symbolic_bit_length`: a context manager, active only while a capture traces, under
  which ``SymInt.bit_length`` stays symbolic (``ceil(log2(n + 1))``) instead of specializing
  the length (``n = 1 << (2 * L - 1).bit_length()`` is a common FFT size). The patch is undone
  when the context exits, even on error.
* :func:`symints_to_sym_size` / :func:`sizes_from_input`: every size in a captured graph is
  read from the data input with ``aten.sym_size.int``, so the graph runs at any length.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, List, Optional

import sympy
import torch
import torch.fx as fx

__all__ = ["val", "to_expr", "size_exprs", "symbolic_bit_length", "symints_to_sym_size",
           "sizes_from_input"]


def val(node: Any) -> Any:
    """The fake value of a node (``meta['val']``), or the argument itself if not a node."""
    if isinstance(node, fx.Node):
        return node.meta.get("val", node.meta.get("example_value"))
    return node


def to_expr(s: Any) -> sympy.Expr:
    """A size (int or SymInt) as a sympy expression."""
    if isinstance(s, torch.SymInt):
        return s.node.expr
    return sympy.Integer(int(s))


def size_exprs(node: Any) -> Optional[List[sympy.Expr]]:
    """Sizes of a tensor node as sympy expressions (None if it is no tensor)."""
    v = val(node)
    if not isinstance(v, torch.Tensor):
        return None
    return [to_expr(s) for s in v.shape]


@contextlib.contextmanager
def symbolic_bit_length():
    """While active, ``SymInt.bit_length`` is symbolic instead of specializing (module doc)."""
    old = getattr(torch.SymInt, "bit_length", None)

    def bit_length(n):
        # Max(., 0): exact for n >= 0, and a shift by it is decidable (torch < 2.13 asks whether
        # the shift count is negative, which sympy cannot tell of a bare ceil(log2(.)))
        return torch.sym_max(math.ceil(torch._sym_log2(torch.sym_float(n + 1))), 0)
    torch.SymInt.bit_length = bit_length
    try:
        yield
    finally:
        if old is None:
            del torch.SymInt.bit_length
        else:
            torch.SymInt.bit_length = old


def symints_to_sym_size(gm: fx.GraphModule, prefer: List[fx.Node], erase: bool) -> bool:
    """Replace SymInt placeholders by ``aten.sym_size.int(tensor_placeholder, dim)`` nodes.

    Returns False if some SymInt placeholder is not a plain dim of a tensor placeholder.
    """
    g = gm.graph
    phs = list(g.find_nodes(op="placeholder"))
    tensors = list(prefer) + [p for p in phs if isinstance(val(p), torch.Tensor) and p not in prefer]
    last = phs[-1] if phs else None
    ok = True
    for p in phs:
        v = val(p)
        if not isinstance(v, torch.SymInt):
            continue
        e = v.node.expr
        src = None
        for t in tensors:
            for d, s in enumerate(val(t).shape):
                if isinstance(s, torch.SymInt) and s.node.expr == e:
                    src = (t, d)
                    break
            if src:
                break
        if src is None:
            ok = False
            continue
        with g.inserting_after(last):
            n = g.call_function(torch.ops.aten.sym_size.int, (src[0], src[1]))
        n.meta["val"] = val(src[0]).shape[src[1]]
        last = n
        p.replace_all_uses_with(n)
        if erase:
            g.erase_node(p)
    return ok


def sizes_from_input(gm: fx.GraphModule, data: fx.Node) -> None:
    """Every ``sym_size`` whose value is a size of the input becomes one canonical
    ``aten.sym_size.int(input, dim)`` node placed right after the input placeholder: no size
    reads an intermediate tensor (a region's nodes would otherwise stay alive after the
    rewrite) and every later pass can use the size anywhere in the graph."""
    g = gm.graph
    dims: Dict[Any, fx.Node] = {}
    anchor = data
    for d, sz in enumerate(val(data).shape):
        if isinstance(sz, torch.SymInt) and sz.node.expr not in dims:
            with g.inserting_after(anchor):
                n = g.call_function(torch.ops.aten.sym_size.int, (data, d))
            n.meta["val"] = sz
            dims[sz.node.expr] = n
            anchor = n
    canon = set(dims.values())
    for n in list(g.nodes):
        if n.target == torch.ops.aten.sym_size.int and n not in canon:
            v = val(n)
            if isinstance(v, torch.SymInt) and v.node.expr in dims:
                n.replace_all_uses_with(dims[v.node.expr])
                g.erase_node(n)
    g.eliminate_dead_code()
    g.lint()
    gm.recompile()
