"""Refusal messages name the real cause in the user's terms: sizes in ``L`` / ``B`` (never a raw
``s<digits>`` symbol), the pattern the probes established (circular FFT, two-sided conv,
block-restarting conv), the probe that showed it, and one refusal per failed region."""

from __future__ import annotations

import inspect
import os
import re

import pytest
import sympy
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._sympy.functions import (CeilToInt, FloorDiv, OpaqueUnaryFn_log2, PowByNatural,
                                          PythonMod, ToFloat)

import lcsm_compile
from examples.idioms import get, refused
from lcsm_compile.passes.time_axis import TimeAxis, user_expr

RAW_SYMBOL = re.compile(r"\bs\d+\b")


@pytest.fixture(scope="module")
def explained():
    cache = {}

    def run(entry):
        if entry.name not in cache:
            m = entry.build()
            cache[entry.name] = (m, lcsm_compile.explain(m, entry.make_input(1, 6)))
        return cache[entry.name]
    return run


def _file_and_line(source):
    path, _, line = source.rpartition(":")
    return path, int(line)


# ----------------------------------------------------------------------------- every negative

@pytest.mark.parametrize("entry", refused(), ids=lambda e: e.name)
def test_negative_reason_names_the_cause_in_user_terms(entry, explained):
    model, rep = explained(entry)
    assert rep.refusals, entry.name
    for r in rep.refusals:
        assert not RAW_SYMBOL.search(r.reason), (entry.name, r.reason)
    hits = [r for r in rep.refusals if entry.refusal in r.reason.lower()]
    assert hits, str(rep)
    # the refusal names a line of the file that defines the model
    home = os.path.realpath(inspect.getsourcefile(type(model)))
    for r in hits:
        assert r.source, r
        path, line = _file_and_line(r.source)
        assert os.path.realpath(path) == home, (r.source, home)
        with open(home) as f:
            assert 1 <= line <= len(f.read().splitlines()), r.source


OP_WORDS = {"aten.flip": "flip", "aten._softmax": "softmax", "aten._fft_c2r": "fft", "aten.sum": "sum",
            "aten.convolution": "conv", "aten.slice": "[", "aten.constant_pad_nd": "pad"}


@pytest.mark.parametrize("entry", refused(), ids=lambda e: e.name)
def test_refusal_points_at_the_line_doing_the_op(entry, explained):
    """Not the caller's line in ``forward`` (make_fx records only ``forward`` frames unless the
    capture keeps the whole stack): the line inside ``mix``/the helper that makes the op."""
    model, rep = explained(entry)
    with open(inspect.getsourcefile(type(model))) as f:
        lines = f.read().splitlines()
    for r in rep.refusals:
        _, line = _file_and_line(r.source)
        text = lines[line - 1]
        assert "self.mix(" not in text, (entry.name, r.source, text)
        word = OP_WORDS.get(r.op)
        if word:
            assert word in text.lower(), (entry.name, r.op, r.source, text)


def test_helper_function_lines_name_their_caller(explained):
    _, rep = explained(get("neg_time_flip"))
    srcs = {(c.source, c.code) for c in rep.long_convs}
    assert len(srcs) == 2, srcs  # one helper line, two call sites
    for source, code in srcs:
        assert "torch.fft.irfft" in code and "(in _causal_fft_conv, called from " in code, code


def test_negatives_live_in_negatives_py(explained):
    for name in ("neg_circular_fft", "neg_block_restart", "neg_centered_fft", "neg_symmetric_conv1d"):
        _, rep = explained(get(name))
        assert all(r.source.replace(os.sep, "/").split(":")[0].endswith("examples/idioms/negatives.py")
                   for r in rep.refusals), [r.source for r in rep.refusals]


def test_block_restart_names_the_block_size(explained):
    _, rep = explained(get("neg_block_restart"))
    (r,) = rep.refusals  # one refusal for the region: no second "pads the time axis" / "circular"
    assert r.reason.startswith("block-restarting convolution: outputs restart every 16 positions "
                               "(not a causal convolution over the whole sequence)"), r.reason
    assert re.search(r"\b16\b", r.reason)
    assert "circular" not in r.reason and "pads the time axis" not in r.reason
    assert "counted from the end of the sequence" in r.reason  # front padding
    assert r.op == "aten._fft_c2r"


def test_circular_reason_reads_in_L(explained):
    _, rep = explained(get("neg_circular_fft"))
    (r,) = rep.refusals  # the filter's FFT over time is part of the region: no second refusal
    assert "circular FFT convolution: FFT size n = L < 2L - 1 wraps around" in r.reason, r.reason


def test_two_sided_fft_reason_names_the_slice_and_the_probe(explained):
    _, rep = explained(get("neg_centered_fft"))
    (r,) = rep.refusals  # not also "pads the time axis" / "FFT over the time axis" for its filter
    assert r.reason.startswith("non-causal: the output at position t depends on inputs after t (")
    assert "starts at floor(L/2)" in r.reason and "n = 2*L" in r.reason
    assert re.search(r"probe at L=\d+: an impulse at position \d+ changes the output at position \d+",
                     r.reason), r.reason


def test_bidirectional_conv_reason_names_the_padding(explained):
    _, rep = explained(get("neg_symmetric_conv1d"))
    (r,) = rep.refusals
    assert "non-causal" in r.reason and "padding=floor(L/2) on both sides" in r.reason, r.reason
    assert "2*floor(L/2) + 1 taps" in r.reason


# ----------------------------------------------------------------------------- block restarts

B16 = 16


class _RightPadBlocks(nn.Module):
    """Blocks of 16 counted from the START (right padding): causal and prefix consistent, but
    not one convolution over the sequence. ``n``: "fixed" (32, the matcher flags the size) or
    "padded" (2 * the padded length: the size check passes, only the probes at a block length
    see the restart)."""

    def __init__(self, n, d=6, vocab=11):
        super().__init__()
        self.n = n
        self.emb = nn.Embedding(vocab, d)
        self.k = nn.Parameter(torch.randn(B16, d) * 0.3)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.emb(ids)
        B, L, C = x.shape
        u = F.pad(x, (0, 0, 0, (-L) % B16))
        n = 2 * B16 if self.n == "fixed" else 2 * u.shape[1]
        blocks = u.reshape(B, -1, B16, C)
        y = torch.fft.irfft(torch.fft.rfft(blocks, n=n, dim=2) * torch.fft.rfft(self.k, n=n, dim=0),
                            n=n, dim=2)[:, :, :B16].contiguous()
        return self.head(y.reshape(B, -1, C)[:, :L])


@pytest.mark.parametrize("n", ["fixed", "padded"])
def test_right_padded_block_restart_is_named(n):
    torch.manual_seed(0)
    m = _RightPadBlocks(n).eval()
    x = torch.randint(0, 11, (2, 7))
    rep = lcsm_compile.explain(m, x)
    assert not rep.streamable
    (r,) = rep.refusals
    assert r.reason.startswith("block-restarting convolution: outputs restart every 16 positions"), r.reason
    assert "position 16 reaches outputs 16..31" in r.reason  # the probe that showed it
    assert "counted from the end" not in r.reason
    assert not RAW_SYMBOL.search(r.reason)


def test_backend_names_the_block_restart():
    """The backend probes the real inputs (its probe length is the call's): the symbolic graph
    of the second call (L = 37 holds two whole blocks) is refused as block-restarting, and the
    compiled model still computes exactly (it runs as captured)."""
    e = get("neg_block_restart")
    m = e.build()
    torch._dynamo.reset()  # earlier compiles of this model class would make the first call dynamic
    be = lcsm_compile.LcsmBackend()
    c = torch.compile(m, backend=be)
    for L in (20, 37):
        x = e.make_input(2, L)
        with torch.no_grad():
            torch.testing.assert_close(c(x), m(x), rtol=1e-5, atol=1e-5)
    reasons = [r.reason for rep in be.reports for r in rep.refusals]
    assert any(r.startswith("block-restarting convolution: outputs restart every 16 positions")
               for r in reasons), reasons
    assert not any(RAW_SYMBOL.search(r) for r in reasons), reasons


# ----------------------------------------------------------------------------- the helper

def test_user_expr_prints_sizes_in_L_and_B():
    s = sympy.Symbol("s96", integer=True, positive=True)
    b = sympy.Symbol("s75", integer=True, positive=True)
    ta = TimeAxis(s, b)
    padded = s + PythonMod(-s, 16)
    cases = {
        2 * s + PythonMod(-s, 16): "L + 16*ceil(L/16)",
        padded: "16*ceil(L/16)",
        FloorDiv(padded, 16): "ceil(L/16)",
        2 * FloorDiv(padded, FloorDiv(padded, 16)): "32",
        PowByNatural(2, CeilToInt(OpaqueUnaryFn_log2(ToFloat(2 * s)))): "2**ceil(log2(2*L))",
        PythonMod(s, 16): "(L mod 16)",
        FloorDiv(s, 2): "floor(L/2)",
        2 * s - 1: "2*L - 1",
        s * b: "B*L",
        sympy.Min(s, 256): "L",
        sympy.Integer(32): "32",
    }
    for e, want in cases.items():
        got = user_expr(e, ta)
        assert got == want, (e, got, want)
        assert ta.user_expr(e) == want
        assert not RAW_SYMBOL.search(got)
    other = sympy.Symbol("s33", integer=True, positive=True)
    assert user_expr(s + other, ta) == "L + N1"  # never a raw symbol
    assert user_expr(7, ta) == "7" and user_expr(None, ta) == "?"
    assert user_expr(2 * other, TimeAxis(sympy.Integer(12))) == "2*N1"  # a static graph


def test_records_print_fft_sizes_readably():
    e = get("pow2_log2_cf")
    rep = lcsm_compile.explain(e.build(), e.make_input(1, 6))
    assert rep.long_convs and all(c.fft_size == "2**ceil(log2(2*L))" for c in rep.long_convs), \
        [c.fft_size for c in rep.long_convs]
    assert all(c.u_shape.startswith("[B, ") and "L" in c.u_shape for c in rep.long_convs)
    assert not RAW_SYMBOL.search(str(rep))
