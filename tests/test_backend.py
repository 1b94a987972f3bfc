"""The "lcsm" torch.compile backend: found by name, exact for every model (rewritten or not),
and it says which fallback it used and why."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from lcsm_compile import backend as B

from .zoo import get, output_tensors

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
        from lcsm_compile.backend import REPORTS
        print("ERR", err, REPORTS[-1].mode)
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
    n0 = len(B.REPORTS)
    f = torch.compile(m, backend="lcsm", options=options) if options else torch.compile(m, backend="lcsm")
    for L in lengths:
        x = entry.make_input(2, L)
        got, ref = output_tensors(f(x)), output_tensors(m(x))
        for a, b in zip(got, ref):
            if b.is_floating_point():
                assert rel(a, b) < TOL, (name, L)
    return B.REPORTS[n0:]


@pytest.mark.parametrize("name", ["safari_hyena_o2", "h3_explicit_cl", "modal_pow_cont"])
def test_compiled_forward_is_exact_and_rewritten(name):
    reps = _run(name)
    assert reps and all(r.mode == "lcsm" for r in reps), [(r.mode, r.reason) for r in reps]
    assert all(r.long_convs == get(name).n_long for r in reps)


def test_graph_break_gives_several_exact_graphs():
    reps = _run("safari_hyena_graph_break", lengths=(9, 12))
    assert len(reps) >= 2 and all(r.mode == "lcsm" for r in reps)


@pytest.mark.parametrize("name,phrase", [("neg_softmax_time", "non-causal"),
                                         ("neg_circular_fft", "circular")])
def test_refused_models_fall_back_exactly_and_say_why(name, phrase):
    reps = _run(name, lengths=(9, 16))
    assert reps and all(r.mode == "eager" for r in reps)
    assert any(phrase in r.reason for r in reps)
    assert all(r.refusals and r.refusals[0].source for r in reps)


def test_inductor_fallback_option():
    reps = _run("neg_softmax_time", lengths=(9,), options={"fallback": "inductor"})
    assert reps and reps[-1].mode == "inductor" and "non-causal" in reps[-1].reason


def test_dynamic_true_and_fp64():
    entry = get("hyenadna_cont")
    m = entry.build().double()
    n0 = len(B.REPORTS)
    f = torch.compile(m, backend="lcsm", dynamic=True)
    for L in (5, 13):
        x = entry.make_input(2, L).double()
        for a, b in zip(output_tensors(f(x)), output_tensors(m(x))):
            assert rel(a, b) < 1e-9  # fp64 end to end
    assert [r.mode for r in B.REPORTS[n0:]] == ["lcsm"]
