"""Fixed-length filters stream past their length (Evo 2-style medium filters, H3 shift kernels).

A filter of N taps cut with ``h[:, :L]`` / ``[:min(N, L)]`` (and zero-padded when ``N < L``) is
zero beyond N, so the model is a causal convolution at every length; its captured graph holds
only up to N (tracing guards on ``L <= N``). A session past N uses the graph captured past N,
with the first graph for the prompts it holds for, checked across the boundary.
"""

from __future__ import annotations

import pytest
import torch

import lcsm_compile
from examples.idioms.multirange import build_multirange, build_shift

from ._golden import assert_golden, golden_forward, tensors

L_TOTAL = 200


TAPS = {"multirange": 128, "shift": 16}


@pytest.fixture(scope="module", params=["multirange", "shift"])
def model(request):
    m = {"multirange": build_multirange, "shift": build_shift}[request.param]()
    m.taps = TAPS[request.param]
    return m


def _teacher_force(sess, x, P):
    outs = [tensors(sess.prefill(x[:, :P]))]
    for t in range(P, x.shape[1]):
        outs.append(tensors(sess.step(x[:, t:t + 1])))
    return [torch.cat([o[i] for o in outs], 1) for i in range(len(outs[0]))]


def test_the_first_graph_holds_only_up_to_the_filter_length(model):
    rep = lcsm_compile.explain(model, torch.randint(0, 32, (2, 9)))
    taps = model.taps
    assert rep.streamable and rep.valid_range[1] is not None and rep.valid_range[1] <= taps


@pytest.mark.parametrize("P", [0, 5, 16, 140])  # 16: between the two graphs of the shift model
def test_session_streams_past_the_filter_length(model, P):
    x = torch.randint(0, 32, (2, L_TOTAL))
    sess = lcsm_compile.session(model, x[:, :9], max_len=L_TOTAL)
    got = _teacher_force(sess, x, P)
    with torch.no_grad():
        ref = tensors(model(x))
    assert_golden(got, ref, golden_forward(model, x), what=f"P={P}")


def test_generate_crosses_the_filter_length(model):
    ids = torch.randint(0, 32, (1, 10))
    n = model.taps - 10 + 4  # a few tokens past the filter length
    out = lcsm_compile.generate(model, ids, max_new_tokens=n)
    seq = ids
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat([seq, model(seq)[:, -1:].argmax(-1)], 1)
    assert torch.equal(out, seq)


def test_compiled_forward_is_exact_on_both_sides(model):
    backend = lcsm_compile.LcsmBackend()
    f = torch.compile(model, backend=backend)
    for L in (40, 200):
        x = torch.randint(0, 32, (2, L))
        assert_golden(tensors(f(x)), tensors(model(x)), golden_forward(model, x), what=f"L={L}")
    assert backend.reports and all(r.mode == "lcsm" for r in backend.reports), [r.reason for r in backend.reports]
