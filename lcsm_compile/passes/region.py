"""The :class:`Region` record shared by the matchers, the verifier and the rewrite, and the
canonical layout (``[batch, C, L]``) of a region's input/output.

A region is the set of nodes that computes ``y`` from ``u`` (both time-domain values with one
time dim of size exactly ``L``) and that a matcher believes is a causal convolution. It is only
a candidate until :mod:`.verify` has probed it.

Canonical layout: move the time dim last (``perm = others + [tdim]``), then reshape to
``[Bc, C, L]`` where ``Bc`` is the batch size if the first remaining dim carries the batch
symbol (``B`` or ``B*H``: batch outermost), else 1 (every non-time dim is a channel).
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, Optional

import sympy
import torch
import torch.fx as fx

from .common import size_exprs

__all__ = ["Region", "canon_perm", "batch_in_front", "canon_eager", "uncanon_eager"]


@dataclasses.dataclass(eq=False)
class Region:
    """A candidate convolution region.

    ``kind``: "long" or "short". ``anchor``: the node reports name (inverse FFT / convolution).
    ``nodes``: region nodes in graph order (``u`` excluded, ``y`` included). ``u_tdim`` /
    ``y_tdim``: time dim of ``u`` / ``y``. ``fft_size``: sympy size of the FFT (long FFT regions).
    ``weight`` / ``bias``: conv weight ``[C, 1, K]`` / bias nodes (short convs). ``left_pad``:
    total left padding of a short conv. ``problem``: a structural reason it is not a causal
    conv (then it is not probed as a candidate; the reason is reported). ``verified``: set by
    verify (text), ``k_origin``: what the filter is computed from.
    """

    kind: str
    anchor: fx.Node
    u: Optional[fx.Node]
    y: Optional[fx.Node]
    nodes: List[fx.Node]
    u_tdim: Optional[int] = None
    y_tdim: Optional[int] = None
    fft_size: Any = None
    weight: Optional[fx.Node] = None
    bias: Optional[fx.Node] = None
    left_pad: int = 0
    problem: Optional[str] = None
    verified: Optional[str] = None
    max_err: Optional[float] = None
    k_origin: str = ""
    #: dim 0 of ``u`` is the batch whatever the symbols say (``aten.convolution``'s layout)
    batch_dim0: bool = False
    #: the largest length the match holds for (a fixed FFT size ``n``: ``2L - 1 <= n``)
    bound: Optional[int] = None


def canon_perm(ndim: int, tdim: int) -> List[int]:
    """Permutation that moves ``tdim`` last, keeping the other dims in order."""
    return [d for d in range(ndim) if d != tdim] + [tdim]


def batch_in_front(node: fx.Node, tdim: int, batch: Optional[sympy.Expr]) -> bool:
    """Whether the first non-time dim of ``node`` carries the batch symbol."""
    if batch is None or not isinstance(batch, sympy.Symbol):
        return False
    s = size_exprs(node)
    first = [e for i, e in enumerate(s) if i != tdim]
    if not first:
        return False
    others = [e for e in first[1:]]
    return batch in first[0].free_symbols and not any(batch in e.free_symbols for e in others)


def canon_eager(t: torch.Tensor, tdim: int, bfront: bool) -> torch.Tensor:
    """``t`` in canonical layout ``[Bc, C, L]`` (see module doc), eager."""
    p = t.permute(canon_perm(t.dim(), tdim))
    Bc = p.shape[0] if bfront and p.dim() > 1 else 1
    return p.reshape(Bc, -1, p.shape[-1])


def uncanon_eager(c: torch.Tensor, like: torch.Tensor, tdim: int) -> torch.Tensor:
    """Inverse of :func:`canon_eager` into the shape/layout of ``like``."""
    perm = canon_perm(like.dim(), tdim)
    shp = [like.shape[d] for d in perm]
    inv = [perm.index(d) for d in range(like.dim())]
    return c.reshape(shp).permute(inv)
