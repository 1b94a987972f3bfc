"""time_axis: time dims from symbolic shapes and a class for every node."""

import pytest
import sympy
import torch

from lcsm_compile.capture import capture_model
from lcsm_compile.passes.time_axis import NodeClass, TimeAxis, classify, data_dependent

from ._frontend_models import FFTConvCF, Negative, PosEmb, ids

L = sympy.Symbol("s0", integer=True, positive=True)
B = sympy.Symbol("s1", integer=True, positive=True)


def test_time_axis_sizes():
    ta = TimeAxis(L, B)
    assert ta.is_time(L) and not ta.is_time(2 * L)
    assert ta.has_time(B * L) and not ta.is_fft(B * L)  # merged batch*time (a Linear's view)
    assert ta.is_fft(2 * L) and ta.is_fft(L + 1) and ta.is_fft(2 * L - 1)
    assert not ta.has_time(sympy.Integer(7)) and not ta.has_time(B)
    assert ta.is_time(sympy.Min(L, 256)) and ta.min_bounds(sympy.Min(L, 256)) == {256}  # min(L, l_max) reads as L
    assert ta == TimeAxis(L, B)  # reading an expression never changes the analysis
    static = TimeAxis(sympy.Integer(9))
    assert static.is_time(sympy.Integer(9)) and not static.has_time(sympy.Integer(8))


def _classified(model, x):
    cap = capture_model(model, x)
    ta = TimeAxis(cap.time_symbol, cap.batch_symbol)
    return cap, classify(cap.gm, ta, [p.name for p in cap.data_inputs])


def _by_target(cap, an, target):
    return [an[n] for n in cap.gm.graph.nodes if n.target == target]


def test_classes_of_a_plain_model():
    aten = torch.ops.aten
    cap, an = _classified(PosEmb().eval(), ids(2, 6, 10))
    # arange(L) feeding position embeddings is a time source; the embedding is per position
    assert all(i.cls == NodeClass.TIME_SOURCE for i in _by_target(cap, an, aten.arange.start_step))
    embs = _by_target(cap, an, aten.embedding.default)
    assert embs and all(i.cls == NodeClass.POINTWISE and i.time_dim == 0 or i.time_dim == 1 for i in embs)
    # the transpose to channel-first is followed: time is dim 2 after permute [0, 2, 1]
    perms = [(n, an[n]) for n in cap.gm.graph.nodes if n.target == aten.permute.default]
    assert any(i.time_dim == 2 for _, i in perms) and any(i.time_dim == 1 for _, i in perms)
    # the linear head works on a [B*L, d] view: time merged into dim 0, still per position
    mms = _by_target(cap, an, aten.addmm.default) + _by_target(cap, an, aten.mm.default)
    assert mms and all(i.cls == NodeClass.POINTWISE and i.time_dim == 0 for i in mms)
    # parameters are time invariant; the FFT conv is not yet rewritten, so it is unsupported here
    assert all(an[n].cls == NodeClass.TIME_INVARIANT for n in cap.gm.graph.nodes if n.op == "get_attr")
    assert any(i.cls == NodeClass.UNSUPPORTED for i in _by_target(cap, an, aten._fft_r2c.default))


def test_data_dependence_ignores_sizes():
    cap = capture_model(FFTConvCF().eval(), ids(2, 6, 11))
    dep = data_dependent(cap.gm, [cap.data_inputs[0].name])
    for n in cap.gm.graph.nodes:
        if n.target == torch.ops.aten.sym_size.int:
            assert n.name not in dep
        if n.op == "get_attr":
            assert n.name not in dep


@pytest.mark.parametrize("kind,op,phrase", [
    ("softmax", torch.ops.aten._softmax.default, "softmax over the time axis"),
    ("flip", torch.ops.aten.flip.default, "flips the time axis"),
    ("shift", torch.ops.aten.slice.Tensor, "slices the time axis"),
    ("mean", torch.ops.aten.mean.dim, "averages over the time axis"),
])
def test_non_causal_ops_are_unsupported_with_a_reason(kind, op, phrase):
    cap, an = _classified(Negative(kind).eval(), ids(2, 7, 8))
    infos = [i for i in _by_target(cap, an, op) if i.cls == NodeClass.UNSUPPORTED]
    assert infos, kind
    assert any(phrase in i.reason for i in infos), [i.reason for i in infos]


def test_linspace_over_length_is_refused_at_capture():
    # linspace(0, 1, L) makes every position depend on L: dynamo specializes the length
    cap = capture_model(Negative("linspace").eval(), ids(2, 7, 8))
    assert cap.gm is None and "specialized" in cap.error[0]
