"""match_long_conv: FFT regions found by structure (u -> ... -> y), candidates only."""

import torch

from lcsm_compile.passes.match_long_conv import match_long_convs, match_scans
from lcsm_compile.pipeline import lower

from ._frontend_models import FFTConvCF, FFTConvCL, Negative, ids

aten = torch.ops.aten


def _regions(model, x, fn=match_long_convs):
    st = lower(model, x, until="analyze")  # the pipeline up to the pass under test
    cap, ta, dep = st.captured, st.ta, set(st.data_dep)
    return cap, ta, fn(cap.gm, ta, dep)


def test_rfft_region_channel_first():
    cap, ta, rs = _regions(FFTConvCF().eval(), ids(2, 6, 11))
    (r,) = rs
    assert r.problem is None and r.kind == "long"
    assert r.anchor.target == aten._fft_c2r.default
    assert r.y.target == aten.slice.Tensor  # the [:L] slice
    assert r.u_tdim == 2 and r.y_tdim == 2  # [B, C, L]
    # the region holds the data path only: pad, rfft, product, irfft, slice (not the filter)
    assert {n.target for n in r.nodes} >= {aten.constant_pad_nd.default, aten._fft_r2c.default,
                                          aten._fft_c2r.default, aten.slice.Tensor}
    assert all(n.op != "get_attr" for n in r.nodes)
    assert ta.is_fft(r.fft_size)


def test_complex_fft_region_channel_last_with_casts():
    cap, ta, rs = _regions(FFTConvCL().eval(), torch.randn(2, 7, 3))
    (r,) = rs
    assert r.problem is None and r.u_tdim == 1 and r.y_tdim == 1  # [B, L, D], FFT along dim 1
    assert r.anchor.target == aten._fft_c2c.default


def test_circular_fft_is_flagged():
    cap, ta, rs = _regions(FFTConvCF(n="L").eval(), ids(2, 6, 11))
    (r,) = rs
    assert r.problem is not None and "circular" in r.problem


class TwoSignals(torch.nn.Module):
    def forward(self, x):  # x: [B, L, D]; a product of two input spectra is not a conv
        L = x.shape[1]
        a, b = x.transpose(1, 2).chunk(2, dim=1)
        return torch.fft.irfft(torch.fft.rfft(a, n=2 * L) * torch.fft.rfft(b, n=2 * L), n=2 * L)[..., :L]


def test_two_input_signals_are_flagged():
    cap, ta, rs = _regions(TwoSignals(), torch.randn(2, 5, 4))
    (r,) = rs
    assert r.problem is not None and "2 input-dependent signals" in r.problem


def test_cumsum_over_time_is_a_scan_region():
    cap, ta, rs = _regions(Negative("cumsum").eval(), ids(2, 6, 8), match_scans)
    (r,) = rs
    assert r.problem is None and r.k_origin.startswith("scan") and r.u_tdim == 1
