"""The per-step ops as C++ CPU kernels (lcsm_compile/codegen/cpu_ops.py): the same bits as their
Python bodies, the Python body for every other case (errors included), quiet spans that are
exactly the steps without tile work, and states saved and loaded across them."""

import pytest
import torch

import lcsm_compile
from lcsm_compile.codegen import cpu_ops
from lcsm_compile.errors import SessionError
from lcsm_compile.models import HyenaLM, StripedHyenaLM
from lcsm_compile.runtime import modal as modal_rt
from lcsm_compile.runtime import schedule, state_ops
from lcsm_compile.runtime.engine import OnlineConv

from .test_session import rel, teacher_force, tensors

MAX_LEN = 160
OPTS = {"block": 4, "fft_from": 8, "delay_from": 16, "chunk_flops": 2e3}  # delayed chunks every few steps


@pytest.fixture(scope="module")
def cxx():
    if not state_ops.use_cpp_step_ops():
        pytest.skip(cpu_ops.status())
    yield
    state_ops.use_cpp_step_ops()  # leave them on, as a compiled step would


@pytest.fixture
def spies(monkeypatch, cxx):
    """Count the calls of the Python bodies that the C++ kernels fall back to."""
    calls = {n: 0 for n in cpu_ops.OPS}

    def spy(name, fn):
        def f(*a):
            calls[name] += 1
            return fn(*a)
        return f

    for mod, name in ((state_ops, "_ring_step"), (state_ops, "_online_diag"), (state_ops, "_online_advance"),
                      (modal_rt, "_modal_step")):
        monkeypatch.setattr(mod, name, spy(name[1:], getattr(mod, name)))
    cpu_ops.deactivate()
    assert state_ops.use_cpp_step_ops()  # the fallbacks are now the spies
    yield calls
    cpu_ops.deactivate()
    monkeypatch.undo()
    state_ops.use_cpp_step_ops()


def _both(model, x, P, **opts):
    """Teacher-forced outputs with the C++ kernels, then with the Python bodies."""
    out = []
    for on in (True, False):
        state_ops.use_cpp_step_ops() if on else cpu_ops.deactivate()
        assert cpu_ops.active() == on
        sess = lcsm_compile.session(model, x[:, :max(P, 2)], max_len=MAX_LEN, **opts)
        out.append(teacher_force(sess, x, P))
    state_ops.use_cpp_step_ops()
    return out


def _hyena():
    return HyenaLM(vocab=64, d_model=16, n_layers=2, max_len=MAX_LEN).eval()


@pytest.mark.parametrize("P,B", [(0, 1), (37, 2)])
def test_cpp_ops_give_the_python_bodies_bits(cxx, P, B):
    model = _hyena()
    x = torch.randint(0, 64, (B, MAX_LEN))
    got, py = _both(model, x, P, engine_options=OPTS)
    for a, b in zip(got, py):
        assert torch.equal(a, b)
    with torch.no_grad():
        ref = tensors(model(x))
    assert rel(got[0], ref[0]) < 1e-4


def test_cpp_ops_run_the_common_path_without_python(spies):
    model = _hyena()
    x = torch.randint(0, 64, (1, MAX_LEN))
    P = 5
    sess = lcsm_compile.session(model, x[:, :P], max_len=MAX_LEN, engine_options=OPTS)
    teacher_force(sess, x, P)
    steps = MAX_LEN - P
    assert spies["ring_step"] == 0 and spies["online_diag"] == 0
    # the advance runs in Python only at steps with tile work (block ends, delayed chunks)
    eng = sess.program.engines[0]
    work = sum(1 for t in range(P, MAX_LEN) if eng._sched.work(t)
               or schedule.is_boundary(t, P, MAX_LEN, eng.block))
    assert 0 < spies["online_advance"] <= work + 1 < steps


def test_modal_step_in_cpp(spies):
    torch.manual_seed(1)
    model = StripedHyenaLM(vocab=64, d_model=16, n_layers=2).eval()
    x = torch.randint(0, 64, (2, 96))
    sess = lcsm_compile.session(model, x[:, :7], max_len=96)
    assert "modal" in sess.kernel_note
    got = teacher_force(sess, x, 7)
    assert spies["modal_step"] == 0
    cpu_ops.deactivate()
    sess2 = lcsm_compile.session(model, x[:, :7], max_len=96)
    py = teacher_force(sess2, x, 7)
    state_ops.use_cpp_step_ops()
    for a, b in zip(got, py):
        assert torch.equal(a, b)


def test_kernels_torch_rings_run_their_python_body(spies):
    model = _hyena()
    x = torch.randint(0, 64, (1, 64))
    sess = lcsm_compile.session(model, x[:, :3], max_len=64, kernels="torch")
    got = teacher_force(sess, x, 3)
    assert spies["ring_step"] > 0  # the torch twin was asked for: the C++ kernel hands it over
    with torch.no_grad():
        ref = tensors(model(x))
    assert rel(got[0], ref[0]) < 1e-4


def test_errors_come_through_the_cpp_kernels(cxx):
    model = _hyena()
    x = torch.randint(0, 64, (1, 40))
    sess = lcsm_compile.session(model, x[:, :2], max_len=40)
    teacher_force(sess, x, 2)
    with pytest.raises(SessionError, match="max_len"):
        sess.step(x[:, :1])
    eng = sess.program.engines[0]
    st = eng.state_tensors()
    meta = st["meta"].clone()
    meta[0] = meta[2] + eng.block + 3  # outside the current block: the Python body says so
    u = torch.zeros(1, 4)
    with pytest.raises(SessionError, match="outside the current block"):
        torch.ops.lcsm.online_diag(u, st["blk_hist"], st["blk_acc"], eng._kb, meta, 0)


def test_state_saved_inside_a_quiet_span_resumes_exactly(cxx):
    """Save at positions inside a block whose last steps the C++ advance moved over (the
    engine object's position is behind its state's), run on, then load the earlier state into
    the same session (a rewind) and into a new one: the same bits as running straight on."""
    model = _hyena()
    x = torch.randint(0, 64, (2, MAX_LEN))
    P, opts = 9, {**OPTS, "chunk_flops": 1e6}  # few delayed chunks: most steps are quiet
    sess = lcsm_compile.session(model, x[:, :P], max_len=MAX_LEN, engine_options=opts)
    eng = sess.program.engines[0]
    fast = 0
    for cut in (42, 43, 51, 90):
        sess.reset()
        sess.prefill(x[:, :P])
        for t in range(P, cut):
            sess.step(x[:, t:t + 1])
        fast += eng.__dict__["position"] != int(eng.meta[0])  # moved by C++, not yet synced
        saved = sess.state_dict()
        assert saved["position"] == cut
        ref = [tensors(sess.step(x[:, t:t + 1]))[0] for t in range(cut, MAX_LEN)]
        sess.load_state_dict(saved)  # back to cut, in the same session
        again = [tensors(sess.step(x[:, t:t + 1]))[0] for t in range(cut, MAX_LEN)]
        fresh = lcsm_compile.session(model, x[:, :P], max_len=MAX_LEN, engine_options=opts)
        fresh.load_state_dict(saved)
        other = [tensors(fresh.step(x[:, t:t + 1]))[0] for t in range(cut, MAX_LEN)]
        for a, b, c in zip(ref, again, other):
            assert torch.equal(a, b) and torch.equal(a, c)
    assert fast > 0


def test_quiet_span_is_exactly_the_steps_without_tile_work():
    """``OnlineConv.quiet_until``: every step before it has no tile work, and the step it
    names has some (or is the last)."""
    torch.manual_seed(0)
    C, L, P = 3, 300, 11
    eng = OnlineConv(torch.randn(C, L), max_len=L, batch_size=1, block=4, fft_from=8, delay_from=16,
                     chunk_flops=2e3, kernels="torch")
    eng.prefill(torch.randn(1, C, P))
    sched = eng._sched
    busy = {t for t in range(P, L) if sched.work(t) or schedule.is_boundary(t, P, L, eng.block)}
    for t in range(P, L):
        q = eng.quiet_until()
        assert not any(s in busy for s in range(t, q))
        assert q in busy or q == L - 1
        eng.step(torch.randn(1, C))


def test_compiled_step_with_inductors_cpp_wrapper(cxx, monkeypatch):
    """The product default for compiled CPU steps (the suite runs the Python wrapper for time):
    Inductor's C++ wrapper around the kernels, teacher-forced exact against the uncompiled
    graph, and the session says which wrapper runs."""
    monkeypatch.setenv("LCSM_CPP_WRAPPER", "1")
    model = _hyena()
    x = torch.randint(0, 64, (2, 48))
    sess = lcsm_compile.session(model, x[:, :5], max_len=48, compile_step=True)
    got = teacher_force(sess, x, 5)
    fn = sess.program.step_fn.fn
    assert sess.program.step_fn.failed is None and fn.wrapper == "C++", fn.wrapper_note
    assert "Inductor C++ wrapper" in sess.kernel_note
    ref = teacher_force(lcsm_compile.session(model, x[:, :5], max_len=48, compile_step=False), x, 5)
    assert rel(got[0], ref[0]) < 1e-5
