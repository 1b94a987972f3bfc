"""The reference models in lcsm_compile.models stream exactly (teacher forcing from prompts of
0, 1 and 7 positions) and their explain reports find every convolution."""

from __future__ import annotations

import pytest
import torch

import lcsm_compile
from lcsm_compile.models import HyenaLM, StripedHyenaLM

from ._golden import assert_golden, golden_forward


def _build(name):
    torch.manual_seed(0)
    if name == "hyena":
        return HyenaLM(vocab=48, d_model=24, n_layers=2, max_len=128).eval()
    return StripedHyenaLM(vocab=48, d_model=24, n_layers=2, state=4).eval()


@pytest.mark.parametrize("name", ["hyena", "striped"])
def test_model_explained_and_streamed_exactly(name):
    model = _build(name)
    x = torch.randint(0, 48, (2, 21), generator=torch.Generator().manual_seed(1))
    rep = lcsm_compile.explain(model, x[:, :9])
    assert rep.streamable and len(rep.long_convs) == 2 and len(rep.short_convs) == 2, str(rep)
    with torch.no_grad():
        ref = model(x)
    gold = golden_forward(model, x)
    for P in (0, 1, 7):
        s = lcsm_compile.session(model, example=x[:, :max(P, 1)], max_len=32)
        with torch.no_grad():
            outs = [s.prefill(x[:, :P])] + [s.step(x[:, t:t + 1]) for t in range(P, 21)]
        assert_golden(torch.cat(outs, 1), ref, gold, what=f"{name} P={P}")
