"""The memory model (runtime/memory.py), the memory reductions (one buffer for inputs and
accumulators, filters held once, split levels without spectra, bounded prefill and fold), and
checkpoint / resume of a long run across processes."""

import os
import subprocess
import sys
import textwrap
from collections import Counter

import pytest
import torch

import lcsm_compile
from lcsm_compile import OnlineConv, SessionError
from lcsm_compile.models import HyenaLM
from lcsm_compile.ops import causal_conv_fft
from lcsm_compile.pipeline import plan
from lcsm_compile.runtime import memory, schedule
from lcsm_compile.runtime.partitioned import prompt_conv

from ._golden import assert_golden, golden_forward, tensors

# engine options that put every path in a small session: delayed levels from 4, FFT tiles from
# 8, split levels from 16 (units of FFTs of 16 points), chunks of one unit
SMALL = {"block": 2, "fft_from": 8, "delay_from": 4, "split_from": 16, "chunk_flops": 1.0}


def _build():
    torch.manual_seed(0)
    return HyenaLM(vocab=32, d_model=16, n_layers=2, max_len=4096).eval()


_MODEL = []


def _model():
    """One small model for the whole file: its lowering is cached per input signature and
    max_len, so the tests share it."""
    if not _MODEL:
        _MODEL.append(_build())
    return _MODEL[0]


def _golden(u, k):
    return causal_conv_fft(u.double(), k.double())


# ----------------------------------------------------------------------------- the schedule
@pytest.mark.parametrize("L,P,block,D,rows,chunk,split", [
    (200, 0, 2, 4, 3, 1.0, 8), (300, 7, 4, 8, 5, 1e3, 16), (257, 1, 1, 2, 2, 1.0, 4), (131, 3, 2, 2, 7, 1.0, 2)])
def test_split_levels_cover_every_pair_once(L, P, block, D, rows, chunk, split):
    """Split levels (tiles in units): every (s, t, row) exactly once; every unit reads flushed
    inputs and writes outputs of blocks loaded later; the FLOP count is the sum of the steps'."""
    cells = Counter((s, t, r) for _, s, t, r in schedule.iter_row_cells(L, P, block, D, rows, chunk, 16, split))
    want = {(s, t, r) for t in range(L) for s in range(t + 1) for r in range(rows)}
    assert set(cells) == want and max(cells.values()) == 1
    n_split = 0
    for t in range(P, L):
        flushed = t + 1 if schedule.is_boundary(t, P, L, block) else schedule.block_start(t, P, block)
        for w in schedule.step_work(t, P, L, block, D, rows, chunk, 16, split):
            n_split += bool(w.units)
            assert w.s1 <= flushed
            assert all(schedule.block_start(tt, P, block) >= t + 1 for _, tt, _ in schedule.work_cells(w))
    assert n_split > 0
    if P == 0:
        f = schedule.tiling_flops(L, rows, block, 16, 1, D, chunk, split)
        assert f["total"] == pytest.approx(sum(schedule.step_flops(L, rows, block, 16, D, 0, chunk, split)), rel=1e-12)


def test_default_split_bounds_the_step():
    """At 2^20 positions and the default chunk budget, no step does more than one row of a
    level below split_from or a few units (the 2^18 level's row was ~10x a chunk)."""
    rows, block, fft_from, L = 256, 32, 256, 1 << 20
    S = schedule.default_split_from(schedule.CHUNK_FLOPS, fft_from)
    assert S == 1 << 16
    D = schedule.default_delay_from(rows, block, fft_from)
    sched = schedule.Schedule(1024, L, block, D, rows, schedule.CHUNK_FLOPS, fft_from)
    worst = 0.0
    for l, (U, W, p, c) in enumerate(sched.table):
        w = sched.level_chunk(1024 + U * 2 + c - 1, l)  # a chunk of tile a = 1
        assert w is not None and (bool(w.units) == (U >= S))
        worst = max(worst, schedule.work_flops(w, fft_from))
    old = schedule.tile_flops(1 << 18, 2, True)  # one row of the largest level, unsplit
    assert worst < old / 5


# ----------------------------------------------------------------------------- the engine
@pytest.mark.parametrize("kernels", ["auto", "torch"])
def test_engine_split_levels_exact_and_resumable(kernels):
    """Split levels and the one-buffer layout: fp64 golden; a state saved halfway through a split
    tile resumes bitwise in a fresh engine; the earlier two-tensor state format still loads."""
    L, P, B, C = 300, 5, 2, 3
    u = torch.randn(B, C, L, dtype=torch.float64)
    k = torch.randn(C, L, dtype=torch.float64) * torch.exp(-torch.arange(L) / 200.0)
    opts = dict(max_len=L, batch_size=B, kernels=kernels, **SMALL)
    eng = OnlineConv(k, **opts)
    assert eng._split_levels and eng.merged and eng.state_tensors()["acc"].shape == (B, C, 0)
    assert all(d is None for (U, o), (kind, d) in eng._tile_data.items() if kind == "split")
    ys = [eng.prefill(u[..., :P])]
    for t in range(P, 150):
        ys.append(eng.step(u[..., t])[..., None])
    state = eng.state_dict()
    assert set(state) >= {"line", "block_inputs"} and state["schedule"]["split_from"] == 16
    legacy = {"position": state["position"], "prefill_len": state["prefill_len"], "schedule": state["schedule"],
              "hist": state["line"].clone(), "acc": state["line"].clone()}
    b = schedule.block_start(150, P, 2)
    legacy["hist"][..., b:150] = state["block_inputs"].permute(1, 2, 0)
    for t in range(150, L):
        ys.append(eng.step(u[..., t])[..., None])
    y = torch.cat(ys, -1)
    assert (y - _golden(u, k)).abs().max() < 1e-10
    for st in (state, legacy):
        fresh = OnlineConv(k, **opts)
        fresh.load_state_dict(st)
        rest = torch.stack([fresh.step(u[..., t]) for t in range(150, L)], -1)
        assert torch.equal(rest, y[..., 150:])
    # a state without split_from cannot resume an engine with split levels
    with pytest.raises(SessionError, match="split_from"):
        OnlineConv(k, **opts).load_state_dict({key: v for key, v in state.items() if key != "schedule"})


def test_engine_adopts_the_earlier_separate_layout():
    """State tensors with a full ``acc`` (exported before the one-buffer layout) still stream."""
    L, C = 64, 3
    u = torch.randn(1, C, L, dtype=torch.float64)
    k = torch.randn(C, L, dtype=torch.float64)
    eng = OnlineConv(k, max_len=L, block=2, fft_from=4, delay_from=4)
    st = {n: t.clone() for n, t in eng.state_tensors().items()}
    st["acc"] = torch.zeros(1, C, L, dtype=torch.float64)
    st["meta"][3] += 1
    old = OnlineConv(k, max_len=L, block=2, fft_from=4, delay_from=4, state=st)
    assert not old.merged and old.acc is st["acc"]
    y = torch.cat([old.prefill(u[..., :3])] + [old.step(u[..., t])[..., None] for t in range(3, L)], -1)
    assert (y - _golden(u, k)).abs().max() < 1e-10


@pytest.mark.parametrize("P,n,block_bytes", [(1, 50, 1 << 20), (7, 300, 256), (64, 1000, 4096), (5, 0, 1 << 20)])
def test_prompt_conv_in_blocks(P, n, block_bytes):
    """The prefill's contribution in output blocks and channel chunks equals one FFT convolution."""
    B, C = 2, 5
    u = torch.randn(B, C, P, dtype=torch.float64)
    k = torch.randn(C, P + n, dtype=torch.float64)
    acc = torch.zeros(B, C, n, dtype=torch.float64)
    y = prompt_conv(u, k, acc, block_bytes=block_bytes)
    full = torch.zeros(B, C, P + n, dtype=torch.float64)
    full[..., :P] = u
    ref = _golden(full, k)
    assert torch.allclose(y, ref[..., :P], rtol=0, atol=1e-10) and torch.allclose(acc, ref[..., P:], rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- the model
@pytest.mark.parametrize("B,kernels,options", [(3, "torch", SMALL), (1, "auto", None)])
def test_memory_model_is_the_allocated_state(B, kernels, options):
    """The prediction (before allocation) equals the bytes of the tensors the session allocates,
    part by part (split caches: an upper bound of what they hold); the filters are held once (no
    folded copy left beside the engine's)."""
    model = _model()
    x = torch.randint(0, 32, (B, 9))
    sess = lcsm_compile.session(model, x, max_len=211, engine_options=options, kernels=kernels)
    pred, meas = sess.memory.by_name(), sess.memory.measured.by_name()
    for part in ("buffer", "filters", "spectra", "red-cell block", "ring buffers", "toeplitz"):
        assert pred.get(part, 0) == meas.get(part, 0), (part, pred, meas)
    eng = sess.program.engines[0]
    folded = sess.program.plan.folded.filters
    assert all(f.untyped_storage().data_ptr() == eng.k.untyped_storage().data_ptr() for f in folded.values())
    if options:  # split levels: no spectra for them, a bounded cache
        assert eng._split_levels and pred["split caches"] >= meas.get("split caches", 0)
        out = sess.prefill(x)
        nxt = out[:, -1:].argmax(-1)
        for _ in range(150):
            nxt = sess.step(nxt)[:, -1:].argmax(-1)
        assert memory.measure(sess.program).by_name()["split caches"] <= pred["split caches"]
    assert "buffer" in str(sess.memory) and "B x C x max_len" in str(sess.memory)


def test_memory_check_refuses_and_names_what_fits(monkeypatch):
    """Too little memory: a SessionError naming the parts and the largest max_len that fits,
    before anything of max_len size is allocated; that max_len then passes the check."""
    model = _model()
    x = torch.randint(0, 32, (4, 8))
    eo = {"block": 4, "fft_from": 16, "delay_from": 16}  # batch 4, spectra of every level: the state dominates
    avail = [1 << 40]
    monkeypatch.setattr(memory, "available_bytes", lambda: avail[0])
    rep = lcsm_compile.session(model, x, max_len=4096, engine_options=eo).memory
    fold = rep.transients[0].bytes
    assert rep.transients[0].name == "fold" and fold < rep.allocation_bytes
    avail[0] = int((fold + rep.allocation_bytes) / 2 / memory.HEADROOM)  # the filters fold, the state does not fit
    with pytest.raises(SessionError, match=r"would not fit in memory.*buffer.*largest max_len that fits is about") as e:
        lcsm_compile.session(model, x, max_len=4096, engine_options=eo)
    fits = e.value.max_len_fits
    assert 0 < fits < 4096 and e.value.memory.max_len == 4096
    # a session at that length passes the same check (planned from the same lowering)
    pl = plan(lcsm_compile.api._lowered(model, x, None, 4096), fits, 4)
    mopts = dict(engine_options=eo, prompt_len=8)
    rep = memory.plan_report(pl, **mopts)
    memory.check_plan(pl, rep, **mopts)
    assert rep.allocation_bytes <= memory.HEADROOM * avail[0] < e.value.memory.allocation_bytes
    avail[0] = 1000  # not even the filters fold
    with pytest.raises(SessionError, match="filter folding would not fit"):
        lcsm_compile.session(model, x, max_len=4096, engine_options=eo)
    lcsm_compile.session(model, x, max_len=4096, engine_options=eo, memory_check=False)  # the check can be skipped


def test_explain_reports_memory():
    model = _model()
    x = torch.randint(0, 32, (1, 8))
    exp = lcsm_compile.explain(model, x, max_len=1024)
    assert exp.memory.by_name()["buffer"] == 32 * 1024 * 4 and "buffer" in str(exp)
    plan = lcsm_compile.session(model, x, max_len=211).program.plan
    assert "1 x 32 x max_len x 4" in str(memory.formulas(plan))


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("P,B", [(0, 1), (1, 3), (5, 1)])
def test_teacher_forcing_with_split_levels(P, B):
    """Prefill + steps == the full forward at every position (fp64 golden), with every
    reduction on: one buffer, shared filters, split levels, blocked prefill; odd max_len."""
    model = _model()
    L = 61
    x = torch.randint(0, 32, (B, L))
    sess = lcsm_compile.session(model, x[:, :max(P, 2)], max_len=211, engine_options=SMALL)
    assert sess.program.engines[0]._split_levels
    outs = [tensors(sess.prefill(x[:, :P]))[0]]
    for t in range(P, L):
        outs.append(tensors(sess.step(x[:, t:t + 1]))[0])
    with torch.no_grad():
        ref = tensors(model(x))
    assert_golden([torch.cat(outs, 1)], ref, golden_forward(model, x), what=f"P={P} B={B}")


def test_fold_in_less_memory_gives_the_same_values():
    """The fold stage's lean evaluation (fused pad + transform, in-place products, compact
    results) gives bitwise the filters of the plain evaluation, and the memory model expects
    less memory from it."""
    from lcsm_compile.capture import probe_input
    from lcsm_compile.passes.common import subgraph_module
    from lcsm_compile.passes.fold_filters import frontier
    from lcsm_compile.passes.lean_eval import LeanInterpreter

    low = lcsm_compile.api._lowered(_model(), torch.randint(0, 32, (1, 9)), None, 211)  # the session tests' lowering
    front = frontier(low.gm, low.analysis)
    sub = subgraph_module(low.gm, front)
    x = probe_input(low.capture_example, 200, 1, batch=1)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(sub(x), LeanInterpreter(sub).run(x)))
    need = set()
    stack = list(front)
    while stack:
        n = stack.pop()
        if n not in need:
            need.add(n)
            stack.extend(n.all_input_nodes)
    plain, _ = memory.graph_peak(low.gm, 1 << 20, 1, low.ta, need)
    lean, held = memory.graph_peak(low.gm, 1 << 20, 1, low.ta, need, compact=True)
    filters = 2 * 16 * (1 << 20) * 4  # two [16, L] fp32 filters (and a few small tables)
    assert lean < plain and filters <= held < 1.1 * filters


# ----------------------------------------------------------------------------- long runs
_RESUME = textwrap.dedent("""
    import sys, torch, lcsm_compile
    from lcsm_compile.models import HyenaLM
    torch.manual_seed(0)
    model = HyenaLM(vocab=32, d_model=16, n_layers=2, max_len=4096).eval()
    sess = lcsm_compile.session(model, torch.zeros(1, 9, dtype=torch.long), max_len=211,
                                engine_options=dict(block=2, fft_from=8, delay_from=4, split_from=16,
                                                    chunk_flops=1.0))
    sess.load_state_dict(torch.load(sys.argv[1]))
    x = torch.load(sys.argv[2])
    outs = [sess.step(x[:, t:t + 1]) for t in range(sess.position, x.shape[1])]
    torch.save(torch.cat(outs, 1), sys.argv[3])
""")


def test_checkpoint_resumes_in_another_process(tmp_path):
    """A run checkpointed with state_dict to a file resumes in another process with bitwise
    the same outputs (halfway through split tiles)."""
    model = _model()
    x = torch.randint(0, 32, (1, 211))
    sess = lcsm_compile.session(model, x[:, :9], max_len=211, engine_options=SMALL)
    sess.prefill(x[:, :9])
    for t in range(9, 120):
        sess.step(x[:, t:t + 1])
    torch.save(sess.state_dict(), tmp_path / "state.pt")
    torch.save(x, tmp_path / "x.pt")
    rest = torch.cat([sess.step(x[:, t:t + 1]) for t in range(120, 211)], 1)
    # the other process runs another intra-op thread count: the state and what each process
    # derives itself (filter spectra: torch's FFTs round differently at different thread counts)
    # must not depend on it
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                                      os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="2" if torch.get_num_threads() == 1 else "1")
    subprocess.run([sys.executable, "-c", _RESUME, str(tmp_path / "state.pt"), str(tmp_path / "x.pt"),
                    str(tmp_path / "out.pt")], check=True, env=env, timeout=300)
    assert torch.equal(torch.load(tmp_path / "out.pt"), rest)


def test_generate_progress_shows_memory(capsys):
    model = _model()
    lcsm_compile.generate(model, torch.randint(0, 32, (1, 4)), max_new_tokens=8, progress=True, max_len=211)
    err = capsys.readouterr().err
    assert "tok/s" in err and "RSS" in err and "predicted peak" in err
