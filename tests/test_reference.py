"""The reference oracles (lazy, eager streaming) agree with the full FFT convolution."""

import pytest
import torch

from lcsm_compile import SessionError
from lcsm_compile.ops import causal_conv_direct, causal_conv_fft
from lcsm_compile.runtime.baselines import EagerConv, LazyConv


@pytest.mark.parametrize("cls", [LazyConv, EagerConv])
@pytest.mark.parametrize("P", [0, 1, 9])
def test_streaming_oracles(cls, P):
    L, B, C = 33, 2, 3
    u = torch.randn(B, C, L, dtype=torch.float64)
    k = torch.randn(C, 50, dtype=torch.float64)
    eng = cls(k, max_len=40, batch_size=B)
    ys = [eng.prefill(u[..., :P])] + [eng.step(u[..., t])[..., None] for t in range(P, L)]
    assert torch.allclose(torch.cat(ys, -1), causal_conv_direct(u, k), atol=1e-10)


@pytest.mark.parametrize("cls", [LazyConv, EagerConv])
def test_oracle_errors(cls):
    eng = cls(torch.randn(2, 4), max_len=2)
    with pytest.raises(SessionError):
        eng.step(torch.zeros(1, 3))
    eng.step(torch.zeros(1, 2))
    eng.step(torch.zeros(1, 2))
    with pytest.raises(SessionError, match="past max_len"):
        eng.step(torch.zeros(1, 2))


def test_fft_conv_shared_filter_and_low_precision():
    u = torch.randn(2, 3, 20)
    k = torch.randn(20)
    y = causal_conv_fft(u.bfloat16(), k)
    assert y.dtype == torch.bfloat16
    ref = causal_conv_direct(u.bfloat16().double(), k.double().expand(3, 20))
    assert (y.double() - ref).abs().max() <= 2e-2 * ref.abs().max()
