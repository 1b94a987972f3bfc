"""Scale factors that cancel across a long-conv region are folded; a scale that really depends on
L is refused (norm="ortho" FFTs compensated by sqrt(n) in several places)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import lcsm_compile

from ._golden import assert_golden, golden_forward, tensors


class OrthoConv(nn.Module):
    def __init__(self, variant: str, d: int = 4, taps: int = 64):
        super().__init__()
        self.variant = variant
        self.k = nn.Parameter(torch.randn(d, taps) / 8)
        self.inp = nn.Linear(3, d)

    def forward(self, x):
        u = self.inp(x).transpose(1, 2)
        L = u.shape[-1]
        n = 2 * L
        U = torch.fft.rfft(u, n=n, norm="ortho")
        K = torch.fft.rfft(self.k[:, :L], n=n, norm="ortho")
        v = self.variant
        if v == "after_slice":
            y = torch.fft.irfft(U * K, n=n, norm="ortho")[..., :L] * math.sqrt(n)
        elif v == "pow_half":
            y = torch.fft.irfft(U * K, n=n, norm="ortho")[..., :L] * n ** 0.5
        elif v == "before_slice":
            y = (torch.fft.irfft(U * K, n=n, norm="ortho") * math.sqrt(n))[..., :L]
        elif v == "in_spectrum":
            y = torch.fft.irfft(U * K * math.sqrt(n), n=n, norm="ortho")[..., :L]
        elif v == "tensor_sqrt":
            y = torch.fft.irfft(U * K, n=n, norm="ortho")[..., :L] * torch.tensor(float(n)).sqrt()
        else:  # "times_L": the output grows with the total length: not a convolution
            y = torch.fft.irfft(U * K, n=n, norm="ortho")[..., :L] * L
        return y.transpose(1, 2)


@pytest.mark.parametrize("variant", ["after_slice", "pow_half", "before_slice", "in_spectrum", "tensor_sqrt"])
def test_cancelling_scales_stream_exactly(variant):
    m = OrthoConv(variant).eval()
    x = torch.randn(2, 30, 3)
    sess = lcsm_compile.session(m, x[:, :3], max_len=40)
    outs = [sess.prefill(x[:, :7])] + [sess.step(x[:, t:t + 1]) for t in range(7, 30)]
    with torch.no_grad():
        ref = m(x)
    assert_golden(torch.cat(outs, 1), ref, golden_forward(m, x), what=variant)


def test_a_scale_that_depends_on_L_is_refused():
    m = OrthoConv("times_L").eval()
    rep = lcsm_compile.explain(m, torch.randn(2, 6, 3))
    assert not rep.streamable and "not prefix consistent" in rep.refusals[0].reason
    assert rep.refusals[0].source and "test_scale_idioms.py" in rep.refusals[0].source
