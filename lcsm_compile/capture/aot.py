"""The aot adapter: one aot_autograd inference graph (as the backend receives it) -> Captured.

Used by :class:`lcsm_compile.backend.LcsmBackend` for each graph dynamo hands it (a graph
break gives several). Its sizes are symbolic if dynamo made them so, else concrete (the graph
is then only used at that shape, which dynamo guards).
"""

from __future__ import annotations

from typing import Any, List, Tuple, Union

import sympy
import torch.fx as fx

from .symbolic import symints_to_sym_size, to_expr, val
from .tracers import Captured

__all__ = ["capture_aten_graph"]


def capture_aten_graph(gm: fx.GraphModule, fake_args: List[Any], real_args: List[Any],
                       data_index: List[int], time_dims: Union[int, List[int]] = 1) -> Captured:
    """Wrap an aot_autograd inference graph (as the backend receives it) in a :class:`Captured`.

    ``data_index``: which placeholders carry the time-varying input(s); ``time_dims``: the time
    dim of each (or one for all); dim 0 is the batch. SymInt placeholders are kept (the calling convention does not change)
    but their uses read ``aten.sym_size.int`` of a tensor input instead.
    """
    from torch._guards import detect_fake_mode

    phs = list(gm.graph.find_nodes(op="placeholder"))
    data = [phs[i] for i in data_index]
    tdims = [time_dims] * len(data) if isinstance(time_dims, int) else list(time_dims)
    time_dim = tdims[0]
    symints_to_sym_size(gm, data, erase=False)
    mutated: List[Tuple[str, bool]] = []  # in-place buffer writes stay in the graph here
    gm.graph.eliminate_dead_code()
    gm.recompile()
    fake_mode = detect_fake_mode(fake_args)
    shape = val(data[0]).shape
    tsym = to_expr(shape[time_dim])
    bsym = to_expr(shape[0])
    return Captured(gm, data, {p.name: d for p, d in zip(data, tdims)}, tsym,
                    bsym if isinstance(bsym, sympy.Symbol) else None, list(real_args),
                    fake_mode=fake_mode, capture_len=int(real_args[data_index[0]].shape[time_dim]),
                    mutated_buffers=mutated)
