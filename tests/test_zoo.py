"""Sanity of the test model zoo itself (eager only, no compiler).

The zoo is ground truth for the front end and the sessions, so here we check that each model
is what its entry claims: it runs at the lengths and batches the suites use, every output
tensor is laid out ``[B, L, ...]``, streamable models are causal and prefix consistent, and
each negative model really violates causality or prefix consistency.
"""

from __future__ import annotations

import pytest
import torch

from examples.idioms import IDIOM_TAGS, ZOO, get, names, output_tensors, refused, streamable
from examples.idioms.outputs import CausalLMOutput

LENGTHS = (1, 2, 7, 64)
BATCHES = (1, 3)
CAUSAL_L = 40
PERTURB_AT = (1, 13, 39)
PREFIXES = (1, 2, 17, 33)

_models: dict = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The zoo models are tiny: intra-op threads only add OpenMP spin contention on a busy
    2-core machine (the file took 3 s with one thread, up to 60 s with two under load)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _model(entry):
    """Build once per test session (builds are deterministic; tests do not mutate weights)."""
    if entry.name not in _models:
        _models[entry.name] = entry.build()
    return _models[entry.name]


def _run(entry, x):
    with torch.no_grad():
        return _model(entry)(x)


def _perturb(entry, x, p):
    x2 = x.clone()
    if entry.input_kind == "ids":
        x2[:, p] = (x2[:, p] + 1) % entry.vocab
    else:
        x2[:, p] += 1.0
    return x2


def _scale(tensors):
    return max(1.0, max(float(t.abs().max()) for t in tensors))


def _causality_violation(entry, L=CAUSAL_L, B=2):
    """Largest change of an output before p when input p is perturbed, and the smallest change
    at or after p (to check the perturbation does something), relative to the output scale."""
    x = entry.make_input(B, L)
    base = output_tensors(_run(entry, x))
    scale = _scale(base)
    before, after = 0.0, float("inf")
    for p in PERTURB_AT:
        out = output_tensors(_run(entry, _perturb(entry, x, p)))
        before = max(before, max(float((a[:, :p] - b[:, :p]).abs().max()) for a, b in zip(base, out)))
        after = min(after, max(float((a[:, p:] - b[:, p:]).abs().max()) for a, b in zip(base, out)))
    return before / scale, after / scale


def _prefix_violation(entry, L=CAUSAL_L, B=2):
    x = entry.make_input(B, L)
    full = output_tensors(_run(entry, x))
    scale = _scale(full)
    worst = 0.0
    for l in PREFIXES:
        part = output_tensors(_run(entry, x[:, :l]))
        assert len(part) == len(full)
        worst = max(worst, max(float((a - b[:, :l]).abs().max()) for a, b in zip(part, full)))
    return worst / scale


# ----------------------------------------------------------------------------- the registry

def test_registry_is_well_formed():
    assert len(set(names())) == len(ZOO), "duplicate names"
    known_tags = set(IDIOM_TAGS.values()) | {"violates:causality", "violates:prefix", "bf16-ok"}
    for e in ZOO:
        assert e.input_kind in ("ids", "cont"), e.name
        assert (e.vocab is not None) == (e.input_kind == "ids"), e.name
        assert (e.d_in is not None) == (e.input_kind == "cont"), e.name
        assert e.n_long >= 0 and e.n_short >= 0, e.name
        assert e.streamable == (e.refusal is None), e.name
        assert e.refusal is None or (e.refusal == e.refusal.lower() and e.refusal), e.name
        assert e.output in ("tensor", "tuple", "dict", "object"), e.name
        assert set(e.tags) <= known_tags, (e.name, set(e.tags) - known_tags)
        assert e.idiom, e.name
        if e.streamable:
            assert e.n_long >= 1, f"{e.name}: a streamable LCSM has at least one long conv"
        else:
            assert {"violates:causality", "violates:prefix"} & set(e.tags), e.name
    assert get("safari_hyena_o2").name == "safari_hyena_o2"
    with pytest.raises(KeyError):
        get("no_such_model")
    assert {e.name for e in streamable()} | {e.name for e in refused()} == set(names())
    assert not {e.name for e in streamable()} & {e.name for e in refused()}


def test_every_design_idiom_is_covered():
    used = {t for e in ZOO for t in e.tags}
    missing = {k: v for k, v in IDIOM_TAGS.items() if v not in used}
    assert not missing, f"idioms without a zoo entry: {missing}"


def test_required_refusals_present():
    phrases = {e.name: e.refusal for e in refused()}
    assert "circular" in phrases.values()
    for tag in ("neg-circular", "neg-bidirectional", "neg-softmax-time", "neg-flip", "neg-future-shift"):
        assert any(tag in e.tags for e in refused()), tag


@pytest.mark.parametrize("entry", ZOO, ids=lambda e: e.name)
def test_build_is_deterministic_and_eval(entry):
    m1, m2 = entry.build(), entry.build()
    assert not m1.training and all(not mod.training for mod in m1.modules())
    sd1, sd2 = m1.state_dict(), m2.state_dict()
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), (entry.name, k)
    assert all(p.dtype == torch.float32 for p in m1.parameters())
    x1, x2 = entry.make_input(2, 5), entry.make_input(2, 5)
    assert torch.equal(x1, x2)
    if entry.input_kind == "ids":
        assert x1.dtype == torch.long and x1.shape == (2, 5)
        assert int(x1.min()) >= 0 and int(x1.max()) < entry.vocab
    else:
        assert x1.dtype == torch.float32 and x1.shape == (2, 5, entry.d_in)


# ----------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("entry", ZOO, ids=lambda e: e.name)
def test_runs_and_output_layout(entry):
    for L in LENGTHS:
        for B in BATCHES:
            out = _run(entry, entry.make_input(B, L))
            kind = {"tensor": torch.Tensor, "tuple": tuple, "dict": dict, "object": CausalLMOutput}
            assert isinstance(out, kind[entry.output]), (entry.name, type(out))
            tensors = output_tensors(out)
            assert tensors, entry.name
            for t in tensors:
                assert t.shape[:2] == (B, L), (entry.name, L, B, tuple(t.shape))
                assert t.dtype == torch.float32
                assert torch.isfinite(t).all(), (entry.name, L, B)
            assert tensors[0].shape == (B, L, entry.d_out), (entry.name, tuple(tensors[0].shape))


@pytest.mark.parametrize("entry", [e for e in ZOO if "bf16-ok" in e.tags], ids=lambda e: e.name)
def test_bf16_ok_models_run_in_bf16(entry):
    ref = output_tensors(_run(entry, entry.make_input(2, 23)))
    mb = entry.build().to(torch.bfloat16)
    x = entry.make_input(2, 23)
    with torch.no_grad():
        out = output_tensors(mb(x if entry.input_kind == "ids" else x.bfloat16()))
    for a, b in zip(out, ref):
        assert a.dtype == torch.bfloat16 and torch.isfinite(a).all()
        assert float((a.float() - b).abs().max()) <= 0.1 * _scale(ref), entry.name


def test_structured_outputs():
    x = get("out_tuple").make_input(2, 7)
    logits, hidden = _run(get("out_tuple"), x)
    assert logits.shape == (2, 7, get("out_tuple").vocab) and hidden.shape == (2, 7, 16)
    d = _run(get("out_dict"), get("out_dict").make_input(2, 7))
    assert set(d) == {"logits", "aux"}
    o = _run(get("out_object"), get("out_object").make_input(2, 7))
    assert o.logits.shape == (2, 7, get("out_object").vocab)
    assert isinstance(o.hidden_states, tuple) and len(o.hidden_states) == 2
    assert o.past_key_values is None and o.model_name == "zoo-hyena"  # non-tensor pass-through


def test_cached_filter_is_refreshed_across_lengths():
    """The buffer-caching model gives the same answer whatever length it saw before."""
    e = get("cached_filter_buffer")
    x = e.make_input(2, 30)
    fresh = e.build()
    with torch.no_grad():
        ref = fresh(x)
        fresh(x[:, :7])  # cache now holds the L=7 filter
        again = fresh(x)
        short = fresh(x[:, :7])
    torch.testing.assert_close(again, ref, rtol=0, atol=0)
    torch.testing.assert_close(short, ref[:, :7], rtol=1e-5, atol=1e-5)


def test_graph_break_model_matches_its_twin():
    """The graph-break model is an ordinary Hyena LM: same structure as safari_hyena_o2."""
    m = _model(get("safari_hyena_graph_break"))
    assert hasattr(m, "logit_scale") and len(m.layers) == 2


# ----------------------------------------------------------------------------- causality

@pytest.mark.parametrize("entry", streamable(), ids=lambda e: e.name)
def test_streamable_is_causal(entry):
    before, after = _causality_violation(entry)
    assert before <= 1e-6, f"{entry.name}: perturbing position p changed an earlier output by {before:.3g}"
    assert after > 1e-4, f"{entry.name}: perturbation had no visible effect ({after:.3g})"


@pytest.mark.parametrize("entry", streamable(), ids=lambda e: e.name)
def test_streamable_is_prefix_consistent(entry):
    err = _prefix_violation(entry)
    assert err <= 1e-5, f"{entry.name}: model(x[:, :l]) != model(x)[:, :l] (rel. {err:.3g})"


@pytest.mark.parametrize("entry", refused(), ids=lambda e: e.name)
def test_negative_models_violate_what_they_claim(entry):
    before, _ = _causality_violation(entry)
    prefix = _prefix_violation(entry)
    if "violates:causality" in entry.tags:
        assert before > 1e-3, f"{entry.name}: claimed non-causal but earlier outputs moved only {before:.3g}"
    else:
        assert before <= 1e-6, f"{entry.name}: unexpectedly non-causal ({before:.3g})"
    if "violates:prefix" in entry.tags:
        assert prefix > 1e-3, f"{entry.name}: claimed prefix-inconsistent but err {prefix:.3g}"
    else:
        assert prefix <= 1e-5, f"{entry.name}: unexpectedly prefix-inconsistent ({prefix:.3g})"


def test_circular_differs_from_the_causal_conv():
    """The circular conv is not the causal conv with the same filter: wrap-around already reaches
    position 0 (y[0] = sum_s u[s] k[(-s) mod L])."""
    e = get("neg_circular_fft")
    m = _model(e)
    x = e.make_input(2, 24)

    def causal_mix(h):
        L = h.shape[1]
        u = h.transpose(1, 2)
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(m.k[:, :L], n=2 * L), n=2 * L)
        return y[..., :L].transpose(1, 2)

    with torch.no_grad():
        emb = m.emb(x)
        circ = m.mix(m.ln(emb))
        caus = causal_mix(m.ln(emb))
    assert (circ - caus).abs().max() > 1e-2
    assert (circ[:, 0] - caus[:, 0]).abs().max() > 1e-2
