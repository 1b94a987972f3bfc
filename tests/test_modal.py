"""Modal filters streamed as exact recurrences (tracker issue 14, item 3).

A long filter that is a sum of exponentials, ``h[c, t] = Re(sum_n r[c, n] p[c, n] ** t)``, is
recognised in the graph (:mod:`lcsm_compile.passes.modal`), verified against the model's own
filter over ``[0, max_len)``, and streams as ``x_t = p x_{t-1} + u_t``, ``y_t = Re(r . x_t)``
(:mod:`lcsm_compile.runtime.modal`) instead of the online engine. Every check is against the
model's forward (fp64 golden): teacher forcing on both paths (modal, and ``modal=False``), at
prompt lengths 0, 1 and 37 and batch 1 and 3; greedy generation; resume from ``state_dict``;
the step program compiled whole and exported; and the negatives (a filter that is modal only
approximately, a non-modal one) stay on the online engine with ``explain`` saying why.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import lcsm_compile
from lcsm_compile.models import StripedHyenaLM
from lcsm_compile.passes.modal import realize
from lcsm_compile.codegen.modal import modal_kernel, modal_step_reference
from lcsm_compile.runtime.modal import modal_prefill_reference

from ._golden import assert_golden, golden_forward, tensors

OPS = torch.ops.lcsm


# ----------------------------------------------------------------------------- small models
class _Filter(nn.Module):
    """``h[c, t] = Re(sum_n r p^t)`` (complex poles from polar parameters), changed by ``kind``."""

    def __init__(self, d: int, n: int, kind: str):
        super().__init__()
        self.kind = kind
        self.log_r = nn.Parameter(-torch.rand(d, n) * 0.3 - 0.02)
        self.theta = nn.Parameter(torch.rand(d, n) * math.pi)
        self.res = nn.Parameter(torch.randn(d, n, 2) * 0.5)
        self.alpha = nn.Parameter(torch.full((d, 1), 0.01))
        self.scale = nn.Parameter(torch.tensor(1.5))
        if kind == "mlp":
            self.mlp = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, d))
        if kind == "growing":
            with torch.no_grad():
                self.log_r[0, 0] = 0.05

    def forward(self, L: int) -> torch.Tensor:
        t = torch.arange(L, dtype=torch.float32)
        if self.kind == "mlp":  # an implicit filter: an MLP over the positions, decayed
            return (self.mlp(t[:, None] / 64) * torch.exp(-0.1 * t[:, None])).t()
        p = torch.exp(self.log_r + 1j * self.theta)                                    # [d, n]
        h = (torch.view_as_complex(self.res)[..., None] * p[..., None] ** t).real.sum(1)  # [d, L]
        if self.kind in ("window", "growing"):
            h = h * torch.exp(-self.alpha * t) * self.scale          # a decay window and a scale: still modal
        elif self.kind == "bf16":
            h = h.to(torch.bfloat16).to(torch.float32)               # modal only up to bf16 rounding
        elif self.kind == "gauss":
            h = h * torch.exp(-1e-3 * t ** 2)                        # not an exponential in t
        return h


class _LM(nn.Module):
    """ids -> logits: embedding, per layer a gated long conv (FFT, n = 2L, skip D) whose filter
    is of the layer's ``kind``."""

    def __init__(self, kinds=("window", "window"), vocab: int = 32, d: int = 8, n: int = 3):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.proj = nn.ModuleList(nn.Linear(d, 2 * d) for _ in kinds)
        self.filt = nn.ModuleList(_Filter(d, n, k) for k in kinds)
        self.D = nn.Parameter(torch.randn(len(kinds), d) * 0.1)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.emb(ids)
        L = ids.shape[1]
        for i, (pr, f) in enumerate(zip(self.proj, self.filt)):
            u, g = pr(x).chunk(2, -1)
            u = u.transpose(1, 2)
            y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(f(L), n=2 * L), n=2 * L)[..., :L]
            y = y + u * self.D[i][:, None]
            x = x + (y.transpose(1, 2) * torch.sigmoid(g))
        return self.head(x)


@pytest.fixture(scope="module")
def striped():
    torch.manual_seed(14)
    return StripedHyenaLM(vocab=32, d_model=16, n_layers=2, state=4).eval()


def _paths(sess) -> dict:
    return {k: v.path for k, v in sess.program.plan.modal.paths.items()}


def _stream(sess, x, P):
    """Teacher forcing: prefill ``x[:, :P]``, then one step per remaining position."""
    outs = [tensors(sess.prefill(x[:, :P]))]
    for t in range(P, x.shape[1]):
        outs.append(tensors(sess.step(x[:, t:t + 1])))
    return [torch.cat([o[i] for o in outs], 1) for i in range(len(outs[0]))]


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("modal", ["auto", False], ids=["modal", "online"])
def test_teacher_forcing_both_paths(striped, modal):
    """The StripedHyena-style model (modal filters in cos/sin form, short featurizers, gated
    MLPs) streams exactly on the modal path and on the forced online engine: prompt lengths 0,
    1, 37 (odd), batch 1 and 3; every position against the model's forward (fp64 golden)."""
    for B in (1, 3):
        x = torch.randint(0, 32, (B, 45), generator=torch.Generator().manual_seed(B))
        with torch.no_grad():
            ref = tensors(striped(x))
        gold = golden_forward(striped, x)
        sess = lcsm_compile.session(striped, x[:, :2], max_len=64, modal=modal)
        want = "modal" if modal == "auto" else "online"
        assert set(_paths(sess).values()) == {want}
        assert (len(sess.program.engines) == 0) == (modal == "auto") and len(sess.program.modal) == (2 if modal else 0)
        for P in (0, 1, 37):
            sess.reset()
            assert_golden(_stream(sess, x, P), ref, gold, what=f"{modal} B={B} P={P}")


# ----------------------------------------------------------------------------- generation, resume
def test_greedy_generate_equals_the_naive_loop(striped):
    """Greedy generation on the modal path returns what argmax over the full forward returns."""
    prompt = torch.randint(0, 32, (2, 5), generator=torch.Generator().manual_seed(7))
    out = lcsm_compile.generate(striped, prompt, max_new_tokens=24, max_len=64)
    ids = prompt
    with torch.no_grad():
        for _ in range(24):
            ids = torch.cat([ids, striped(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)


class _FailOnce(fx.Interpreter):
    """Runs a step program and raises once after its first ``modal_step`` ran."""

    def run_node(self, node):
        out = super().run_node(node)
        if node.op == "call_function" and node.target == OPS.modal_step.default:
            raise RuntimeError("injected failure")
        return out


def test_resume_from_state_dict_and_retry(striped):
    """``state_dict`` mid-stream restores exactly into a fresh session (state tensors only, no
    max_len-sized buffers); a step that fails after a modal state was written is run again at
    the same position and gives the exact outputs (the state is double-buffered by parity)."""
    x = torch.randint(0, 32, (3, 41), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = tensors(striped(x))
    a = lcsm_compile.session(striped, x[:, :2], max_len=64)
    outs = [tensors(a.prefill(x[:, :9]))] + [tensors(a.step(x[:, t:t + 1])) for t in range(9, 20)]
    state = a.state_dict()
    assert set(state["program"]["modal"]) == set(a.program.modal)
    b = lcsm_compile.session(striped, x[:, :2], max_len=64)
    b.load_state_dict(state)
    prog, good = b.program, b.program.step_fn
    for t in range(20, 41):
        if t in (20, 27):
            prog.step_fn = lambda xt, p: _FailOnce(prog.step_gm).run(xt, p)
            with pytest.raises(RuntimeError, match="injected"):
                b.step(x[:, t:t + 1])
            prog.step_fn = good
            assert b.position == t
        outs.append(tensors(b.step(x[:, t:t + 1])))
    got = [torch.cat([o[i] for o in outs], 1) for i in range(len(ref))]
    assert_golden(got, ref, golden_forward(striped, x), what="resumed")


def test_session_memory_does_not_grow_with_max_len(striped):
    """A modal program's state is the same at max_len 100 and 2^14: no tensor of its programs
    has a dim of max_len (the online engine's state is [B, C, max_len])."""
    from lcsm_compile.pipeline import plan
    from lcsm_compile.runtime import instantiate

    low = lcsm_compile.session(striped, torch.randint(0, 32, (2, 4)), max_len=64).program.plan.lowered
    sizes = {}
    for L in (100, 1 << 14):
        prog = instantiate(plan(low, L, 2))
        assert not prog.engines and len(prog.modal) == 2
        bufs = dict(prog.step_gm.named_buffers())
        assert not any(L in b.shape for b in bufs.values()), [(k, b.shape) for k, b in bufs.items() if L in b.shape]
        sizes[L] = sum(b.numel() * b.element_size() for b in bufs.values())
    assert sizes[100] == sizes[1 << 14]
    online = instantiate(plan(low, 100, 2, modal=False))
    assert online.engines and not online.modal


# ----------------------------------------------------------------------------- compile, export
def test_step_compiles_fullgraph_and_exports(striped):
    """The step program with ``lcsm::modal_step`` compiles whole (``fullgraph=True``, the
    functionalized mutation of the state) and exports with ``torch.export`` keeping the op as a
    node; both stream exactly."""
    torch._dynamo.reset()
    x = torch.randint(0, 32, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = tensors(striped(x))
    gold = golden_forward(striped, x)
    P = 6
    sess = lcsm_compile.session(striped, x[:, :P], max_len=64)
    first = tensors(sess.prefill(x[:, :P]))
    fn = torch.compile(sess.program.step_gm, backend="aot_eager", fullgraph=True, dynamic=False)
    pos = torch.zeros(1, dtype=torch.long)
    outs = []
    with torch.no_grad():
        for t in range(P, 18):
            pos.fill_(t)
            outs.append(list(fn(x[:, t:t + 1].contiguous(), pos)))
        state = sess.program.state_dict()
        ep = torch.export.export(sess.program.step_gm, (x[:, 18:19].contiguous(), pos), strict=False)
        ops = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
        assert ops.count("lcsm.modal_step.default") == 2
        m = ep.module()
        for t in range(18, 30):
            pos.fill_(t)
            outs.append(list(m(x[:, t:t + 1].contiguous(), pos)))
    got = [torch.cat([f] + [o[i] for o in outs], 1) for i, f in enumerate(first)]
    assert_golden(got, ref, gold, what="compiled + exported step")
    assert state["modal"]
    torch._dynamo.reset()


# ----------------------------------------------------------------------------- the ops
def test_prefill_state_and_long_recurrence_match_the_fft_convolution():
    """The ops alone: the prefill's outputs and end state against the direct recurrence, the
    native step against its torch twin, and 2^12 fp64-state steps against the fp64 FFT
    convolution of the realised filter; a pole 0 (the skip term's mode) and a real pole included."""
    g = torch.Generator().manual_seed(0)
    C, N, B, P, T = 5, 4, 2, 37, 1 << 12
    p = torch.polar(torch.rand(C, N, generator=g, dtype=torch.float64) * 0.05 + 0.95,
                    torch.rand(C, N, generator=g, dtype=torch.float64) * 3)
    p[0, 0], p[1, 1] = 0, 0.9
    r = torch.randn(C, N, dtype=torch.complex128, generator=g)
    poles, res = torch.view_as_real(p).contiguous(), torch.view_as_real(r).contiguous()
    u = torch.randn(B, C, T, generator=g)
    state = torch.zeros(2, B, C, N, 2, dtype=torch.float64)
    y0 = modal_prefill_reference(u[..., :P], state, poles, res)
    x = torch.zeros(B, C, N, dtype=torch.complex128)
    for s in range(P):
        x = p * x + u[..., s, None].double()
    assert torch.allclose(torch.view_as_complex(state[(P - 1) % 2]), x, atol=1e-12)
    native = modal_kernel()
    twin = state.clone()
    ys = []
    for t in range(P, T):
        ys.append(modal_step_reference(u[..., t], twin, poles, res, t))
        if native is not None and t < P + 300:  # the native step against its twin
            y_n = native(u[..., t].contiguous(), state, poles, res, t)
            assert torch.allclose(y_n, ys[-1], rtol=1e-6, atol=1e-6) and torch.allclose(state, twin, atol=1e-12)

    h = realize(p, r, 0, T)
    n = 2 * T
    want = torch.fft.irfft(torch.fft.rfft(u.double(), n=n) * torch.fft.rfft(h, n=n), n=n)[..., :T]
    got = torch.cat([y0, torch.stack(ys, -1)], -1).double()
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err < 1e-6, err  # fp32 outputs of an fp64 recurrence


# ----------------------------------------------------------------------------- negatives
def test_negatives_stay_online_and_explain_says_why():
    """One model, one long conv per filter kind: a windowed and scaled modal filter (still a
    sum of exponentials: modal, with the poles its parameters say); a modal filter rounded
    through bf16 (recognised, but the model's own filter differs from the realisation: the
    verification refuses it), a Gaussian window (``t ** 2``), a growing pole and an MLP over
    the positions stay on the online engine. The mixed program streams exactly, and ``explain``
    says which path each convolution takes and why."""
    torch.manual_seed(4)
    kinds = ("window", "bf16", "gauss", "growing", "mlp")
    why = {"window": "verified over [0, 40)", "bf16": "differs from", "gauss": "a power of the positions",
           "growing": "modulus", "mlp": "aten.addmm"}
    model = _LM(kinds).eval()
    x = torch.randint(0, 32, (2, 33))
    sess = lcsm_compile.session(model, x[:, :3], max_len=40)
    mp = sess.program.plan.modal
    paths = list(mp.paths.values())
    assert [c.path for c in paths] == ["modal"] + ["online"] * 4, [c.reason for c in paths]
    for c, k in zip(paths, kinds):
        assert why[k] in c.reason, (k, c.reason)
    # the windowed filter: the poles its parameters say, and the realisation is the model's filter
    f = mp.filters[paths[0].node]
    m = model.filt[0]
    with torch.no_grad():
        want = torch.exp(m.log_r.double() + 1j * m.theta.double() - m.alpha.double())
        h = m(40).double()
    order = lambda p: p.gather(-1, p.angle().argsort(-1))  # noqa: E731
    assert torch.allclose(order(f.poles), order(want), rtol=1e-6, atol=1e-9)
    assert torch.allclose(realize(f.poles, f.residues, 0, 40), h, atol=1e-5 * float(h.abs().max()))
    with torch.no_grad():
        ref = tensors(model(x))
    assert_golden(_stream(sess, x, 5), ref, golden_forward(model, x), what="mixed modal / online")
    e = lcsm_compile.explain(model, x[:, :3], max_len=40)
    assert [(c.path, why[k] in c.reason) for c, k in zip(e.conv_paths.values(), kinds)] == \
        [("modal", True)] + [("online", True)] * 4
    assert "streaming path" in str(e) and len(e.groups) == 1 and len(e.groups[0].members) == 4


def test_the_option(striped):
    """``modal=False`` forces the online engine (the reason says so); a baseline engine is never
    modal; an invalid value is an error naming the valid ones."""
    x = torch.randint(0, 32, (1, 6))
    sess = lcsm_compile.session(striped, x, max_len=64, modal=False)
    assert all("modal=False" in c.reason for c in sess.program.plan.modal.paths.values())
    assert not sess.program.modal and sess.program.engines
    sess = lcsm_compile.session(striped, x, max_len=64, engine="lazy")
    assert not sess.program.modal
    with pytest.raises(lcsm_compile.SessionError, match="modal="):
        lcsm_compile.session(striped, x, max_len=64, modal="always")


def test_exported_artifact_keeps_the_modal_state_per_session(tmp_path):
    """``lcsm_compile.export`` of a modal model: the artifact's modal state is session state
    (zeros per session, reset by ``reset``), not a shared constant: two sessions of the loaded
    artifact interleaved give the live session's outputs, bitwise."""
    torch.manual_seed(6)
    model = _LM(("window",)).eval()
    x = torch.randint(0, 32, (1, 20))
    path = lcsm_compile.export(model, x[:, :4], max_len=24, path=str(tmp_path / "m.lcsm"))
    art = lcsm_compile.load(path)
    live = lcsm_compile.session(model, x[:, :4], max_len=24, compile_step=False)
    a, b = art.session(), art.session()
    want = _stream(live, x, 4)
    pa, pb = [tensors(a.prefill(x[:, :4]))], [tensors(b.prefill(x[:, :0]))]
    for t in range(4, 20):
        pa.append(tensors(a.step(x[:, t:t + 1])))
    for t in range(0, 20):
        pb.append(tensors(b.step(x[:, t:t + 1])))
    got_a = [torch.cat([o[i] for o in pa], 1) for i in range(len(want))]
    got_b = [torch.cat([o[i] for o in pb], 1) for i in range(len(want))]
    assert all(torch.equal(g, w) for g, w in zip(got_a, want))
    assert_golden(got_b, want, None, what="second artifact session")
