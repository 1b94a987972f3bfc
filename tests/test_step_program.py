"""The step program as ONE graph of stateful ``lcsm`` ops (issue #7 of the brief, item 1).

The online engine's per-step work and the short convolutions' ring buffers are ``lcsm::`` ops
on state tensors (the programs' buffers), so the step program compiles whole
(``fullgraph=True``, no graph break) and exports with ``torch.export`` with the ops as nodes.
Every check is teacher forcing: prefill + steps against the model's full forward.
"""

from __future__ import annotations

import gc

import pytest
import torch
import torch.fx as fx

import lcsm_compile
from lcsm_compile import SessionError
from lcsm_compile.models import HyenaLM, StripedHyenaLM

from ._golden import assert_golden, golden_forward, tensors

OPS = torch.ops.lcsm


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _steps(fn, x, P, pos=None):
    """Outputs of positions P.. through a step callable ``fn(x_t, pos) -> list``."""
    pos = torch.zeros(1, dtype=torch.long) if pos is None else pos
    outs = []
    with torch.no_grad():
        for t in range(P, x.shape[1]):
            pos.fill_(t)
            outs.append(list(fn(x[:, t:t + 1].contiguous(), pos)))
    return [torch.cat([o[i] for o in outs], 1) for i in range(len(outs[0]))]


def _prefilled(model, x, P, max_len, **opts):
    sess = lcsm_compile.session(model, x[:, :max(P, 2)], max_len=max_len, **opts)
    first = tensors(sess.prefill(x[:, :P]))
    return sess, first


def _op_names(graph: fx.Graph) -> list:
    """The ops a graph calls, an ``auto_functionalized`` node counted as the op it wraps."""
    out = []
    for n in graph.nodes:
        if n.op == "call_function":
            tgt = n.args[0] if "auto_functionalized" in str(n.target) else n.target
            out.append(str(tgt))
    return out


def _targets(gm: fx.GraphModule) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def test_step_program_is_one_graph_of_lcsm_ops():
    """One online_diag per long convolution, one ring_step per short one, one online_advance per
    group after every other computation; the prefill likewise; no Python slots left."""
    model = HyenaLM(vocab=32, d_model=16, n_layers=3, max_len=64).eval()
    sess = lcsm_compile.session(model, torch.randint(0, 32, (2, 5)), max_len=64)
    prog = sess.program
    step = _targets(prog.step_gm)
    assert step.count(OPS.online_diag.default) == len(prog.longs) == 3
    assert step.count(OPS.ring_step.default) == len(prog.shorts) == 3
    assert step.count(OPS.online_advance.default) == len(prog.engines)
    nodes = [n for n in prog.step_gm.graph.nodes if n.op == "call_function"]
    first_adv = min(i for i, n in enumerate(nodes) if n.target == OPS.online_advance.default)
    assert all(n.target == OPS.online_advance.default for n in nodes[first_adv:])
    pre = _targets(prog.prefill_gm)
    assert pre.count(OPS.online_prefill.default) == 3 and pre.count(OPS.ring_prefill.default) == 3
    assert pre.count(OPS.online_finish_prefill.default) == len(prog.engines)
    assert not any(callable(t) and type(t).__name__ == "Slot" for t in step + pre)
    # the state is the programs' buffers: the engines' own tensors
    eng = prog.engines[0]
    assert prog.step_gm.g0_hist is eng.hist and prog.prefill_gm.g0_acc is eng.state_tensors()["acc"]


# ``torch.compile(step, fullgraph=True)`` teacher-forced on every example model:
# tests/test_session.py::test_fullgraph_step_teacher_forcing (it reuses that file's lowerings)


@pytest.mark.parametrize("build", [
    lambda: HyenaLM(vocab=48, d_model=16, n_layers=2, max_len=96),
    lambda: StripedHyenaLM(vocab=48, d_model=16, n_layers=2),
], ids=["hyena", "striped"])
def test_inductor_compiled_step_by_option(build):
    """``compile_step=True``: the step program through Inductor (one graph, the ops extern
    calls), teacher-forced against the model at odd lengths, batch 3, prompt 0, fed the way a
    user's loop does (slices of a growing tensor: one compile, not one per stride)."""
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randint(0, 48, (3, 41))
    with torch.no_grad():
        ref = tensors(model(x))
    sess = lcsm_compile.session(model, x[:, :3], max_len=64, compile_step=True)
    outs = [tensors(sess.prefill(x[:, :0]))]
    ids = x[:, :0]
    for t in range(41):  # a user's loop: the last column of a growing tensor (its stride changes)
        ids = torch.cat([ids, x[:, t:t + 1]], 1)
        # ids of another integer dtype from the 20th token on: converted, not a wrong program
        outs.append(tensors(sess.step(ids[:, -1:] if t < 20 else ids[:, -1:].to(torch.int32))))
    got = [torch.cat([o[i] for o in outs], 1) for i in range(len(ref))]
    assert_golden(got, ref, golden_forward(model, x), what="compiled step")
    step = sess.program.step_fn
    assert step.failed is None and step.setup_s is not None  # compiled, and it ran compiled
    # Inductor on the captured graph itself, no dynamo frame (no guards to check per call)
    from lcsm_compile.runtime.program import InductorStep
    assert isinstance(step.fn, InductorStep) and step.fn.fn is not None
    with pytest.raises(lcsm_compile.SessionError, match="compiled for"):
        step.fn(torch.zeros(2, 1, dtype=torch.long), sess._pos)  # not the session's batch


@pytest.mark.parametrize("P", [0, 5])
def test_split_tile_work_runs_the_same_step(P):
    """The CUDA-graph step's split (passes.step_graph.split_tile_work): the body without the
    advances, then the advances, teacher-forced on the CPU, equals the model; the body holds
    no advance and no attribute only the advances read; a modal model's body names its
    host-position op as the reason it cannot be captured, a plain Hyena's names none."""
    from lcsm_compile.passes.step_graph import AttrRef, split_tile_work
    torch.manual_seed(0)
    model = HyenaLM(vocab=48, d_model=16, n_layers=2, max_len=96).eval()
    x = torch.randint(0, 48, (3, 29))
    with torch.no_grad():
        ref = tensors(model(x))
    sess, first = _prefilled(model, x, P, 64, compile_step=False, engine_options={"block": 4})
    prog = sess.program
    body, calls, blockers = split_tile_work(prog.step_gm)
    assert blockers == [] and len(calls) == len(prog.engines)
    assert OPS.online_advance.default not in _targets(body) and OPS.online_advance.default in _targets(prog.step_gm)
    assert not any(n.op == "get_attr" and not n.users for n in body.graph.nodes)
    resolved = [(op, [getattr(prog.step_gm, a.name) if isinstance(a, AttrRef) else a for a in args])
                for op, args in calls]

    def split_step(x_t, pos):
        outs = body(x_t, pos)
        for op, args in resolved:
            op(*args)
        return outs

    got = [torch.cat([a, b], 1) for a, b in zip(first, _steps(split_step, x, P))]
    assert_golden(got, ref, golden_forward(model, x), what="body + tile work")
    striped = StripedHyenaLM(vocab=48, d_model=16, n_layers=2).eval()
    s2 = lcsm_compile.session(striped, x[:, :3], max_len=64, compile_step=False)
    assert s2.program.modal  # verified modal filters: recurrences
    why = " ".join(w for _, w in split_tile_work(s2.program.step_gm)[2])
    assert "modal_step" in why and "host" in why


def test_export_keeps_ops_and_streams_after_the_engine_is_gone():
    """``torch.export`` of the step program keeps the lcsm ops as nodes (also after
    ``run_decompositions``); the exported program streams exactly, sharing the session's state,
    and keeps working when no live engine owns that state (the ops rebuild one from the
    filters and the schedule in the program)."""
    torch.manual_seed(1)
    model = HyenaLM(vocab=32, d_model=16, n_layers=2, max_len=80).eval()
    x = torch.randint(0, 32, (2, 70))
    with torch.no_grad():
        ref = tensors(model(x))
    P = 7
    sess, first = _prefilled(model, x, P, max_len=80, engine_options={"block": 4, "fft_from": 8, "delay_from": 16})
    pos = torch.tensor([P])
    ep = torch.export.export(sess.program.step_gm, (x[:, P:P + 1], pos), strict=False)
    for prog in (ep, ep.run_decompositions()):  # (the latter wraps mutating ops in auto_functionalized)
        t = _op_names(prog.graph)
        assert t.count("lcsm.online_diag.default") == 2 and t.count("lcsm.online_advance.default") == 1
        assert t.count("lcsm.ring_step.default") == 2
    m = ep.module()
    mid = 30
    a = _steps(m, x[:, :mid], P)
    uid = int(sess.program.engines[0].meta[3])
    del sess
    gc.collect()
    from lcsm_compile.runtime import engine as E
    assert uid not in E._ENGINES or E._ENGINES[uid]() is None  # the session's engine is gone
    b = _steps(m, x, mid)
    assert uid in E._ADOPTED
    got = [torch.cat([f, u, v], 1) for f, u, v in zip(first, a, b)]
    assert_golden(got, ref, golden_forward(model, x), what="exported step")


class _FailAt(fx.Interpreter):
    """Runs the step program, raising once when it reaches the ``n``-th node of ``target``."""

    def __init__(self, gm, target, n):
        super().__init__(gm)
        self.target, self.n, self.seen = target, n, 0

    def run_node(self, node):
        if node.op == "call_function" and node.target == self.target:
            self.seen += 1
            if self.seen == self.n:
                raise RuntimeError("injected failure")
        return super().run_node(node)


@pytest.mark.parametrize("where", ["second_diag", "second_ring", "advance"])
def test_failed_step_leaves_the_position_and_is_retried_exactly(where):
    """A step that fails after some of its ops ran (first layer done, second not) leaves every
    position where it was; running the position again gives the exact outputs. A failure in
    the tile work itself resets the session with a clear error."""
    torch.manual_seed(2)
    model = HyenaLM(vocab=32, d_model=16, n_layers=2, max_len=48).eval()
    x = torch.randint(0, 32, (1, 40))
    with torch.no_grad():
        ref = tensors(model(x))
    sess = lcsm_compile.session(model, x[:, :4], max_len=48, engine_options={"block": 2, "fft_from": 4})
    outs = [tensors(sess.prefill(x[:, :4]))]
    prog = sess.program
    target, n = {"second_diag": (OPS.online_diag.default, 2), "second_ring": (OPS.ring_step.default, 2),
                 "advance": (OPS.online_advance.default, 1)}[where]
    good = prog.step_fn
    for t in range(4, 40):
        if t in (9, 16, 17):  # inside a block, at a block end, right after one
            prog.step_fn = lambda xt, p: _FailAt(prog.step_gm, target, n).run(xt, p)
            with pytest.raises(RuntimeError, match="injected"):
                sess.step(x[:, t:t + 1])
            prog.step_fn = good
            assert sess.position == t and all(e.position == t for e in prog.engines)
        outs.append(tensors(sess.step(x[:, t:t + 1])))
    got = [torch.cat([o[i] for o in outs], 1) for i in range(len(ref))]
    assert_golden(got, ref, golden_forward(model, x), what=where)


def test_error_inside_the_tile_work_resets_with_a_clear_error(monkeypatch):
    torch.manual_seed(3)
    model = HyenaLM(vocab=32, d_model=16, n_layers=2, max_len=32).eval()
    x = torch.randint(0, 32, (1, 20))
    sess = lcsm_compile.session(model, x[:, :4], max_len=32, engine_options={"block": 2, "fft_from": 4})
    sess.prefill(x[:, :4])
    from lcsm_compile.runtime.engine import OnlineConv

    real = OnlineConv._run_work

    def boom(self, w):
        raise RuntimeError("tile failure")

    sess.step(x[:, 4:5])
    monkeypatch.setattr(OnlineConv, "_run_work", boom)
    with pytest.raises(SessionError, match="reset to position 0"):
        sess.step(x[:, 5:6])  # position 5 -> 6 ends a block of 2: its tile runs
    monkeypatch.setattr(OnlineConv, "_run_work", real)
    assert sess.position == 0 and all(e.position == 0 for e in sess.program.engines)
    with torch.no_grad():
        ref = tensors(model(x))
    outs = [tensors(sess.prefill(x[:, :4]))] + [tensors(sess.step(x[:, t:t + 1])) for t in range(4, 20)]
    got = [torch.cat([o[i] for o in outs], 1) for i in range(len(ref))]
    assert_golden(got, ref, golden_forward(model, x), what="after reset")


def test_state_tensors_are_the_programs_buffers_and_resume_exactly():
    """state_dict / load_state_dict through the tensors: a second session resumes the first's
    state mid-block and continues exactly; the ring buffers are position-indexed."""
    torch.manual_seed(4)
    model = StripedHyenaLM(vocab=32, d_model=16, n_layers=2).eval()
    x = torch.randint(0, 32, (2, 50))
    with torch.no_grad():
        ref = tensors(model(x))
    a = lcsm_compile.session(model, x[:, :6], max_len=64, modal=False)  # the online engine's state
    outs = [tensors(a.prefill(x[:, :6]))] + [tensors(a.step(x[:, t:t + 1])) for t in range(6, 23)]
    state = a.state_dict()
    b = lcsm_compile.session(model, x[:, :6], max_len=64, modal=False)
    b.load_state_dict(state)
    assert int(b.program.engines[0].meta[0]) == 23
    outs += [tensors(b.step(x[:, t:t + 1])) for t in range(23, 50)]
    got = [torch.cat([o[i] for o in outs], 1) for i in range(len(ref))]
    assert_golden(got, ref, golden_forward(model, x), what="resumed")


def test_compiled_step_falls_back_to_the_graph_when_the_compiler_fails(monkeypatch, caplog):
    """A compiler failure on the first call: the position runs on the uncompiled graph, the
    program keeps doing so, a warning names the failure; outputs stay exact."""
    from lcsm_compile.runtime import program as P

    def broken(gm, whole):
        def fn(*args):
            raise RuntimeError("backend exploded")
        return fn

    monkeypatch.setattr(P, "_compile", broken)
    torch.manual_seed(5)
    model = HyenaLM(vocab=32, d_model=16, n_layers=2, max_len=40).eval()
    x = torch.randint(0, 32, (2, 30))
    with torch.no_grad():
        ref = tensors(model(x))
    sess = lcsm_compile.session(model, x[:, :4], max_len=40, compile_step=True)
    with caplog.at_level("WARNING", logger="lcsm_compile"):
        outs = [tensors(sess.prefill(x[:, :4]))] + [tensors(sess.step(x[:, t:t + 1])) for t in range(4, 30)]
    step = sess.program.step_fn
    assert isinstance(step, P.CompiledStep) and "backend exploded" in step.failed and step.setup_s is None
    assert any("backend exploded" in r.getMessage() for r in caplog.records)
    got = [torch.cat([o[i] for o in outs], 1) for i in range(len(ref))]
    assert_golden(got, ref, golden_forward(model, x), what="fallback")
    # an error of the input itself is raised as it is, and the session stays usable
    with pytest.raises(Exception):
        sess.step(torch.full((2, 1), 10 ** 6))
    assert sess.position == 30
