"""match_short_conv: depthwise convolutions over time (short, and direct long)."""

import torch

from lcsm_compile.passes.match_short_conv import match_conv_regions
from lcsm_compile.pipeline import lower

from ._frontend_models import DirectLongConv, Negative, ShortConvLM, ids

aten = torch.ops.aten


def _regions(model, x):
    st = lower(model, x, until="analyze")  # the pipeline up to the pass under test
    cap, ta, dep = st.captured, st.ta, set(st.data_dep)
    return match_conv_regions(cap.gm, ta, dep)


def test_short_convs_symmetric_pad_slice_and_left_pad():
    rs = _regions(ShortConvLM().eval(), ids(2, 6, 9))
    # Conv1d(k=3, padding=2)[..., :L] and F.pad(u, (3, 0)) + conv1d(k=4); the k=1 Conv1d is
    # a per-position map and is not a region
    assert len(rs) == 2
    a, b = rs
    assert a.kind == b.kind == "short" and a.problem is None and b.problem is None
    assert a.y.target == aten.slice.Tensor and a.left_pad == 2
    assert b.nodes[0].target == aten.constant_pad_nd.default and b.left_pad == 3


def test_direct_long_conv_is_a_long_region():
    (r,) = _regions(DirectLongConv().eval(), ids(2, 6, 7))
    assert r.kind == "long" and r.problem is None


def test_same_padding_is_a_candidate_left_to_the_probe():
    # padding=1 with k=3 reads one future position: structurally fine, the probe refuses it
    (r,) = _regions(Negative("sameconv").eval(), ids(2, 6, 8))
    assert r.kind == "short" and r.problem is None and r.left_pad == 1


class MixingConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c = torch.nn.Conv1d(4, 4, 3, padding=2)

    def forward(self, x):  # [B, L, 4]
        return self.c(x.transpose(1, 2))[..., : x.shape[1]]


def test_channel_mixing_conv_is_flagged():
    (r,) = _regions(MixingConv(), torch.randn(2, 5, 4))
    assert r.problem is not None and "depthwise" in r.problem
