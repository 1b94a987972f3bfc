"""explain / lower on every zoo model: the expected long and short convs, the refusals with op,
source line and reason, and the lowered graph equal to eager at awkward lengths."""

import pytest
import torch

import lcsm_compile

from examples.idioms import ZOO, output_tensors

LENGTHS = (1, 2, 7, 16)  # 1, 2, odd, not a power of two
TOL = 1e-4  # fp32, relative to the largest output


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


@pytest.fixture(scope="module")
def explained():
    cache = {}

    def get(entry):
        if entry.name not in cache:
            m = entry.build()
            cache[entry.name] = (m, lcsm_compile.explain(m, entry.make_input(1, 6)))
        return cache[entry.name]
    return get


@pytest.mark.parametrize("entry", ZOO, ids=[e.name for e in ZOO])
def test_zoo_entry(entry, explained):
    model, rep = explained(entry)
    assert (len(rep.long_convs), len(rep.short_convs)) == (entry.n_long, entry.n_short), str(rep)
    assert rep.streamable == entry.streamable, str(rep)
    for r in rep.refusals:
        assert r.op and r.reason
        assert r.source and ":" in r.source, r
    if not entry.streamable:
        assert any(entry.refusal in r.reason.lower() for r in rep.refusals), str(rep)
    for c in rep.long_convs + rep.short_convs:
        assert c.verified.startswith("verified") and c.source and c.max_err < TOL
    text = str(rep)
    assert ("NOT streamable" in text) != entry.streamable
    low = rep.lowered
    if low.gm is None:
        return
    for L in LENGTHS:
        x = entry.make_input(2, L)
        with torch.no_grad():
            got, ref = output_tensors(low(x)), output_tensors(model(x))
        assert len(got) == len(ref)
        for a, b in zip(got, ref):
            assert a.shape == b.shape
            if b.is_floating_point():
                assert rel(a, b) < TOL, (entry.name, L)


def test_explain_accepts_the_compiled_model_and_prints_sources():
    from ._frontend_models import FFTConvCF, ids
    m = FFTConvCF().eval()
    rep = lcsm_compile.explain(torch.compile(m, backend="lcsm"), ids(1, 5, 11))
    assert len(rep.long_convs) == 1 and rep.streamable
    assert len(rep.groups) == 1 and rep.groups[0].members == [rep.long_convs[0].node]
    text = str(rep)
    assert "_frontend_models.py" in text and "verified" in text and "long" in text
    assert "Explanation(" in repr(rep)
    assert "calls stream" in text  # what the compiled model's calls do


def test_explain_says_why_compiled_calls_do_not_stream():
    from ._frontend_models import Negative, ids
    rep = lcsm_compile.explain(Negative("flip").eval(), ids(2, 6, 8))
    assert "every call runs the full forward" in rep.compiled_calls and "flip" in rep.compiled_calls


def test_refusal_becomes_unsupported_model_error():
    from ._frontend_models import Negative, ids
    rep = lcsm_compile.explain(Negative("flip").eval(), ids(2, 6, 8))
    (err, *_) = rep.errors()
    assert isinstance(err, lcsm_compile.UnsupportedModelError) and isinstance(err, ValueError)
    assert err.op == "aten.flip" and "_frontend_models.py" in err.source and "flip" in str(err)


def test_explain_lists_the_kernels_and_their_sources(monkeypatch):
    """``explain`` says which kernels a session with these options runs (and why), and where
    the emitted sources are in the kernel cache; an option that cannot run here says so."""
    from lcsm_compile.models import HyenaLM

    model = HyenaLM(vocab=32, d_model=16, n_layers=2, max_len=64).eval()
    x = torch.randint(0, 32, (1, 8))
    lcsm_compile.session(model, x, max_len=64)  # builds the native library (when a C compiler exists)
    exp = lcsm_compile.explain(model, x, max_len=64)
    text = str(exp)
    assert exp.kernels and f"kernels: {exp.kernels}" in text
    assert [w for w, _ in exp.kernel_sources][0].startswith("C:") and len(exp.kernel_sources) == 2
    for what, path in exp.kernel_sources:
        assert what in text
        if path.endswith(".c"):
            assert path in text and open(path).read().lstrip().startswith(("#", "/*", "typedef"))
    assert lcsm_compile.explain(model, x, max_len=64, kernels="torch").kernels.startswith("torch ops")
    # Triton on the CPU without the interpreter: the reason, not an exception
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "not available" in lcsm_compile.explain(model, x, max_len=64, kernels="triton").kernels
