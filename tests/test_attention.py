"""Causal attention in hybrid models: detected, verified by probes, streamed with a KV cache.

The models are in ``examples/idioms/attention.py``. The ZOO entry ``hybrid_attention_sdpa`` (an
order-2 Hyena block, RoPE from ``arange``, grouped heads by ``expand``, SDPA ``is_causal``) runs
through the generic suites: explain counts, teacher forcing at P = 0, 1, 37, 64 and B = 1, 3,
empty prompts (tests/test_session.py), the fullgraph-compiled step (tests/test_step_program.py).
Here: learned positions, an order-3 Hyena block, grouped-query heads by ``repeat_interleave`` +
ALiBi + a sliding window (a ring KV cache): teacher forcing, export, generate, resume, the
backend's full forward; explain's cache sizes and RoPE from cached buffers with an additive
``triu`` mask; the refusals; and that the verification checks what it extracts. Every streaming
check is teacher forcing against the model's full forward with the fp64 golden.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import lcsm_compile
from examples.idioms import attention as A
from lcsm_compile import UnsupportedModelError
from lcsm_compile.capture import find_logits
from lcsm_compile.passes import match_attention as MA

from ._golden import assert_golden, golden_forward, tensors

OPS = torch.ops.lcsm
L = 45          # longer than the window (8): the ring wraps
MAX_LEN = 48
SLOPES = tuple(A.alibi_slopes(4).tolist())
_MODELS: dict = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _model(name="build_gqa_alibi_window"):
    """One model object per builder for the whole file: its sessions share one lowering."""
    if name not in _MODELS:
        _MODELS[name] = getattr(A, name)()
    return _MODELS[name]


def _ids(B, n, seed=0):
    return torch.randint(0, A.VOCAB, (B, n), generator=torch.Generator().manual_seed(seed))


def _stream(sess, x, P, t1=None):
    outs = [tensors(sess.prefill(x[:, :P]))] + [tensors(sess.step(x[:, t:t + 1])) for t in range(P, t1 or x.shape[1])]
    return [torch.cat([o[i] for o in outs], 1) for i in range(len(outs[0]))]


@pytest.mark.parametrize("P", [0, 1, 37])
@pytest.mark.parametrize("B", [1, 3])
def test_gqa_alibi_window_streams_exactly(P, B):
    """Teacher forcing at awkward sizes; the spec the probes extracted is the model's own, the
    cache a ring of the window's 8 positions holding the 2 kv heads (not the 4 query heads), one
    kv_attend / kv_prefill per attention layer."""
    model = _model()
    x = _ids(B, L, seed=P + 10 * B)
    with torch.no_grad():
        ref = tensors(model(x))
    sess = lcsm_compile.session(model, x[:, :max(P, 2)], max_len=MAX_LEN)
    got = _stream(sess, x, P)
    assert sess.position == L
    assert_golden(got, ref, golden_forward(model, x), what=f"P={P} B={B}")
    prog = sess.program
    (r,) = prog.lowered.attention
    assert r.scale == pytest.approx((A.D // 4) ** -0.5, rel=1e-6) and r.window == 8
    assert r.slopes == pytest.approx(SLOPES, rel=1e-5) and r.heads == 4 and r.kv_heads == 2
    (c,) = prog.attention.values()
    assert c.k.shape == (B * 2, 8, 4) and c.v.shape == (B * 2, 8, 4) and c.slot.group == 2
    step = [n.target for n in prog.step_gm.graph.nodes if n.op == "call_function"]
    pre = [n.target for n in prog.prefill_gm.graph.nodes if n.op == "call_function"]
    assert step.count(OPS.kv_attend.default) == 1 and pre.count(OPS.kv_prefill.default) == 1


def test_step_exports_with_the_kv_op_and_resumes_from_state_dict():
    """``torch.export`` of the step program keeps ``lcsm::kv_attend`` (ring cache, ALiBi slopes as
    op arguments) as a node and streams exactly on the session's state; a second session resumed
    from the first's ``state_dict`` (KV cache included) continues exactly; a state whose cache
    has another size is refused."""
    model = _model()
    x = _ids(3, L, seed=3)
    with torch.no_grad():
        ref = tensors(model(x))
    P, mid, cut = 5, 13, 29
    a = lcsm_compile.session(model, x[:, :P], max_len=MAX_LEN)
    first = _stream(a, x, P, mid)
    ep = torch.export.export(a.program.step_gm, (x[:, mid:mid + 1].contiguous(), torch.tensor([mid])), strict=False)
    for prog in (ep, ep.run_decompositions()):
        names = [str(n.args[0] if "auto_functionalized" in str(n.target) else n.target)
                 for n in prog.graph.nodes if n.op == "call_function"]
        assert names.count("lcsm.kv_attend.default") == 1
    m, pos = ep.module(), torch.zeros(1, dtype=torch.long)
    outs = []
    with torch.no_grad():
        for t in range(mid, cut):
            pos.fill_(t)
            outs.append(list(m(x[:, t:t + 1].contiguous(), pos)))
    a.position = cut  # the exported program advanced the session's own state
    state = a.state_dict()
    assert set(state["program"]["attention"]) == set(a.program.attention)
    b = lcsm_compile.session(model, x[:, :P], max_len=MAX_LEN)
    b.load_state_dict(copy.deepcopy(state))
    for t in range(cut, L):
        outs.append(tensors(b.step(x[:, t:t + 1])))
        a.step((x[:, t:t + 1] + 1) % A.VOCAB)  # b's cache is its own: a moving on changes nothing in b
    got = [torch.cat([f] + [o[i] for o in outs], 1) for i, f in enumerate(first)]
    assert_golden(got, ref, golden_forward(model, x), what="exported, then resumed")
    bad = copy.deepcopy(state)
    name = next(iter(bad["program"]["attention"]))
    k, v = bad["program"]["attention"][name]
    bad["program"]["attention"][name] = (k[:, :4], v[:, :4])
    with pytest.raises(lcsm_compile.SessionError, match="attention"):
        b.load_state_dict(bad)


def test_greedy_generate_equals_the_naive_loop():
    model = _model()
    ids = _ids(2, 5, seed=7)
    got = lcsm_compile.generate(model, ids, max_new_tokens=20, max_len=MAX_LEN, progress=False)
    out = ids
    for _ in range(20):
        with torch.no_grad():
            out = torch.cat([out, find_logits(model(out))[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(got, out)


def test_backend_full_forward_equals_eager():
    """``torch.compile(model, backend="lcsm")``: the full forward, the attention rewritten to
    ``lcsm::causal_attention`` (its window of 8 verified on the graph's own inputs resized past
    2 * 8 + 3), equals eager at several lengths, one dynamic graph."""
    torch._dynamo.reset()
    torch.manual_seed(3)
    model = A.HybridLM([A.GQAAlibiAttention(heads=4, kv_heads=2, window=8)]).eval()  # small: dynamo's trace is the cost
    be = lcsm_compile.LcsmBackend()
    fast = torch.compile(model, backend=be, dynamic=True, options={"stream": False})
    with torch.no_grad():
        for n in (11, 23, 6):
            x = _ids(2, n, seed=n)
            assert_golden(tensors(fast(x)), tensors(model(x)), golden_forward(model, x), what=f"full forward L={n}")
    (rep,) = be.reports
    assert rep.mode == "lcsm" and "1 causal attention layer" in rep.reason and not rep.refusals, rep.reason
    torch._dynamo.reset()


REFUSED = [  # the blocks of build_mixed after the first three, in order: (phrase of the reason, code on its line)
    ("non-causal attention: bidirectional", "softmax"),
    ("non-causal attention: prefix-lm mask", "softmax"),
    ("position 0 attend to position 1, 1 later", "softmax"),
    ("learned parameter blocks.6.mixer.rel", "softmax"),
]


def test_explain_lists_the_kv_caches_and_refuses_what_is_not_causal():
    """Three verified blocks (windowed ALiBi: listed with its ring cache's size; RoPE from cached
    buffers with an additive ``triu`` mask; a mask cached as a buffer [T, T] sliced [:L, :L],
    probed at T) and four refused ones (no mask, a prefix-LM mask, a mask one position ahead, a
    learned bias table), each refusal naming the softmax and the user's own line."""
    model = _model("build_mixed")
    rep = lcsm_compile.explain(model, _ids(2, 9), max_len=MAX_LEN)
    a, rope, cached = rep.attention
    assert cached.window == 0 and cached.slopes is None
    assert "mask probed at L=256" in cached.verified  # the whole cached table
    assert rope.window == 0 and rope.slopes is None and rope.scale == pytest.approx((A.D // 4) ** -0.5, rel=1e-6)
    assert rope.kv_heads == 2 and rope.cache_bytes(2, MAX_LEN) == 2 * 2 * MAX_LEN * (4 + 4) * 4  # expand: 2 kv heads
    assert cached.kv_heads == cached.heads == 2  # no grouping: every head its own keys
    assert a.op == "aten._softmax" and a.source.startswith("examples/idioms/attention.py:") and "softmax" in a.code
    assert a.heads == 4 and a.kv_heads == 2 and a.head_dim == a.v_dim == 4 and a.window == 8
    assert a.slopes == pytest.approx(SLOPES, rel=1e-5)
    assert a.cache_bytes(2, MAX_LEN) == 2 * 2 * 8 * (4 + 4) * 4       # 2 kv heads, the ring: min(max_len, window)
    assert a.cache_bytes(2, 4) == 2 * 2 * 4 * (4 + 4) * 4
    text = str(rep)
    assert "causal attention layers" in text and "min(max_len, 8)" in text and f"{2 * 2 * 8 * 8 * 4:,} bytes" in text
    assert not rep.streamable and len(rep.refusals) == len(REFUSED), [r.reason for r in rep.refusals]
    lines = open(A.__file__).read().splitlines()
    seen = []
    for r, err, (phrase, code) in zip(rep.refusals, rep.errors(), REFUSED):
        assert phrase in r.reason.lower(), (phrase, r.reason)
        assert isinstance(err, UnsupportedModelError) and err.op == "aten._softmax" and err.source == r.source
        assert r.source.startswith("examples/idioms/attention.py:")
        line = int(r.source.rsplit(":", 1)[1])
        assert code in lines[line - 1] and code in r.code, (r.source, lines[line - 1])
        seen.append(line)
    seen += [int(x.source.rsplit(":", 1)[1]) for x in (a, rope, cached)]
    assert len(set(seen)) == len(REFUSED) + 3  # each block's own line


def test_verification_is_not_taken_on_syntax(monkeypatch):
    """The probes check the spec they extract: a dropped window or dropped ALiBi slopes are
    caught; a window that cannot show at the probe lengths is found because the mask side is probed past
    2c + 3 for every number c it is built with."""
    model = _model()
    low = lcsm_compile.api._lowered(model, _ids(2, 2), None, MAX_LEN)  # the sessions' lowering (cached)
    (r,) = [dataclasses.replace(r, problem=None, verified=None, scale=None, window=0, slopes=None)
            for r in low.regions if r.kind == "attention"]

    def verify(lengths=(5, 12)):
        return MA.verify_attention(low.captured.gm, [r], low.ta, low.make_args, lengths, set(low.data_dep))[0]

    ok = verify()
    assert ok.problem is None and ok.window == 8 and ok.mask_len == 19 and ok.slopes == pytest.approx(SLOPES, rel=1e-5)
    real = MA._spec_from_bias
    monkeypatch.setattr(MA, "_spec_from_bias", lambda *a: (None, 0, real(*a)[2]))  # drop the window
    assert "rel err" in verify().problem
    monkeypatch.setattr(MA, "_spec_from_bias", lambda *a: (None, 8, None))  # ALiBi dropped
    assert "rel err" in verify().problem
    monkeypatch.setattr(MA, "_spec_from_bias", real)
    short = verify(lengths=(5, 7))  # the 8 on the mask side sends the mask probe to L = 19
    assert short.problem is None and short.window == 8 and short.mask_len == 19
    monkeypatch.setattr(MA, "mask_constant", lambda *a: 0.0)
    blind = verify(lengths=(5, 7))  # without that scan a window of 8 cannot show below L = 9
    assert blind.problem is None and blind.window == 0 and blind.mask_len == 7
