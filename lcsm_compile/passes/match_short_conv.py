"""Match convolutions over time done with ``aten.convolution`` (``F.conv1d`` / ``nn.Conv1d``).

Contract: :func:`match_conv_regions` is a pure function ``(gm, TimeAxis, data_dep) -> [Region]``.

* depthwise (``groups == C``, weight ``[C, 1, K]``), stride 1, dilation 1, on input-dependent
  data whose last dim has time;
* ``u`` is the conv input, or the input of a ``constant_pad_nd`` that pads only the time dim
  (``F.pad(u, (K-1, 0))``); ``y`` is the conv output, or a ``[:L]`` slice of it (symmetric
  ``padding=K-1`` then ``[..., :L]``);
* kernel size static -> a SHORT conv (weight and bias taken from the conv: ``short_conv``'s
  definition is exactly conv1d with left padding ``K-1``; extra left padding is a delay and
  becomes leading zero taps); kernel size depending on ``L`` -> a LONG direct conv
  (``F.conv1d(F.pad(u, (L-1, 0)), k.flip(-1)[:, None], groups=C)``), whose filter the rewrite
  gets with an impulse like the FFT regions.

Padding that reads the future (``padding='same'``, right padding) is not rejected here: the
probe in :mod:`.verify` refuses it with the reason.
"""

from __future__ import annotations

from typing import List, Set

import torch
import torch.fx as fx

from .common import size_exprs, val
from .region import Region
from .time_axis import TimeAxis, _is_pointwise_conv

aten = torch.ops.aten

__all__ = ["match_conv_regions"]


def match_conv_regions(gm: fx.GraphModule, ta: TimeAxis, data_dep: Set[str]) -> List[Region]:
    """Candidate conv regions (short and direct long) of ``gm`` (see the module doc)."""
    out: List[Region] = []
    for n in gm.graph.nodes:
        if n.target != aten.convolution.default or n.args[0].name not in data_dep:
            continue
        x, w, b, stride, padding, dilation, transposed, _, groups = n.args[:9]
        xv, wv = val(x), val(w)
        x0 = x.args[0] if x.target == aten.constant_pad_nd.default else x
        if xv.dim() != 3 or not (ta.has_time(size_exprs(x)[-1]) or ta.has_time(size_exprs(x0)[-1])):
            continue  # not a 1-d convolution over time
        if _is_pointwise_conv(n):
            continue  # kernel size 1: a per-position linear map, not a convolution over time
        r = Region("short", n, None, None, [], weight=w, bias=b, batch_dim0=True)
        K = size_exprs(w)[-1]
        if ta.has_time(K):
            r.kind = "long"
        if w.name in data_dep or (b is not None and b.name in data_dep):
            r.problem = "the convolution weight depends on the input"
        elif transposed or list(stride) != [1] or list(dilation) != [1]:
            r.problem = "strided, dilated or transposed convolution over time"
        elif not (groups == xv.shape[1] and wv.shape[0] == xv.shape[1] and wv.shape[1] == 1):
            r.problem = ("convolution over time that mixes channels (not depthwise): "
                         "only depthwise causal convolutions are streamed")
        u, nodes, lp = x, [n], int(padding[0]) if isinstance(padding[0], int) else 0
        if x.target == aten.constant_pad_nd.default and len(x.users) == 1:
            pad = x.args[1]
            value = x.args[2] if len(x.args) > 2 else 0
            if len(pad) >= 2 and all(isinstance(p, int) and p == 0 for p in pad[2:]) and value == 0:
                u, nodes = x.args[0], [x, n]
                lp += pad[0] if isinstance(pad[0], int) else 0
        y = n
        users = list(n.users)
        if len(users) == 1 and users[0].target == aten.slice.Tensor and users[0].args[1] % 3 == 2:
            y = users[0]
            nodes.append(y)
        r.u, r.y, r.nodes, r.u_tdim, r.y_tdim, r.left_pad = u, y, nodes, 2, 2, lp
        if r.problem is None and not ta.is_time(size_exprs(u)[-1]):
            r.problem = f"the convolution input has length {ta.user_expr(size_exprs(u)[-1])}, not L"
        if r.problem is None and not ta.is_time(size_exprs(y)[-1]):
            r.problem = (f"the convolution output has length {ta.user_expr(size_exprs(y)[-1])}, "
                         "not L (no [:L] slice)")
        if r.problem is None and r.kind == "short" and not isinstance(x.target, type(None)) \
                and not isinstance(lp, int):
            r.problem = "symbolic padding of a short convolution"
        out.append(r)
    return out
