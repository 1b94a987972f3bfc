"""The stage runner: named pure stages, run in order, timed, logged, dumped, stoppable."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

import lcsm_compile
from lcsm_compile.pipeline import LOWER, PLAN, Stage, lower, plan, run_stages

from ._frontend_models import FFTConvCF, Negative, ids


def test_lower_and_plan_are_straight_lines_of_named_stages():
    assert [s.name for s in LOWER] == ["capture", "analyze", "match", "verify", "rewrite", "classify", "check"]
    assert [s.name for s in PLAN] == ["fold", "shapes", "groups", "programs"]


def test_until_stops_after_the_named_stage_and_times_each_stage():
    m, x = FFTConvCF().eval(), ids(2, 6, 11)
    st = lower(m, x, until="match")
    assert list(st.stage_times) == ["capture", "analyze", "match"]
    assert st.regions and st.gm is None and st.analysis is None  # later stages did not run
    full = lower(m, x)
    assert list(full.stage_times) == [s.name for s in LOWER] and full.streamable
    with pytest.raises(ValueError, match="no stage 'bogus'"):
        lower(m, x, until="bogus")


def test_stages_are_pure_the_input_state_is_unchanged():
    m, x = FFTConvCF().eval(), ids(2, 6, 11)
    st = lower(m, x, until="verify")
    before = (st.regions, st.refusals, st.stage_times)
    after = run_stages(st, [s for s in LOWER if s.name in ("rewrite", "classify", "check")])
    assert (st.regions, st.refusals, st.stage_times) == before and st.gm is None
    assert after.gm is not None and after.streamable
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.gm = None


def test_valid_range_does_not_depend_on_what_was_printed():
    m, x = FFTConvCF().eval(), ids(2, 6, 11)
    low = lower(m, x)
    r0 = low.valid_range
    str(lcsm_compile.explain(m, x))  # formatting reads every expression
    assert low.valid_range == r0 == lower(m, x).valid_range


def test_debug_dir_gets_one_dump_per_stage(tmp_path):
    m, x = FFTConvCF().eval(), ids(2, 6, 11)
    low = lower(m, x, debug_dir=str(tmp_path))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"{i:02d}_{s.name}.txt" for i, s in enumerate(LOWER)]
    assert "lcsm.long_conv" in (tmp_path / "04_rewrite.txt").read_text()
    pl = plan(low, 32, 2, debug_dir=str(tmp_path / "plan"))
    assert sorted(p.name for p in (tmp_path / "plan").iterdir()) == [f"{i:02d}_{s.name}.txt" for i, s in enumerate(PLAN)]
    assert pl.groups.groups and pl.step_gm is not None


def test_stages_are_logged(caplog):
    with caplog.at_level(logging.DEBUG, logger="lcsm_compile"):
        lower(FFTConvCF().eval(), ids(2, 6, 11), until="analyze")
    assert any("lcsm stage capture" in r.message for r in caplog.records)


def test_refusals_are_data_until_an_entry_point_raises():
    m, x = Negative("flip").eval(), ids(2, 6, 8)
    low = lower(m, x)  # no exception
    assert not low.streamable and low.refusals and low.refusals[0].source
    with pytest.raises(ValueError, match="streamable"):
        plan(low, 16, 1)
    with pytest.raises(lcsm_compile.UnsupportedModelError) as info:
        lcsm_compile.session(m, x, max_len=16)
    assert info.value.source and info.value.op


def test_a_halted_state_skips_the_rest():
    seen = []

    def stop(s):
        seen.append("stop")
        return dataclasses.replace(s, halted=True)

    def never(s):
        seen.append("never")
        return s

    st = run_stages(lower(FFTConvCF().eval(), ids(2, 6, 11), until="capture"),
                    [Stage("stop", stop), Stage("never", never)])
    assert seen == ["stop"] and st.halted and "never" not in st.stage_times


def test_capture_failure_halts_lower_with_a_refusal():
    class Breaks(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: no graph generic in the input
                return x * 2
            return x

    low = lower(Breaks(), torch.randn(2, 5, 3))
    assert low.halted and not low.streamable and low.refusals
    assert list(low.stage_times) == ["capture"]
