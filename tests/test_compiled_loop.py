"""The compiled model streams a user's own loop: ``fast(ids)`` on a growing prefix through
``torch.compile(model, backend="lcsm")`` runs only the new positions, and every call is exact
against the eager model (teacher forcing through the loop)."""

from __future__ import annotations

import pytest
import torch

from lcsm_compile import incremental
from lcsm_compile.backend import LcsmBackend
from lcsm_compile.models import HyenaLM

from examples.idioms import get, output_tensors

TOL = 1e-4


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles the same forward code again: start from an empty dynamo cache (its
    recompile limit would otherwise send later tests to eager)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def _compiled(model, **options):
    be = LcsmBackend()
    return torch.compile(model, backend=be, options=options or None), be


def _streamed(be):
    reps = [r for r in be.reports if r.calls]
    assert reps, [(r.mode, r.streaming) for r in be.reports]
    # the graph that ran the loop (a view of a longer input and the full input itself may be
    # two graphs: dynamo guards on contiguity)
    return max(reps, key=lambda r: r.calls["steps"] + r.calls["full"])


def _loop(fast, model, x_full, P, check_every=1):
    """Call ``fast`` on x[:, :L] for L = P .. end, each output checked against eager."""
    outs = []
    for i, L in enumerate(range(P, x_full.shape[1] + 1)):
        x = x_full[:, :L]
        got = fast(x)
        if i % check_every == 0 or L == x_full.shape[1]:
            with torch.no_grad():
                ref = model(x)
            for g, r in zip(output_tensors(got), output_tensors(ref)):
                assert g.shape == r.shape, (L, g.shape, r.shape)
                assert rel(g, r) <= TOL, (L, rel(g, r))
        outs.append(got)
    return outs


@pytest.mark.parametrize("B", [1, 2])
def test_greedy_loop_streams_and_is_exact(B):
    torch.manual_seed(0)
    model = HyenaLM(vocab=32, d_model=16, n_layers=2, max_len=512).eval()
    fast, be = _compiled(model)
    ids = torch.randint(0, 32, (B, 5))
    for _ in range(30):
        logits = fast(ids)
        with torch.no_grad():
            ref = model(ids)
        assert logits.shape == ref.shape and rel(logits, ref) <= TOL
        ids = torch.cat([ids, ref[:, -1:].argmax(-1)], 1)
    rep = _streamed(be)
    assert rep.streaming.startswith("calls stream")
    assert rep.calls["steps"] >= 25 and rep.calls["made"] == 1, rep.calls


def test_compiled_step_program_streams_batch_one():
    """A [1, 1] slice of the growing input keeps its row stride: the stream hands the session a
    compact copy, so a compiled step program does not recompile for every length (dynamo's
    recompile limit would end the stream after 8 calls)."""
    torch.manual_seed(8)
    model = HyenaLM(vocab=32, d_model=16, n_layers=2, max_len=512).eval()
    fast, be = _compiled(model, compile_step=True)
    ids = torch.randint(0, 32, (1, 4))
    for i in range(20):  # the user's loop: a new, longer tensor every call
        logits = fast(ids)
        if i % 5 == 0:
            with torch.no_grad():
                assert rel(logits, model(ids)) <= TOL
        ids = torch.cat([ids, logits[:, -1:].argmax(-1)], 1)
    rep = _streamed(be)
    assert rep.streaming.startswith("calls stream") and rep.calls["steps"] >= 17, (rep.streaming, rep.calls)


@pytest.mark.full_forward_inductor
def test_restarts_on_calls_that_do_not_extend():
    torch.manual_seed(1)
    model = HyenaLM(vocab=32, d_model=16, n_layers=2, max_len=512).eval()
    fast, be = _compiled(model)
    x = torch.randint(0, 32, (1, 40))
    _loop(fast, model, x[:, :20], 6)
    calls = dict(_streamed(be).calls)
    other = x.clone()
    other[:, 3] = (other[:, 3] + 1) % 32  # a different prefix
    for inp in (x[:, :12], other[:, :25], other[:, :26], x[:, :7], x[:, :8], x[:, :8]):  # shorter, other, repeat
        with torch.no_grad():
            ref = model(inp)
        assert rel(fast(inp), ref) <= TOL
    after = _streamed(be).calls
    assert after["full"] >= calls["full"] + 3 and after["made"] == 1, (calls, after)
    # from its second full forward the graph runs compiled by Inductor: those calls were exact too
    assert "compiled by Inductor" in _streamed(be).full_forward, _streamed(be).full_forward


def test_sessions_grow_past_their_length(monkeypatch):
    monkeypatch.setattr(incremental, "MIN_SESSION", 8)
    torch.manual_seed(2)
    model = HyenaLM(vocab=32, d_model=16, n_layers=2, max_len=512).eval()
    fast, be = _compiled(model)
    _loop(fast, model, torch.randint(0, 32, (2, 40)), 4, check_every=3)
    assert _streamed(be).calls["grown"] >= 1, _streamed(be).calls


def test_max_len_option_caps_the_stream():
    torch.manual_seed(3)
    model = HyenaLM(vocab=32, d_model=16, n_layers=2, max_len=512).eval()
    fast, be = _compiled(model, max_len=24)
    _loop(fast, model, torch.randint(0, 32, (1, 30)), 4, check_every=2)
    c = _streamed(be).calls
    assert c["full"] >= 6 and c["steps"] >= 5, c  # past 24 positions: full forwards


def test_outputs_already_returned_are_never_overwritten():
    torch.manual_seed(4)
    model = HyenaLM(vocab=32, d_model=16, n_layers=2, max_len=512).eval()
    fast, _ = _compiled(model)
    x = torch.randint(0, 32, (1, 30))
    outs = _loop(fast, model, x, 3, check_every=100)
    for L, o in zip(range(3, 31), outs):
        with torch.no_grad():
            assert rel(o, model(x[:, :L])) <= TOL, L


@pytest.mark.parametrize("name", ["out_tuple", "out_dict", "out_object"])
def test_structured_outputs_stream(name):
    e = get(name)
    model = e.build()
    fast, be = _compiled(model)
    _loop(fast, model, e.make_input(2, 14), 3, check_every=4)
    assert _streamed(be).calls["steps"] >= 8


def test_continuous_inputs_stream():
    from examples.idioms import streamable
    e = next(z for z in streamable() if z.input_kind == "cont" and z.output == "tensor")
    model = e.build()
    fast, be = _compiled(model)
    _loop(fast, model, e.make_input(2, 18), 3, check_every=3)
    assert _streamed(be).calls["steps"] >= 10, (e.name, _streamed(be).calls)


def test_weight_change_restarts_exactly():
    torch.manual_seed(5)
    model = HyenaLM(vocab=32, d_model=16, n_layers=2, max_len=512).eval()
    fast, be = _compiled(model)
    x = torch.randint(0, 32, (1, 30))
    _loop(fast, model, x[:, :15], 4, check_every=100)
    with torch.no_grad():
        model.head.weight.mul_(1.5)
        for p in model.blocks[0].parameters():
            p.add_(0.01)
    _loop(fast, model, x, 16, check_every=1)


def test_weight_data_swap_restarts_exactly():
    """``p.data = t`` keeps the version counter: the data pointer tells the streams."""
    torch.manual_seed(7)
    model = HyenaLM(vocab=32, d_model=16, n_layers=2, max_len=512).eval()
    fast, be = _compiled(model)
    x = torch.randint(0, 32, (1, 30))
    _loop(fast, model, x[:, :15], 4, check_every=100)
    made = _streamed(be).calls["made"]
    for p in model.parameters():
        p.data = p.data * 1.25
    _loop(fast, model, x, 16, check_every=1)
    assert _streamed(be).calls["made"] == made + 1, _streamed(be).calls


def test_stream_option_off_and_unknown_options():
    torch.manual_seed(6)
    model = HyenaLM(vocab=32, d_model=16, n_layers=2, max_len=512).eval()
    fast, be = _compiled(model, stream=False)
    _loop(fast, model, torch.randint(0, 32, (1, 9)), 4)
    assert not any(r.calls for r in be.reports)
    assert any("'stream': False" in r.streaming for r in be.reports)
    bad = torch.compile(model, backend=LcsmBackend(), options={"max_lenn": 8})
    with pytest.raises(Exception, match="max_lenn"):
        bad(torch.randint(0, 32, (1, 9)))


def test_unstreamable_model_says_why_and_stays_exact():
    e = get("neg_softmax_time")
    model = e.build()
    fast, be = _compiled(model)
    _loop(fast, model, e.make_input(1, 12), 4)
    assert not any(r.calls for r in be.reports)
    assert any(r.streaming.startswith("calls do not stream") and "softmax" in r.streaming for r in be.reports), \
        [r.streaming for r in be.reports]


def test_hugging_face_generate_streams_with_identical_tokens():
    pytest.importorskip("transformers")
    from examples import hf_generate

    res = hf_generate.main(["--new-tokens", "12", "--prompt-len", "5", "--batch", "2"])
    for kind in ("greedy", "sampled"):
        assert res[kind]["identical"]
        assert any(s.startswith("calls stream") for s in res[kind]["streams"]), res[kind]


def test_graph_break_model_streams_every_graph():
    """After a graph break the next graph receives the first graph's outputs: streamed, their
    old positions never change, so that graph's calls extend too and stream."""
    e = get("safari_hyena_graph_break")
    model = e.build()
    fast, be = _compiled(model)
    _loop(fast, model, e.make_input(2, 20), 4, check_every=3)
    streamed = [r for r in be.reports if r.calls.get("steps", 0) >= 10]
    assert len(streamed) >= 2, [(r.streaming, r.calls) for r in be.reports]


def test_full_forward_filters_follow_the_weights():
    """The full forward keeps its filters per input shape and parameter version: an in-place
    change of a filter parameter is seen by the next call."""
    e = get("safari_hyena_o2")
    model = e.build()
    fast, _ = _compiled(model, stream=False)
    x = e.make_input(2, 16)
    for _ in range(2):
        fast(x)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(1.1)
        ref = model(x)
    assert rel(fast(x), ref) <= TOL
