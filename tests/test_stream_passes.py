"""The streaming passes alone: fold_filters, groups, step_graph."""

import networkx as nx
import pytest
import torch
import torch.nn as nn

import lcsm_compile
from lcsm_compile import UnsupportedModelError
from lcsm_compile.passes.common import LONG_CONV, SHORT_CONV, nodes_of
from lcsm_compile.passes.fold_filters import fold_filters, frontier
from lcsm_compile.passes.groups import plan_groups, record_shapes
from lcsm_compile.passes.step_graph import bind_slots, build_step_graph
from lcsm_compile.pipeline import lower
from lcsm_compile.pipeline import plan as make_plan
from examples import idioms as zoo


class ExplicitConv(nn.Module):
    """Two layers of explicit-filter FFT convs; ``scale_by_length`` makes the filter depend on L."""

    def __init__(self, d=6, max_len=64, scale_by_length=False):
        super().__init__()
        self.k1 = nn.Parameter(torch.randn(d, max_len) * 0.3)
        self.k2 = nn.Parameter(torch.randn(d, max_len) * 0.3)
        self.lin = nn.Linear(d, d)
        self.scale_by_length = scale_by_length

    @staticmethod
    def conv(u, k):
        L = u.shape[-1]
        return torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]

    def forward(self, x):  # [B, L, d]
        L = x.shape[1]
        k1 = self.k1[:, :L]
        if self.scale_by_length:
            k1 = k1 / k1.abs().sum(-1, keepdim=True)  # normalized over the length: not a prefix
        h = self.conv(x.transpose(1, 2), k1).transpose(1, 2)
        h = torch.tanh(self.lin(h))
        return self.conv(h.transpose(1, 2), self.k2[:, :L]).transpose(1, 2)


def _lowered(model, d=6, check=True):
    return lower(model, torch.randn(2, 9, d), check=check)


def test_fold_filters_evaluates_filters_at_max_len():
    m = ExplicitConv().eval()
    low = _lowered(m)
    assert low.streamable
    folded = fold_filters(low.gm, low.analysis, lambda L: torch.zeros(1, L, 6), 40)
    convs = nodes_of(low.gm, LONG_CONV)
    assert len(convs) == 2 and set(folded.filters) == {n.name for n in convs}
    want = [m.k1.detach()[:, :40], m.k2.detach()[:, :40]]
    for g in folded.filters.values():  # each folded filter is one of the parameters, cut to max_len
        assert g.shape == (6, 40)
        assert min((g - w).abs().max().item() for w in want) < 1e-6
    assert folded.checked_lengths == [2, 3, 7]
    assert all(n.op in ("call_function", "get_attr") for n in frontier(low.gm, low.analysis))


def test_fold_filters_refuses_length_dependent_filter():
    m = ExplicitConv(scale_by_length=True).eval()
    low = _lowered(m, check=False)  # skip the front end's own global check: test this pass alone
    folded = fold_filters(low.gm, low.analysis, lambda L: torch.zeros(1, L, 6), 40)
    assert folded.refusals and "prefix consistent" in folded.refusals[0].reason  # data, not an exception
    assert folded.refusals[0].op and folded.refusals[0].source
    with pytest.raises(UnsupportedModelError, match="prefix consistent"):
        lcsm_compile.session(m, torch.zeros(1, 4, 6), max_len=40)


def test_groups_dag_and_partition():
    e = zoo.get("safari_hyena_o3")  # 2 layers x 2 long convs, one short conv per layer
    low = lower(e.build(), e.make_input(2, 9))
    plan = make_plan(low, 32, 3, until="groups").groups
    longs = [n.name for n in nodes_of(low.gm, LONG_CONV)]
    shorts = [n.name for n in nodes_of(low.gm, SHORT_CONV)]
    assert set(plan.dag.nodes) == set(longs) | set(shorts)
    assert nx.is_directed_acyclic_graph(plan.dag)
    # the chain: short -> long -> long in each layer, layers in sequence
    depths = sorted(plan.depth[n] for n in longs)
    assert depths == sorted(set(depths)) and len(depths) == 4
    assert len(plan.groups) == 1
    g = plan.groups[0]
    assert g.members == longs and g.batch == 3
    assert [g.slices[m].start for m in longs] == sorted(g.slices[m].start for m in longs)
    shapes = record_shapes(low.gm, e.make_input(3, 2))
    assert g.channels == sum(shapes[m][1] for m in longs)
    # a different batch for one member splits the group
    shapes[longs[0]] = ((6,),) + shapes[longs[0]][1:]
    assert len(plan_groups(low.gm, shapes).groups) == 2


def test_step_graph_has_no_filter_work():
    e = zoo.get("safari_hyena_o2")
    low = lower(e.build(), e.make_input(2, 9))
    folded = fold_filters(low.gm, low.analysis, lambda L: torch.zeros(1, L, dtype=torch.long), 32)

    step = build_step_graph(low.gm, folded)
    with pytest.raises(RuntimeError, match="not bound"):  # a plan holds no state: slots are unbound
        step(torch.zeros(2, 1, dtype=torch.long), torch.tensor([5]))

    class Fake:
        def __init__(self):
            self.calls = 0

        def step(self, u):
            self.calls += 1
            return u

        def prefill(self, u):
            return u

    binds = {n.name: Fake() for n in low.gm.graph.nodes if n.op == "call_function"
             and n.target in (LONG_CONV, SHORT_CONV)}
    step = bind_slots(step, binds)
    targets = [str(n.target) for n in step.graph.nodes if n.op == "call_function"]
    assert not any("fft" in t or "lcsm." in t for t in targets), targets
    assert [n.name for n in step.graph.nodes if n.op == "placeholder"][-1] == "pos"
    out = step(torch.zeros(2, 1, dtype=torch.long), torch.tensor([5]))
    assert out[0].shape[:2] == (2, 1)
    assert all(b.calls == 1 for b in binds.values())
