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


def test_fullgraph_step_teacher_forcing(entry_model):
    """Every example model: its step program under ``torch.compile(fullgraph=True)`` (dynamo
    with ``aot_eager``: the whole functionalization of the ops' mutations, no graph break)
    streams exactly like the model's forward (the lowering is the one the teacher-forcing test
    above made for this model; Inductor's own compile is tested on two models in
    test_step_program.py)."""
    e, model = entry_model
    x = e.make_input(3, L_TOTAL)
    with torch.no_grad():
        ref = tensors(model(x))
    sess = lcsm_compile.session(model, x[:, :2], max_len=MAX_LEN, engine_options={"block": 2, "fft_from": 4})
    first = tensors(sess.prefill(x[:, :1]))
    torch._dynamo.reset()
    fn = torch.compile(sess.program.step_gm, backend="aot_eager", fullgraph=True, dynamic=False)
    pos = torch.zeros(1, dtype=torch.long)
    outs = [first]
    with torch.no_grad():
        for t in range(1, L_TOTAL):
            pos.fill_(t)
            outs.append(list(fn(x[:, t:t + 1].contiguous(), pos)))
    torch._dynamo.reset()
    got = [torch.cat([o[i] for o in outs], 1) for i in range(len(ref))]
    assert all(g.position == L_TOTAL for g in sess.program.engines)  # (modal filters: no engine)
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


# ----------------------------------------------------------------------------- empty prompts

import collections  # noqa: E402 - used by the tests below (appended section)
import dataclasses  # noqa: E402

L_EMPTY = 20
MAX_LEN_EMPTY = 24  # one max_len for all the tests below: the lowering is cached per model and max_len
_BUILT: dict = {}


def built(name):
    """One model per zoo entry for the tests below (so its lowering is reused across them)."""
    if name not in _BUILT:
        _BUILT[name] = zoo.get(name).build()
    return _BUILT[name]


def assert_empty_like(got, ref, what=""):
    """``got`` is ``ref`` (the model's own output) with 0 positions: same structure (type names,
    non-tensor entries), dtypes, batch and non-time sizes; time dim 1 of length 0."""
    assert type(got).__name__ == type(ref).__name__, (what, type(got), type(ref))
    gl, rl = flatten_output(got)[0], flatten_output(ref)[0]
    assert len(gl) == len(rl), (what, len(gl), len(rl))
    for i, (g, r) in enumerate(zip(gl, rl)):
        if isinstance(r, torch.Tensor):
            assert isinstance(g, torch.Tensor), (what, i, type(g))
            assert g.dtype == r.dtype, (what, i, g.dtype, r.dtype)
            assert tuple(g.shape) == (r.shape[0], 0) + tuple(r.shape[2:]), (what, i, g.shape, r.shape)
        else:
            assert g == r, (what, i, g, r)


@pytest.mark.parametrize("B", [1, 3])
def test_empty_example_empty_prompt_then_steps(entry_model, B):
    """session(model, x[:, :0]) + prefill(x[:, :0]): 0-position outputs in the model's own
    structure; then one step per position equals the full forward at every position (every
    streamable zoo model; max_len=MAX_LEN shares the lowering with test_teacher_forcing)."""
    e, model = entry_model
    x = e.make_input(B, L_EMPTY)
    with torch.no_grad():
        ref_out = model(x)
    # a fixed engine plan (no block-size measurement): blocks of 4, FFT tiles from 8
    sess = lcsm_compile.session(model, x[:, :0], max_len=MAX_LEN, engine_options={"block": 4, "fft_from": 8})
    out0 = sess.prefill(x[:, :0])
    assert sess.position == 0
    assert_empty_like(out0, ref_out, e.name)
    with pytest.raises(SessionError, match="prefill must come first"):
        sess.prefill(x[:, :0])
    got = teacher_force_from(sess, x, [tensors(out0)], 0)
    assert sess.position == L_EMPTY
    assert_golden(got, tensors(ref_out), golden_forward(model, x), what=e.name)


def teacher_force_from(sess, x, outs, P):
    for t in range(P, x.shape[1]):
        outs.append(tensors(sess.step(x[:, t:t + 1])))
    return [torch.cat([o[i] for o in outs], 1) for i in range(len(outs[0]))]


@pytest.mark.parametrize("name,B", [("learned_pos_embedding", 1), ("out_nested_namedtuple", 3),
                                    ("hyenadna_cont", 3), ("modal_pow_cont", 1)])
@pytest.mark.parametrize("ex_len,P", [(0, 5), (5, 0), (1, 0), (1, 5), (5, 1)])
def test_example_length_independent_of_prompt_length(name, B, ex_len, P):
    """A session made from an example of any length (0 and 1 included) takes a prompt of any
    length (0 included), ids and continuous inputs alike."""
    e = zoo.get(name)
    model = built(name)
    x = e.make_input(B, L_EMPTY)
    with torch.no_grad():
        ref_out = model(x)
    ref = tensors(ref_out)
    sess = lcsm_compile.session(model, x[:, :ex_len], max_len=MAX_LEN_EMPTY, engine_options={"block": 2, "fft_from": 4})
    out0 = sess.prefill(x[:, :P])
    if P == 0:
        assert_empty_like(out0, ref_out, name)
    got = teacher_force_from(sess, x, [tensors(out0)], P)
    assert sess.position == L_EMPTY
    assert_golden(got, ref, golden_forward(model, x), what=f"{name} ex_len={ex_len} P={P}")
    # again after reset(), from an empty prompt: the same outputs
    sess.reset()
    out0 = sess.prefill(x[:, :0])
    assert sess.position == 0
    again = teacher_force_from(sess, x[:, :6], [tensors(out0)], 0)
    for a, g in zip(again, got):
        assert a.shape[1] == 6
        assert rel(a, g[:, :6]) <= 1e-5


def test_generate_from_empty_prompt_is_a_clear_error():
    e = zoo.get("out_nested_namedtuple")
    model = built(e.name)
    ids = e.make_input(2, 5)
    with pytest.raises(SessionError, match="no logits to sample the first token"):
        lcsm_compile.generate(model, ids[:, :0], max_new_tokens=4, max_len=MAX_LEN_EMPTY)
    empty = lcsm_compile.generate(model, ids[:, :0], max_new_tokens=0)
    assert empty.shape == (2, 0) and empty.dtype == torch.long
    # the session itself takes the empty prompt; a BOS-started generate works
    sess = lcsm_compile.session(model, ids[:, :0], max_len=MAX_LEN_EMPTY)
    assert tensors(sess.prefill(ids[:, :0]))[0].shape == (2, 0, e.d_out)
    got = lcsm_compile.generate(model, ids[:, :1], max_new_tokens=6, max_len=MAX_LEN_EMPTY)
    assert torch.equal(got, naive_greedy(model, ids[:, :1], 6))


@pytest.mark.parametrize("engine", ["online", "lazy", "eager"])
@pytest.mark.parametrize("P", [0, 1, 6])
def test_engines_and_members_take_an_empty_prefill(engine, P):
    """P = 0 at the engine / member level: empty outputs, state untouched, steps exact (the
    short convolution through its ring-buffer ops)."""
    from lcsm_compile.ops import causal_conv_fft, short_conv
    from lcsm_compile.runtime.members import LongMember
    from lcsm_compile.runtime.program import ENGINES

    g = torch.Generator().manual_seed(3)
    B, C, T = 2, 5, 14
    k = torch.randn(C, T, generator=g)
    u = torch.randn(B, C, T, generator=g)
    opts = {"block": 2, "fft_from": 4} if engine == "online" else {}
    eng = ENGINES[engine](k, max_len=16, batch_size=B, **opts)
    long = LongMember("l", eng, slice(0, C), (B,), C)
    w, bias = torch.randn(C, 3, generator=g), torch.randn(C, generator=g)
    buf = torch.zeros(B, C, 3)
    yl, ys = long.prefill(u[..., :P]), torch.ops.lcsm.ring_prefill(u[..., :P], buf, w, bias)
    assert yl.shape == ys.shape == (B, C, P) and yl.dtype == ys.dtype == torch.float32
    eng.finish_prefill(P)
    outl, outs = [yl], [ys]
    pos = torch.zeros(1, dtype=torch.long)
    for t in range(P, T):
        outl.append(long.step(u[..., t]).unsqueeze(-1))
        pos.fill_(t)
        outs.append(torch.ops.lcsm.ring_step(u[..., t], buf, w, bias, pos).unsqueeze(-1))
        eng.advance()
    assert rel(torch.cat(outl, -1), causal_conv_fft(u.double(), k.double())) <= 1e-5
    assert rel(torch.cat(outs, -1), short_conv(u, w, bias)) <= 1e-6


# ----------------------------------------------------------------------------- the logits finder

def _nested_namedtuple(lg, h):
    Out = collections.namedtuple("Out", "logits hidden")  # a new class per call, as in forward
    return (Out(logits=lg, hidden=h), None)


@dataclasses.dataclass
class _DOut:
    hidden: torch.Tensor
    logits: torch.Tensor
    note: str = "n"


class _HFLike:
    """An HF ModelOutput-like object: attributes in __dict__, .logits among them."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


_LG = torch.randn(2, 4, 7)
_H = torch.randn(2, 4, 3)
_S = torch.randn(2)  # a per-sequence scalar: no time dim

FINDER_CASES = {
    "namedtuple_made_per_call_in_tuple": (lambda: _nested_namedtuple(_H * 0 + _LG.sum(), _H), None),
    "namedtuple_in_tuple_logits": (lambda: _nested_namedtuple(_LG, _H), _LG),
    "dataclass_in_tuple": (lambda: (_DOut(_H, _LG), "x"), _LG),
    "hf_like_object": (lambda: _HFLike(loss=None, hidden_states=(_H,), logits=_LG), _LG),
    "hf_like_object_in_list": (lambda: [None, _HFLike(hidden=_H, logits=_LG)], _LG),
    "dict_in_tuple": (lambda: (_H, {"aux": _H, "logits": _LG}), _LG),
    "own_logits_before_nested": (lambda: {"aux": {"logits": _H}, "logits": _LG}, _LG),
    "scalar_first_skipped": (lambda: (_S, _LG, _H), _LG),
    "int_first_skipped": (lambda: (torch.ones(2, 4, dtype=torch.long), _H, _LG), _H),
    "plain_tensor": (lambda: _LG, _LG),
    "no_time_dim_tensor": (lambda: (_S, "x"), None),
}


@pytest.mark.parametrize("case", list(FINDER_CASES), ids=list(FINDER_CASES))
def test_find_logits_structures(case):
    make, want = FINDER_CASES[case]
    out = make()
    if case == "namedtuple_made_per_call_in_tuple":
        want = out[0].logits
    got = find_logits(out)
    assert got is want, (case, None if got is None else got.shape)


def test_find_logits_length():
    a, b = torch.randn(2, 3, 5), torch.randn(2, 1, 5)
    assert find_logits((a, b), 1) is b
    assert find_logits((a, b), 3) is a
    assert find_logits((a, b), 4) is None
    assert find_logits({"logits": a}, 1) is a  # a named logits entry is taken as is


def test_out_spec_rebuilds_per_call_namedtuple_and_nested_objects():
    """Flatten the output of one call, rebuild it with the tensors of another: the namedtuple
    (class made in forward), a dataclass and an object with .logits nested in containers."""
    lg2, h2 = torch.randn(2, 4, 7), torch.randn(2, 4, 3)
    leaves, spec = flatten_output(_nested_namedtuple(_LG, _H))
    assert spec.num_tensors == 2 and spec.logits_index() == 0
    o = spec.unflatten([lg2, h2])
    assert isinstance(o, tuple) and len(o) == 2 and o[1] is None
    assert o[0]._fields == ("logits", "hidden") and o[0].logits is lg2 and o[0][0] is lg2 and o[0].hidden is h2
    assert find_logits(o) is lg2
    other = _nested_namedtuple(lg2, h2)  # another call: another class, same rebuild
    assert [t is u for t, u in zip(flatten_output(other)[0], [lg2, h2, None])] == [True, True, True]

    leaves, spec = flatten_output((_H, [_DOut(_H, _LG, "keep")], {"o": _HFLike(logits=_LG, n=3)}))
    assert spec.num_tensors == 4
    assert spec.logits_index() == 2  # the dataclass' .logits, depth-first
    t = [torch.full((1,), float(i)) for i in range(4)]
    o = spec.unflatten(t)
    assert o[0] is t[0]
    d = o[1][0]
    assert isinstance(d, _DOut) and d.hidden is t[1] and d.logits is t[2] and d.note == "keep"
    h = o[2]["o"]
    assert isinstance(h, _HFLike) and h.logits is t[3] and h.n == 3
    assert find_logits(o) is t[2]
    assert spec.logits_index(floating=[True, True, False, True]) == 2  # a named entry: any dtype


def test_greedy_generate_on_nested_namedtuple_output():
    """generate finds the logits in (Out(logits=...), None) (Out made in forward) and equals the
    naive argmax loop over the full forward; the session rebuilds the structure."""
    e = zoo.get("out_nested_namedtuple")
    model = built(e.name)
    ids = e.make_input(2, 4)
    got = lcsm_compile.generate(model, ids, max_new_tokens=12, progress=False, max_len=MAX_LEN_EMPTY)
    assert got.shape == (2, 16)
    assert torch.equal(got, naive_greedy(model, ids, 12))
    sess = lcsm_compile.session(model, ids, max_len=MAX_LEN_EMPTY)
    out = sess.prefill(ids)
    with torch.no_grad():
        ref = model(ids)
    assert out[1] is None and out[0]._fields == ("logits", "hidden")
    assert rel(out[0].logits, ref[0].logits) <= 1e-5 and rel(out[0][1], ref[0].hidden) <= 1e-5
    step = sess.step(got[:, 4:5])
    assert step[0].logits.shape == (2, 1, e.d_out)


def test_capture_example_of_an_empty_or_one_token_prompt_varies():
    """The example only seeds the probes: an empty / one-token ids example still gives two
    different tokens (probes that vary along time), of the example's batch, dtype and kind."""
    from lcsm_compile.api import _capture_example

    ids = torch.tensor([[7], [7], [7]])
    for ex in (ids[:, :0], ids):
        c = _capture_example(ex)
        assert c.shape == (3, 2) and c.dtype == ids.dtype
        assert len(torch.unique(c)) == 2 and int(c.min()) == 0
    cont = torch.randn(2, 1, 4)
    assert _capture_example(cont[:, :0]).shape == (2, 2, 4)
    assert torch.equal(_capture_example(cont), cont.repeat(1, 2, 1))
    long = torch.arange(6).reshape(2, 3)
    assert _capture_example(long) is long


def test_steps_run_single_threaded_and_restore_the_thread_count(monkeypatch):
    from lcsm_compile.runtime import state_ops

    e = zoo.get("safari_hyena_o2")
    model, x = e.build(), e.make_input(1, 12)
    seen = []
    orig = state_ops.red_step  # what lcsm::online_diag runs

    def spy(*args):
        seen.append(torch.get_num_threads())
        return orig(*args)

    monkeypatch.setattr(state_ops, "red_step", spy)
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for threads, want in ((1, 1), (2, 2), (None, 2)):
            seen.clear()
            sess = lcsm_compile.session(model, x[:, :4], max_len=16, threads=threads)
            sess.prefill(x[:, :4])
            with state_ops.cpu_ops.python_bodies():  # the spy is in the Python body of the op
                sess.step(x[:, 4:5])
            assert seen and set(seen) == {want}, (threads, seen)
            assert torch.get_num_threads() == 2  # restored after the step
        with pytest.raises(SessionError, match="threads"):
            lcsm_compile.session(model, x[:, :4], max_len=16, threads=0)
    finally:
        torch.set_num_threads(prev)


def test_generate_freezes_the_collector_only_while_it_runs(monkeypatch):
    """``generate`` runs its steps under ``gc.freeze()`` (no collector pauses over the model's
    objects) and leaves nothing frozen; a user's own freeze is left alone."""
    import gc

    from lcsm_compile.runtime import threads

    seen = []
    real_step = lcsm_compile.runtime.session.Session.step

    def step(self, x_t):
        seen.append(gc.get_freeze_count())
        return real_step(self, x_t)

    monkeypatch.setattr(lcsm_compile.runtime.session.Session, "step", step)
    model = zoo.get("safari_hyena_o2").build()
    ids = zoo.get("safari_hyena_o2").make_input(1, 4)
    assert gc.get_freeze_count() == 0
    lcsm_compile.generate(model, ids, max_new_tokens=5, max_len=16, progress=False)
    assert len(seen) == 4 and all(c > 0 for c in seen) and gc.get_freeze_count() == 0
    gc.freeze()  # the user's own freeze: kept as it is (neither refrozen nor undone)
    calls = []
    try:
        # spied, not counted: frozen objects that die leave the permanent generation, so its
        # count can drop between two reads (seen in a full run)
        monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
        monkeypatch.setattr(gc, "unfreeze", lambda: calls.append("unfreeze"))
        with threads.frozen_gc():
            assert gc.get_freeze_count() > 0
        assert calls == [] and gc.get_freeze_count() > 0
    finally:
        monkeypatch.undo()
        gc.unfreeze()


def test_fp32_convolutions_around_cuda_programs(monkeypatch):
    """On CUDA the programs run with cuDNN's TF32 off (a Conv1d(k=1) projection ran at TF32
    precision in the step and in fp32 in the full forward on an H100: 2.9e-4 vs 1.6e-7); the
    user's setting is restored afterwards, also after an error; nothing changes off CUDA."""
    from lcsm_compile.runtime import threads
    cudnn = torch.backends.cudnn
    monkeypatch.setattr(cudnn, "allow_tf32", True)
    with threads.fp32_convolutions(True):
        assert cudnn.allow_tf32 is False
    assert cudnn.allow_tf32 is True
    with pytest.raises(RuntimeError):
        with threads.fp32_convolutions(True):
            raise RuntimeError("a failing step")
    assert cudnn.allow_tf32 is True
    with threads.fp32_convolutions(False):
        assert cudnn.allow_tf32 is True
    monkeypatch.setattr(cudnn, "allow_tf32", False)  # the user's own choice: kept
    with threads.fp32_convolutions(True):
        assert cudnn.allow_tf32 is False
    assert cudnn.allow_tf32 is False
