"""The "lcsm" torch.compile backend: found by name, exact for every model (rewritten or not),
and it says which fallback it used and why."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from lcsm_compile import backend as B

from examples.idioms import get, output_tensors

from ._golden import assert_golden, golden_forward

TOL = 1e-4


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def test_backend_is_registered_by_entry_point():
    from importlib.metadata import entry_points
    eps = entry_points(group="torch_dynamo_backends")
    assert any(e.name == "lcsm" and e.value == "lcsm_compile.backend:lcsm_backend" for e in eps)
    assert torch._dynamo.lookup_backend("lcsm") is B.lcsm_backend


def test_backend_by_name_without_importing_the_package():
    code = textwrap.dedent("""
        import sys, torch
        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.k = torch.nn.Parameter(torch.randn(4, 32) * 0.3)
            def forward(self, x):  # [B, L, 4]
                L = x.shape[1]
                u = x.transpose(1, 2)
                y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(self.k[:, :L], n=2 * L), n=2 * L)[..., :L]
                return y.transpose(1, 2)
        m = M()
        assert "lcsm_compile" not in sys.modules
        f = torch.compile(m, backend="lcsm")
        x = torch.randn(2, 9, 4)
        err = ((f(x) - m(x)).abs().max() / m(x).abs().max()).item()
        from lcsm_compile.backend import lcsm_backend
        print("ERR", err, lcsm_backend.reports[-1].mode)
    """)
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd="/", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("ERR")][0]
    _, err, mode = line.split()
    assert float(err) < TOL and mode == "lcsm"


def _run(name, lengths=(9, 16, 2), options=None):
    entry = get(name)
    m = entry.build()
    backend = B.LcsmBackend()  # a private instance: its reports are this model's graphs only
    f = torch.compile(m, backend=backend, options=options) if options else torch.compile(m, backend=backend)
    for L in lengths:
        x = entry.make_input(2, L)
        got, ref = output_tensors(f(x)), output_tensors(m(x))
        assert_golden(got, ref, golden_forward(m, x), what=f"{name} L={L}")
    return list(backend.reports)


@pytest.mark.parametrize("name", ["safari_hyena_o2", "h3_explicit_cl", "modal_pow_cont"])
def test_compiled_forward_is_exact_and_rewritten(name):
    reps = _run(name)
    assert reps and all(r.mode == "lcsm" for r in reps), [(r.mode, r.reason) for r in reps]
    assert all(r.long_convs == get(name).n_long for r in reps)


def test_graph_break_gives_several_exact_graphs():
    reps = _run("safari_hyena_graph_break", lengths=(9, 12))
    assert len(reps) >= 2 and all(r.mode == "lcsm" for r in reps)


@pytest.mark.parametrize("name,phrase", [("neg_softmax_time", "non-causal"),
                                         ("neg_circular_fft", "circular"),
                                         ("neg_time_flip", "flip")])
def test_refused_models_stay_exact_and_say_why(name, phrase):
    """A graph with no verified convolution falls back to eager; one whose refusal only rules
    out streaming keeps its verified rewrites (mode "lcsm") and lists the refusal."""
    reps = _run(name, lengths=(9, 16))
    want = "lcsm" if get(name).n_long else "eager"
    assert reps and all(r.mode == want for r in reps), [(r.mode, r.reason) for r in reps]
    assert any(phrase in r.reason.lower() for r in reps), [r.reason for r in reps]
    assert all(r.refusals and r.refusals[0].source for r in reps)
    if want == "lcsm":
        assert all(r.long_convs == get(name).n_long for r in reps)


def test_inductor_fallback_option():
    reps = _run("neg_circular_fft", lengths=(9,), options={"fallback": "inductor"})
    assert reps and reps[-1].mode == "inductor" and "circular" in reps[-1].reason


class _ExplicitSliceConv(torch.nn.Module):
    """A [d, max_len] filter parameter cut to [:, :L], applied by conv1d with L-1 left padding."""

    def __init__(self, d=8, max_len=128):
        super().__init__()
        self.k = torch.nn.Parameter(torch.randn(d, max_len) / 8)
        self.inp = torch.nn.Linear(4, d)

    def forward(self, x):
        u = self.inp(x).transpose(1, 2)
        L = u.shape[-1]
        k = self.k[:, :L]
        y = torch.nn.functional.conv1d(torch.nn.functional.pad(u, (L - 1, 0)), k.flip(-1)[:, None],
                                       groups=u.shape[1])
        return y.transpose(1, 2)


def test_explicit_filter_conv1d_is_rewritten_through_torch_compile():
    """The static first graph (batch 2, L 64) and the dynamic one after it: batch 2 x 8 channels
    once coincided with the 16 in a filter size check."""
    m = _ExplicitSliceConv().eval()
    backend = B.LcsmBackend()
    f = torch.compile(m, backend=backend)
    for L in (64, 70, 90):
        x = torch.randn(2, L, 4)
        assert_golden(f(x), m(x), golden_forward(m, x), what=f"L={L}")
    assert backend.reports and all(r.mode == "lcsm" and r.long_convs == 1 for r in backend.reports), \
        [(r.mode, r.reason) for r in backend.reports]


def test_dynamic_true_and_fp64():
    entry = get("hyenadna_cont")
    m = entry.build().double()
    backend = B.LcsmBackend()
    f = torch.compile(m, backend=backend, dynamic=True)
    for L in (5, 13):
        x = entry.make_input(2, L).double()
        for a, b in zip(output_tensors(f(x)), output_tensors(m(x))):
            assert rel(a, b) < 1e-9  # fp64 end to end
    assert [r.mode for r in backend.reports] == ["lcsm"]


def test_backend_instances_keep_their_own_reports_and_check_options():
    entry = get("safari_hyena_o2")
    m = entry.build()
    a, b = B.LcsmBackend(), B.LcsmBackend(max_reports=1)
    torch.compile(m, backend=a)(entry.make_input(2, 9))
    assert len(a.reports) == 1 and a.reports[0].mode == "lcsm" and len(b.reports) == 0
    with pytest.raises(Exception, match="valid options"):
        torch.compile(entry.build(), backend="lcsm", options={"bogus": 1})(entry.make_input(2, 9))


class _ChannelFirstAfterBreak(torch.nn.Module):
    """A graph break hands the next graph channel-first [B, C, L] values: time is dim 2 there."""

    def __init__(self, d=8, taps=64):
        super().__init__()
        self.k = torch.nn.Parameter(torch.randn(d, taps) / 8)
        self.emb = torch.nn.Embedding(16, d)
        self.proj = torch.nn.Linear(d, 2 * d)
        self.head = torch.nn.Linear(d, 16)

    def forward(self, ids):
        x = self.emb(ids)
        z = self.proj(x).transpose(1, 2)                                   # [B, 2d, L]
        torch._dynamo.graph_break()
        u, g = z[:, : x.shape[-1]], z[:, x.shape[-1]:]                     # channel slices
        L = u.shape[-1]
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(self.k[:, :L], n=2 * L), n=2 * L)[..., :L]
        return self.head(x + (y * g).transpose(1, 2))


def test_graph_after_a_break_finds_its_own_time_axis():
    m = _ChannelFirstAfterBreak().eval()
    backend = B.LcsmBackend()
    f = torch.compile(m, backend=backend)
    for L in (9, 12, 20):
        x = torch.randint(0, 16, (2, L))
        assert_golden(f(x), m(x), golden_forward(m, x), what=f"L={L}")
    rewritten = [r for r in backend.reports if r.mode == "lcsm"]
    assert rewritten and all(r.long_convs == 1 and not r.refusals for r in rewritten), \
        [(r.mode, r.reason) for r in backend.reports]
    assert not any("slices the time axis" in r.reason for r in backend.reports)


def _inductor_report(reports):
    """The report of the graph whose full forward ran most (dynamo's dynamic-length graph)."""
    reps = [r for r in reports if r.mode == "lcsm"]
    assert reps, [(r.mode, r.reason) for r in reports]
    return max(reps, key=lambda r: r.inductor_compiles)


def test_full_forward_through_inductor_is_exact_at_every_length():
    """From its second call the full forward runs compiled by Inductor (one compile for every
    length: dynamic shapes), equal to eager and to the fp64 golden values at odd lengths too."""
    reps = _run("safari_hyena_o2", lengths=(9, 16, 13, 31, 64, 17, 2))
    rep = _inductor_report(reps)
    assert rep.inductor_compiles == 1 and rep.full_forward.startswith("filters kept"), \
        (rep.inductor_compiles, rep.full_forward)
    assert "compiled by Inductor (the lcsm long convolutions as extern calls)" in rep.full_forward
    assert rep.inductor_compile_s > 0


def test_full_forward_through_inductor_fp64():
    entry = get("hyenadna_cont")
    m = entry.build().double()
    backend = B.LcsmBackend()
    f = torch.compile(m, backend=backend, options={"stream": False})
    for L in (7, 12, 21, 40):
        x = entry.make_input(2, L).double()
        for a, b in zip(output_tensors(f(x)), output_tensors(m(x))):
            assert rel(a, b) < 1e-9, L
    rep = _inductor_report(backend.reports)
    assert rep.inductor_compiles == 1 and "compiled by Inductor" in rep.full_forward, rep.full_forward


def test_failing_inductor_compile_falls_back_to_op_by_op(monkeypatch, caplog):
    def broken(gm, example_inputs):
        raise RuntimeError("inductor is broken today")

    monkeypatch.setattr(B, "_inductor_compile", broken)
    with caplog.at_level("WARNING", logger="lcsm_compile"):
        reps = _run("safari_hyena_o2", lengths=(9, 16, 13, 31))
    rep = _inductor_report(reps)
    assert rep.mode == "lcsm" and rep.inductor_compiles == 1
    assert "op by op: Inductor failed" in rep.full_forward and "inductor is broken today" in rep.full_forward, \
        rep.full_forward
    assert any("Inductor failed" in r.getMessage() and "inductor is broken today" in r.getMessage()
               for r in caplog.records)


def test_inductor_differing_output_falls_back(monkeypatch):
    """An Inductor result that differs from the op-by-op run is never returned."""
    from torch._inductor.compile_fx import compile_fx

    def wrong(gm, example_inputs):
        run = compile_fx(gm, example_inputs)

        def bad(*args):
            out = run(*args)
            return [o * 1.01 if isinstance(o, torch.Tensor) and o.is_floating_point() else o for o in out]
        return bad

    monkeypatch.setattr(B, "_inductor_compile", wrong)
    reps = _run("safari_hyena_o2", lengths=(9, 16, 13, 31))
    rep = _inductor_report(reps)
    assert "op by op: Inductor failed" in rep.full_forward and "differs" in rep.full_forward, rep.full_forward


def test_inductor_option():
    reps = _run("safari_hyena_o2", lengths=(9, 16, 13), options={"inductor": False})
    assert all(r.inductor_compiles == 0 and "options={'inductor': False}" in r.full_forward for r in reps), \
        [r.full_forward for r in reps]
    entry = get("safari_hyena_o2")
    with pytest.raises(Exception, match="inductor must be True or False"):
        torch.compile(entry.build(), backend=B.LcsmBackend(), options={"inductor": "yes"})(entry.make_input(2, 9))
    with pytest.raises(Exception, match="'inductor'"):  # listed among the valid options
        torch.compile(entry.build(), backend=B.LcsmBackend(), options={"inductr": True})(entry.make_input(2, 9))
