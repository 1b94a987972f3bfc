"""verify: the probe is authoritative - a structurally fine but non-causal region is refused,
even when every syntactic check is bypassed."""

import dataclasses

import pytest
import torch

from lcsm_compile.capture import probe_input
from lcsm_compile.passes.verify import rel_err, short_conv_ref, verify_regions
from lcsm_compile.pipeline import lower

from ._frontend_models import DirectLongConv, FFTConvCF, FFTConvCL, Negative, ShortConvLM, ids

LENGTHS = (2, 5, 12)  # 2, odd, not a power of two


def _verified(model, x, force=False):
    st = lower(model, x, until="match")  # the pipeline up to the pass under test
    cap, ta, rs = st.captured, st.ta, list(st.regions)
    if force:  # drop the structural verdicts: only the probe decides
        rs = [dataclasses.replace(r, problem=None) for r in rs]
    xc = cap.example_args[0]
    out = verify_regions(cap.gm, rs, ta, lambda L: [probe_input(xc, L, L)], LENGTHS)
    return rs, out


@pytest.mark.parametrize("model,x", [
    (FFTConvCF(), ids(2, 6, 11)),
    (FFTConvCL(), torch.randn(2, 7, 3)),
    (ShortConvLM(), ids(2, 6, 9)),
    (DirectLongConv(), ids(2, 6, 7)),
    (Negative("cumsum"), ids(2, 6, 8)),
], ids=["rfft-cf", "fft-cl-casts", "short", "direct", "cumsum"])
def test_causal_regions_are_verified(model, x):
    _, out = _verified(model.eval(), x)
    assert out and all(r.problem is None and r.verified for r in out)
    assert all(r.max_err < 1e-4 for r in out)


def test_circular_fft_is_refused_by_the_probe_alone():
    rs, out = _verified(FFTConvCF(n="L").eval(), ids(2, 6, 11), force=True)
    (r,) = out
    assert r.problem is not None and "non-causal" in r.problem


def test_two_sided_fft_slice_is_refused():
    _, out = _verified(Negative("centered").eval(), ids(2, 6, 8), force=True)
    (r,) = out
    assert r.problem is not None and "non-causal" in r.problem


def test_same_padded_conv_is_refused():
    _, out = _verified(Negative("sameconv").eval(), ids(2, 6, 8))
    (r,) = out
    assert r.problem is not None and "non-causal" in r.problem


def test_short_conv_reference():
    u = torch.randn(2, 3, 7, dtype=torch.float64)
    w = torch.randn(3, 4, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    ref = torch.nn.functional.conv1d(torch.nn.functional.pad(u, (3, 0)), w[:, None], b, groups=3)
    assert rel_err(short_conv_ref(u, w, b), ref) < 1e-12
