"""Split a rewritten graph into its filters and the rest, so a full forward can reuse filters.

Contract: :func:`split_filters` is a pure function ``(gm, analysis) -> Split | None``. For a
rewritten graph (``lcsm::long_conv(u, k)`` nodes, ``analysis`` from
:func:`lcsm_compile.passes.time_axis.classify`) whose long-convolution filters ``k`` are
TIME_INVARIANT (computed from parameters and sizes only), it returns two new graphs sharing
``gm``'s tensors:

* ``filters``: the same placeholders, outputs ``(k_1, ..., k_n)`` (everything else removed);
* ``main``: the same placeholders followed by one placeholder per filter, the original
  outputs; each ``k_i`` is read from its placeholder.

So ``main(*args, *filters(*args)) == gm(*args)`` for every argument list, and a caller may
keep ``filters(*args)`` for as long as the parameters and sizes it read are unchanged (the
backend keys it by the inputs' shapes and the parameters' versions). ``None`` when there is
no such filter.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch.fx as fx

from .common import LONG_CONV
from .time_axis import Analysis, NodeClass

__all__ = ["Split", "split_filters"]


@dataclasses.dataclass(frozen=True)
class Split:
    """The two graphs of :func:`split_filters` and the number of filters."""

    filters: fx.GraphModule
    main: fx.GraphModule
    n: int


def split_filters(gm: fx.GraphModule, analysis: Analysis) -> Optional[Split]:
    """See the module docstring."""
    ks = []
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target == LONG_CONV and isinstance(n.args[1], fx.Node):
            k = n.args[1]
            info = analysis.info.get(k.name)
            if info is not None and info.cls == NodeClass.TIME_INVARIANT and k.op != "placeholder" and k not in ks:
                ks.append(k)
    if not ks:
        return None
    names = [k.name for k in ks]

    fg = _copy(gm.graph)
    by_name = {n.name: n for n in fg.nodes}
    out = next(iter(fg.find_nodes(op="output")))
    out.args = (tuple(by_name[nm] for nm in names),)
    fg.eliminate_dead_code()
    filters = fx.GraphModule(gm, fg)

    mg = _copy(gm.graph)
    by_name = {n.name: n for n in mg.nodes}
    last_ph = list(mg.find_nodes(op="placeholder"))[-1]
    with mg.inserting_after(last_ph):
        new = []
        for nm in names:
            ph = mg.placeholder(f"filter_{nm}")
            ph.meta = dict(by_name[nm].meta)
            new.append(ph)
    for nm, ph in zip(names, new):
        by_name[nm].replace_all_uses_with(ph)
    _order_placeholders(mg, new)
    mg.eliminate_dead_code()
    main = fx.GraphModule(gm, mg)
    return Split(filters, main, len(names))


def _copy(g: fx.Graph) -> fx.Graph:
    """A copy of ``g`` with the same node names (meta shared shallowly)."""
    new = fx.Graph()
    out = new.graph_copy(g, {})
    new.output(out)
    return new


def _order_placeholders(g: fx.Graph, new: list) -> None:
    """Put the ``new`` placeholders, in order, after the graph's other placeholders."""
    anchor = [n for n in g.find_nodes(op="placeholder") if n not in new][-1]
    for ph in new:
        anchor.append(ph)
        anchor = ph
