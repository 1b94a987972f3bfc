"""The split_filters pass alone: filters(*args) feed main(*args, *ks) to give exactly gm(*args),
at any length; the filter graph reads the input only through its sizes."""

from __future__ import annotations

import pytest
import torch

from lcsm_compile.passes.common import LONG_CONV
from lcsm_compile.passes.split_filters import split_filters
from lcsm_compile.pipeline import lower

from examples.idioms import get


@pytest.mark.parametrize("name", ["safari_hyena_o2", "s4d_contract", "evo2_multirange", "h3_shift_fixed_taps"])
def test_split_gives_the_same_outputs_at_every_length(name):
    e = get(name)
    low = lower(e.build(), e.make_input(2, 12))
    split = split_filters(low.gm, low.analysis)
    assert split is not None and split.n >= 1
    n_long = sum(1 for n in low.gm.graph.nodes if n.target == LONG_CONV)
    assert split.n <= n_long
    assert not any(n.target == LONG_CONV for n in split.filters.graph.nodes)
    x_ph = next(iter(split.filters.graph.find_nodes(op="placeholder")))
    assert all(u.target == torch.ops.aten.sym_size.int for u in x_ph.users), list(x_ph.users)
    hi = low.valid_range[1] or 10**9  # a graph that branches on L holds up to its range
    for L in sorted({3, min(17, hi), min(40, hi)}):
        x = e.make_input(2, L)
        with torch.no_grad():
            ks = split.filters(x)
            got, want = split.main(x, *ks), low.gm(x)
        for a, b in zip(got, want):
            assert torch.equal(a, b), (name, L)


def test_no_long_conv_no_split():
    e = get("safari_hyena_o2")
    low = lower(e.build(), e.make_input(2, 12))
    g = low.gm
    for n in list(g.graph.nodes):  # the same graph with its long convs replaced by their input
        if n.target == LONG_CONV:
            n.replace_all_uses_with(n.args[0])
            g.graph.erase_node(n)
    g.graph.eliminate_dead_code()
    assert split_filters(g, low.analysis) is None
