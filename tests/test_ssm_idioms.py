"""SSM kernels written with ``opt_einsum.contract`` (S4D, H3; examples/idioms/ssm.py).

Capture routes plain ``contract(eq, *tensors)`` calls to ``torch.einsum`` while it traces
(``lcsm_compile.capture.helpers.routed_contract``), so these models capture with a symbolic
length, and the pipeline checks such a graph equal to the eager model. Here: the patch is
scoped (restored after a capture, a failed one included), unusual calls go to the original,
a routed graph that differs from the model is refused, and the models stream: explain finds
their long convs (sources in ssm.py), sessions teacher-force exactly, greedy generate equals
the naive loop, the compiled forward is exact; the two-sided S4D is refused as non-causal.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

import lcsm_compile
from lcsm_compile import UnsupportedModelError
from lcsm_compile.capture import capture_model, find_logits, routed_contract
from lcsm_compile.capture import helpers

from examples.idioms import get, output_tensors, ssm

from ._golden import assert_golden, golden_forward, tensors

opt_einsum = pytest.importorskip("opt_einsum")
from opt_einsum import contract  # noqa: E402 - a module global bound at import, like user code

STREAMABLE = ["s4d_contract", "h3_contract"]
SSM_FILE = os.path.join("examples", "idioms", "ssm.py")
L_TOTAL = 70
MAX_LEN = 80


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def explained():
    cache = {}

    def explain(name):
        if name not in cache:
            e = get(name)
            m = e.build()
            cache[name] = (e, m, lcsm_compile.explain(m, e.make_input(1, 6)))
        return cache[name]
    return explain


def _in_ssm(source):
    return source is not None and source.split(":")[0].endswith(SSM_FILE)


# ----------------------------------------------------------------------------- the routing
def _originals():
    return opt_einsum.contract, ssm.contract, sys.modules[__name__].contract


def test_capture_restores_the_patch(explained):
    orig = opt_einsum.contract
    assert ssm.contract is orig and ssm.oe.contract is orig
    for name, eqs in (("s4d_contract", {"hn,hnl->hl"}), ("h3_contract", {"hn,hnl->hl", "hn,nl->hl"})):
        cap = explained(name)[2].lowered.captured  # lower() -> capture_model
        assert cap.gm is not None and cap.error is None and cap.symbolic
        assert {eq for eq, _ in cap.routed} == eqs
        assert all(_in_ssm(src) for _, src in cap.routed)  # the user's line of each call
        assert _originals() == (orig, orig, orig)


class _Broken(torch.nn.Module):
    """Calls ``contract`` through this test module's global, then fails while tracing."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4, 4))

    def forward(self, x):  # [B, L, 4]
        y = contract("bld,de->ble", x, self.w)
        if y.shape[1] > 3:
            raise RuntimeError("broken model")
        return y


def test_failed_capture_restores_the_patch():
    orig = opt_einsum.contract
    cap = capture_model(_Broken(), torch.randn(2, 6, 4))
    assert cap.gm is None and cap.error
    assert _originals() == (orig, orig, orig)


def test_routing_is_scoped_and_covers_module_globals():
    orig = opt_einsum.contract
    model = _Broken()
    with pytest.raises(RuntimeError, match="inside"):
        with routed_contract(model) as used:
            assert opt_einsum.contract is not orig and contract is opt_einsum.contract
            assert ssm.contract is orig  # not a module of this model
            a, b = torch.randn(3, 4), torch.randn(4, 5)
            torch.testing.assert_close(contract("ij,jk->ik", a, b), a @ b)
            torch.testing.assert_close(opt_einsum.contract("ij,jk->ik", a, b, backend="torch",
                                                           optimize="greedy"), a @ b)
            assert [eq for eq, _ in used] == ["ij,jk->ik", "ij,jk->ik"]
            assert all(src.split(":")[0].endswith("test_ssm_idioms.py") for _, src in used)
            raise RuntimeError("inside")
    assert _originals() == (orig, orig, orig)
    with routed_contract(ssm.build_h3()):
        assert ssm.contract is opt_einsum.contract is not orig
    assert _originals() == (orig, orig, orig)


def test_unusual_calls_go_to_the_original():
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    expr = opt_einsum.contract_expression("ij,jk->ik", (3, 4), (4, 5))
    with routed_contract() as used:
        out = torch.empty(3, 5)
        opt_einsum.contract("ij,jk->ik", a, b, out=out)  # out=: not routed
        torch.testing.assert_close(out, a @ b)
        torch.testing.assert_close(opt_einsum.contract(a, [0, 1], b, [1, 2], [0, 2]), a @ b)  # interleaved
        torch.testing.assert_close(expr(a, b), a @ b)  # a contract_expression object
        np_out = opt_einsum.contract("ij,jk->ik", a.numpy(), b.numpy())  # not tensors
        torch.testing.assert_close(torch.from_numpy(np_out), a @ b)
        assert used == []


def test_without_opt_einsum_nothing_is_patched(monkeypatch):
    orig = opt_einsum.contract
    monkeypatch.setitem(sys.modules, "opt_einsum", None)  # import opt_einsum -> ImportError
    assert helpers.opt_einsum_contract() is None
    with routed_contract(ssm.build_s4d()) as used:
        assert ssm.contract is orig
    assert used == []


def test_a_routed_graph_that_differs_from_the_model_is_refused(monkeypatch):
    class SkewedTorch:  # the routing module's torch, with an einsum that is off by 2x
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def einsum(*args):
            return 2 * torch.einsum(*args)

    monkeypatch.setattr(helpers, "torch", SkewedTorch())
    e = get("s4d_contract")
    rep = lcsm_compile.explain(e.build(), e.make_input(1, 6))
    assert not rep.streamable
    bad = [r for r in rep.refusals if r.op == "opt_einsum.contract"]
    assert bad and "does not equal the model" in bad[0].reason, rep.refusals
    assert _in_ssm(bad[0].source), bad[0].source
    assert opt_einsum.contract is ssm.contract


# ----------------------------------------------------------------------------- explain
@pytest.mark.parametrize("name", STREAMABLE)
def test_explain_finds_the_long_convs(name, explained):
    e, model, rep = explained(name)
    assert rep.streamable, str(rep)
    assert (len(rep.long_convs), len(rep.short_convs)) == (e.n_long, e.n_short), str(rep)
    for r in rep.long_convs:
        assert _in_ssm(r.source), r.source
        assert r.verified.startswith("verified") and r.max_err < 1e-4
    assert rep.valid_range[1] is None
    assert rep.lowered.captured.routed


def test_bidirectional_s4d_is_refused(explained):
    e, model, rep = explained("s4d_bidirectional")
    assert not rep.streamable
    hits = [r for r in rep.refusals if "non-causal" in r.reason]
    assert hits, str(rep)
    for r in rep.refusals:
        assert _in_ssm(r.source), r  # the user's line, never inside opt_einsum
    with pytest.raises(UnsupportedModelError) as info:
        lcsm_compile.session(model, e.make_input(1, 6), max_len=32)
    assert "non-causal" in str(info.value)


# ----------------------------------------------------------------------------- streaming
def _teacher_force(sess, x, P):
    outs = [tensors(sess.prefill(x[:, :P]))]
    for t in range(P, x.shape[1]):
        outs.append(tensors(sess.step(x[:, t:t + 1])))
    return [torch.cat([o[i] for o in outs], 1) for i in range(len(outs[0]))]


@pytest.fixture(scope="module", params=STREAMABLE)
def entry_model(request):
    e = get(request.param)
    return e, e.build()


@pytest.mark.parametrize("P", [0, 1, 37])
def test_teacher_forcing(entry_model, P):
    e, model = entry_model
    x = e.make_input(2, L_TOTAL)
    with torch.no_grad():
        ref = tensors(model(x))
    sess = lcsm_compile.session(model, x[:, :max(P, 2)], max_len=MAX_LEN)
    got = _teacher_force(sess, x, P)
    assert sess.position == L_TOTAL
    assert_golden(got, ref, golden_forward(model, x), what=f"{e.name} P={P}")


def _naive_greedy(model, ids, n):
    out = ids
    for _ in range(n):
        with torch.no_grad():
            logits = find_logits(model(out))
        out = torch.cat([out, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return out


def test_greedy_generate_equals_the_naive_loop(entry_model):
    e, model = entry_model
    ids = e.make_input(2, 5)
    got = lcsm_compile.generate(model, ids, max_new_tokens=8, progress=False)
    assert got.shape == (2, 13) and torch.equal(got, _naive_greedy(model, ids, 8))


# ----------------------------------------------------------------------------- backend
@pytest.fixture(scope="module")
def compiled_runs():
    cache = {}

    def run(name):
        if name not in cache:
            e = get(name)
            m = e.build()
            backend = lcsm_compile.LcsmBackend()
            f = torch.compile(m, backend=backend)
            results = []
            for L in (9, 16):  # static, then symbolic L
                x = e.make_input(2, L)
                results.append((L, output_tensors(f(x)), output_tensors(m(x)), golden_forward(m, x)))
            cache[name] = (results, list(backend.reports))
        return cache[name]
    return run


@pytest.mark.parametrize("name", STREAMABLE)
def test_compiled_forward_is_exact(name, compiled_runs):
    results, reports = compiled_runs(name)
    assert reports
    for L, got, ref, gold in results:
        assert_golden(got, ref, gold, what=f"{name} L={L}")


@pytest.mark.parametrize("name", STREAMABLE)
def test_compiled_forward_is_rewritten(name, compiled_runs):
    _, reports = compiled_runs(name)
    assert all(r.mode == "lcsm" for r in reports), [(r.mode, r.reason) for r in reports]
    assert all(r.long_convs == get(name).n_long for r in reports)


def test_dynamo_routing_keeps_every_contract_call_exact():
    """Plain calls are traced as torch.einsum; other forms (interleaved operands) still run
    opt_einsum itself, with no recursion into the substitute."""
    import opt_einsum

    import lcsm_compile.backend  # noqa: F401 - registers the routing
    from lcsm_compile.capture.helpers import route_contract_in_dynamo

    assert route_contract_in_dynamo()

    def f(a, b):
        x = opt_einsum.contract("ij,jk->ik", a, b)
        y = opt_einsum.contract(a, [0, 1], b, [1, 2], [0, 2])
        return x + y

    a, b = torch.randn(3, 4), torch.randn(4, 5)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(f, backend="eager")(a, b), f(a, b))
