"""Property-based fuzz test of the front end and the sessions (hypothesis).

Random compositions of idioms (filter generators x convolution styles x layouts x heads x short
convs x skip terms x gating x layers x input kinds) and mutations that break causality or
prefix consistency (``tests/_fuzz_models.py``). Every label is first checked on the eager
model; then each model must be either streamable and exact (teacher forcing from a random
prompt length, 0 included, against the full forward) or refused with a reason naming an op,
never an exception of another kind.

CI runs a few examples (``LCSM_FUZZ_EXAMPLES``, default 6). A long run (``-s`` prints one
``FUZZ`` line per model; ``LCSM_FUZZ_SEED`` draws other models, e.g. one process per core)::

    LCSM_FUZZ_EXAMPLES=2000 LCSM_FUZZ_SEED=1 python -m pytest -q -s -p no:cacheprovider tests/test_fuzz.py
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import lcsm_compile
from . import _fuzz_models as fuzz
from ._golden import assert_golden, golden_forward, rel_err, tensors

N_EXAMPLES = int(os.environ.get("LCSM_FUZZ_EXAMPLES", "6"))
#: a seed for a different draw of models (long runs in parallel); unset: the fixed CI draw
SEED = os.environ.get("LCSM_FUZZ_SEED")
L = 24


@st.composite
def specs(draw):
    conv = draw(st.sampled_from(fuzz.CONVS))
    mutation = draw(st.one_of(st.none(), st.sampled_from([m for m in fuzz.MUTATIONS if m])))  # half causal
    if mutation == "circular" and conv == "conv1d":
        mutation = "same_pad"
    heads = draw(st.sampled_from([1, 2]))
    return fuzz.FuzzSpec(
        seed=draw(st.integers(0, 10_000)), ids=draw(st.booleans()), d=4 * heads * draw(st.integers(1, 2)),
        layers=draw(st.integers(1, 2)), filt=draw(st.sampled_from(fuzz.FILTERS)), conv=conv,
        layout=draw(st.sampled_from(fuzz.LAYOUTS)), heads=heads, short=draw(st.booleans()),
        skip=draw(st.booleans()), gate=draw(st.booleans()), mutation=mutation)


def _causal_and_prefix_consistent(model, spec) -> bool:
    """The spec's label, checked on the eager model: perturbing position p changes no output
    before p, and the outputs of a prefix equal the prefix of the outputs."""
    x = fuzz.make_input(spec, 2, L)
    with torch.no_grad():
        y = model(x)
        x2 = x.clone()
        x2[:, L // 2] = fuzz.make_input(spec, 2, L)[:, 0] if spec.ids else x2[:, L // 2] + 1.0
        y2 = model(x2)
        yp = model(x[:, : L // 2 + 3])
    tol = 1e-5
    return rel_err(y2[:, : L // 2], y[:, : L // 2]) <= tol and rel_err(yp, y[:, : L // 2 + 3]) <= tol


@settings(max_examples=N_EXAMPLES, deadline=None, derandomize=SEED is None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@(seed(int(SEED)) if SEED else (lambda f: f))
@given(spec=specs(), P=st.integers(0, L - 1))
def test_random_models_are_exact_or_refused(spec, P):
    torch.set_num_threads(1)
    model = fuzz.build(spec)
    assert _causal_and_prefix_consistent(model, spec) == spec.causal, spec  # the label is true
    x = fuzz.make_input(spec, 2, L)
    rep = lcsm_compile.explain(model, x[:, :5])
    print(f"FUZZ {'causal' if spec.causal else 'refuse:' + spec.mutation} {spec}")  # counted by long runs
    if not spec.causal:
        assert not rep.streamable and rep.refusals, (spec, rep)
        assert all(r.reason and (r.op or r.source) for r in rep.refusals), rep.refusals
        with pytest.raises(lcsm_compile.UnsupportedModelError):
            lcsm_compile.session(model, x[:, :5], max_len=L)
        return
    assert rep.streamable, (spec, [(r.op, r.source, r.reason) for r in rep.refusals])
    sess = lcsm_compile.session(model, x[:, :P], max_len=L)
    outs = [tensors(sess.prefill(x[:, :P]))]
    for t in range(P, L):
        outs.append(tensors(sess.step(x[:, t:t + 1])))
    got = [torch.cat([o[i] for o in outs], 1) for i in range(len(outs[0]))]
    with torch.no_grad():
        ref = tensors(model(x))
    assert_golden(got, ref, golden_forward(model, x), what=str(spec))
