"""Streaming sessions and generate(): teacher forcing against the eager forward.

Teacher forcing: prefill(x[:, :P]) + step(x[:, t]) for t >= P must equal model(x) at every
position, checked with the golden helper (tests/_golden.py): the streamed outputs' error
against the model's fp64 forward within 4x the eager fp32 forward's error + 2e-6 (relative to
max |golden|); bf16 (models that run in bf16 on the CPU) 5e-2 relative against the eager bf16
forward.
"""

import pytest
import torch

import lcsm_compile
from lcsm_compile import SessionError, UnsupportedModelError
from lcsm_compile.capture import find_logits, flatten_output
from examples import idioms as zoo

from ._golden import assert_golden, golden_forward

L_TOTAL = 70
MAX_LEN = 80
STREAMABLE = zoo.streamable()


def tensors(out):
    return [t for t in flatten_output(out)[0] if isinstance(t, torch.Tensor)]


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def teacher_force(sess, x, P):
    outs = [tensors(sess.prefill(x[:, :P]))]
    for t in range(P, x.shape[1]):
        outs.append(tensors(sess.step(x[:, t:t + 1])))
    return [torch.cat([o[i] for o in outs], 1) for i in range(len(outs[0]))]


@pytest.fixture(scope="module", params=STREAMABLE, ids=[e.name for e in STREAMABLE])
def entry_model(request):
    e = request.param
    return e, e.build()


@pytest.mark.parametrize("P,B,engine_options", [(0, 1, None), (1, 3, {"block": 2, "fft_from": 4}),
                                                (37, 1, {"block": 1, "fft_from": 2}), (64, 3, None)])
def test_teacher_forcing(entry_model, P, B, engine_options):
    e, model = entry_model
    x = e.make_input(B, L_TOTAL)
    with torch.no_grad():
        ref = tensors(model(x))
    sess = lcsm_compile.session(model, x[:, :max(P, 2)], max_len=MAX_LEN, engine_options=engine_options)
    got = teacher_force(sess, x, P)
    assert sess.position == L_TOTAL
    assert_golden(got, ref, golden_forward(model, x), what=e.name)


BF16 = [e for e in STREAMABLE if "bf16-ok" in e.tags]


@pytest.mark.parametrize("e", BF16, ids=[e.name for e in BF16])
def test_teacher_forcing_bf16(e):
    model = e.build().to(torch.bfloat16)
    x = e.make_input(2, 40)
    if x.is_floating_point():
        x = x.bfloat16()
    with torch.no_grad():
        ref = tensors(model(x))
    sess = lcsm_compile.session(model, x[:, :7], max_len=48)
    got = teacher_force(sess, x, 7)
    for g, r in zip(got, ref):
        assert g.dtype == r.dtype
        assert rel(g, r) <= 5e-2, rel(g, r)


LMS = [zoo.get(n) for n in ("safari_hyena_o2", "learned_pos_embedding", "out_object")]


def naive_greedy(model, ids, n):
    out = ids
    for _ in range(n):
        with torch.no_grad():
            logits = find_logits(model(out))
        out = torch.cat([out, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return out


@pytest.mark.parametrize("e", LMS, ids=[e.name for e in LMS])
def test_greedy_generate_equals_naive_loop(e):
    model = e.build()
    ids = e.make_input(2, 5)
    got = lcsm_compile.generate(model, ids, max_new_tokens=25, progress=False)
    assert got.shape == (2, 30) and got.dtype == torch.long
    assert torch.equal(got, naive_greedy(model, ids, 25))


def test_sampling_options_and_eos():
    e = LMS[0]
    model = e.build()
    ids = e.make_input(3, 4)
    g1 = torch.Generator().manual_seed(1)
    a = lcsm_compile.generate(model, ids, 20, do_sample=True, temperature=0.8, top_k=5, top_p=0.9, generator=g1)
    g2 = torch.Generator().manual_seed(1)
    b = lcsm_compile.generate(model, ids, 20, do_sample=True, temperature=0.8, top_k=5, top_p=0.9, generator=g2)
    assert torch.equal(a, b)  # same generator seed, same tokens
    greedy = lcsm_compile.generate(model, ids, 20)
    top1 = lcsm_compile.generate(model, ids, 20, do_sample=True, top_k=1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(top1, greedy)
    eos = int(greedy[0, 6])
    out = lcsm_compile.generate(model, ids, 20, eos_token_id=eos)
    for row in out:
        hits = (row[4:] == eos).nonzero()
        if len(hits):
            assert bool((row[4 + hits[0, 0]:] == eos).all())
    assert out.shape[1] <= 24


def test_state_dict_resume_mid_generation():
    e = zoo.get("safari_hyena_o2")
    model = e.build()
    x = e.make_input(2, 50)
    s1 = lcsm_compile.session(model, x[:, :10], max_len=64)
    s1.prefill(x[:, :10])
    for t in range(10, 25):
        s1.step(x[:, t:t + 1])
    state = s1.state_dict()
    s2 = lcsm_compile.session(model, x[:, :10], max_len=64)
    s2.load_state_dict(state)
    assert s2.position == 25
    for t in range(25, 50):
        a, b = tensors(s1.step(x[:, t:t + 1]))[0], tensors(s2.step(x[:, t:t + 1]))[0]
        assert torch.equal(a, b)


def test_bad_inputs_leave_session_usable():
    e = zoo.get("learned_pos_embedding")
    model = e.build()
    x = e.make_input(2, 30)
    with torch.no_grad():
        ref = tensors(model(x))[0]
    sess = lcsm_compile.session(model, x[:, :5], max_len=30)
    with pytest.raises(SessionError, match="prefill"):
        sess.step(x[:, :1])
    sess.prefill(x[:, :5])
    with pytest.raises(SessionError, match="prefill must come first"):
        sess.prefill(x[:, :5])
    with pytest.raises(SessionError, match="batch"):
        sess.step(x[:1, 5:6])
    with pytest.raises(SessionError, match="1 position"):
        sess.step(x[:, 5:7])
    with pytest.raises(SessionError, match="integer"):
        sess.step(x[:, 5:6].float())
    with pytest.raises(SessionError, match="meta"):
        sess.step(x[:, 5:6].to("meta"))
    outs = [tensors(sess.step(x[:, t:t + 1]))[0] for t in range(5, 30)]
    assert rel(torch.cat(outs, 1), ref[:, 5:]) <= 1e-4
    with pytest.raises(SessionError, match="max_len"):
        sess.step(x[:, :1])
    sess.reset()
    assert sess.position == 0
    y = tensors(sess.prefill(x))[0]
    assert rel(y, ref) <= 1e-4


def test_nan_input_reported_state_kept():
    e = zoo.get("hyenadna_cont")
    model = e.build()
    x = e.make_input(1, 20)
    with torch.no_grad():
        ref = tensors(model(x))[0]
    sess = lcsm_compile.session(model, x[:, :4], max_len=20)
    sess.prefill(x[:, :4])
    bad = x[:, 4:5].clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(SessionError, match="NaN"):
        sess.step(bad)
    with pytest.raises(SessionError, match="dtype"):
        sess.step(x[:, 4:5].double())
    outs = [tensors(sess.step(x[:, t:t + 1]))[0] for t in range(4, 20)]
    assert rel(torch.cat(outs, 1), ref[:, 4:]) <= 1e-4


NEG = zoo.refused()


@pytest.mark.parametrize("e", NEG, ids=[e.name for e in NEG])
def test_unstreamable_models_refused_at_creation(e):
    model = e.build()
    x = e.make_input(1, 16)
    with pytest.raises(UnsupportedModelError) as info:
        lcsm_compile.session(model, x, max_len=32)
    err = info.value
    assert isinstance(err, ValueError)
    assert e.refusal in str(err).lower()
    assert err.reason and (err.op or err.source)


def test_session_accepts_compiled_model_and_unknown_options():
    e = zoo.get("longconv_explicit_cf")
    model = e.build()
    compiled = torch.compile(model, backend="eager")
    x = e.make_input(1, 12)
    sess = lcsm_compile.session(compiled, x[:, :3], max_len=16)
    with torch.no_grad():
        ref = tensors(model(x))[0]
    assert rel(torch.cat(teacher_force(sess, x, 3), 1), ref) <= 1e-4
    with pytest.raises(TypeError, match="unknown option"):
        lcsm_compile.session(model, x, max_len=16, bogus=1)


def test_compiled_step_program_is_exact():
    """compile_step=True (Inductor on the step program, members opaque) gives the same outputs."""
    e = zoo.get("learned_pos_embedding")
    model = e.build()
    x = e.make_input(2, 24)
    with torch.no_grad():
        ref = tensors(model(x))
    sess = lcsm_compile.session(model, x[:, :6], max_len=32, compile_step=True)
    got = teacher_force(sess, x, 6)
    for g, r in zip(got, ref):
        assert rel(g, r) <= 1e-4


@pytest.mark.parametrize("kernels", ["auto", "torch"])
def test_kernels_option(kernels):
    """Both kernel paths of the engine stream exactly; unknown kernel names are refused."""
    e = zoo.get("safari_hyena_o2")
    model = e.build()
    x = e.make_input(2, 40)
    with torch.no_grad():
        ref = tensors(model(x))
    sess = lcsm_compile.session(model, x[:, :5], max_len=48, kernels=kernels, engine_options={"block": 4, "fft_from": 8})
    if kernels == "torch":
        assert all(eng._nk is None for eng in sess.program.engines)
        assert "kernels='torch'" in sess.kernel_note and "kernels=" in repr(sess)
    for g, r in zip(teacher_force(sess, x, 5), ref):
        assert rel(g, r) <= 1e-4
    with pytest.raises(SessionError, match="kernels='triton' is not available"):
        lcsm_compile.session(model, x[:, :5], max_len=48, kernels="triton")
