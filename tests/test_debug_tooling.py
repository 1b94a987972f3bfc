"""Debug tooling: TORCH_TRACE structured artifacts, TORCH_LOGS="+lcsm_compile" stage timings,
debug_dir / LCSM_DEBUG_DIR dumps (docs/debugging.md)."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lcsm_compile import pipeline as P
from lcsm_compile.models import HyenaLM
from lcsm_compile.options import DEBUG_DIR_ENV, resolve_debug_dir

ROOT = Path(__file__).resolve().parent.parent

SMALL_MODEL = """
import torch, lcsm_compile
from lcsm_compile.models import HyenaLM
torch.manual_seed(0)
model = HyenaLM(vocab=32, d_model=16, n_layers=1, max_len=64).eval()
x = torch.randint(0, 32, (1, 8))
"""


def _run(code, env_extra, tmp_path):
    env = dict(os.environ)
    env.pop("TORCH_TRACE", None)
    env.pop("TORCH_LOGS", None)
    env.pop(DEBUG_DIR_ENV, None)
    env.update(env_extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env=env, cwd=str(tmp_path), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _artifacts(trace_dir):
    """{artifact name: [payload text, ...]} from the raw TORCH_TRACE logs."""
    found = {}
    for f in Path(trace_dir).iterdir():
        lines = f.read_text().splitlines()
        for i, ln in enumerate(lines):
            m = re.search(r'\{"artifact": \{"name": "([^"]+)"', ln)
            if not m:
                continue
            payload = []
            for nxt in lines[i + 1:]:
                if not nxt.startswith("\t"):
                    break
                payload.append(nxt[1:])
            found.setdefault(m.group(1), []).append("\n".join(payload))
    return found


def test_torch_trace_has_the_lcsm_artifacts(tmp_path):
    trace = tmp_path / "trace"
    _run(SMALL_MODEL + """
fast = torch.compile(model, backend="lcsm")
assert torch.allclose(fast(x), model(x), rtol=1e-4, atol=1e-5)
sess = lcsm_compile.session(model, x, max_len=32)
""", {"TORCH_TRACE": str(trace)}, tmp_path)
    files = list(trace.iterdir())
    assert files, "TORCH_TRACE wrote nothing"
    arts = _artifacts(trace)
    # the backend's front end (graph captured by dynamo) and the session's lower + plan
    for name in ("lcsm_analyze", "lcsm_match", "lcsm_verify", "lcsm_rewrite", "lcsm_classify",
                 "lcsm_capture", "lcsm_check", "lcsm_programs", "lcsm_refusals", "lcsm_plan", "lcsm_schedule"):
        assert name in arts, (name, sorted(arts))
    assert any("torch.ops.lcsm.long_conv.default" in p for p in arts["lcsm_rewrite"])  # the rewritten graph
    assert any("aten._fft_r2c" in p and "lcsm.long_conv" not in p for p in arts["lcsm_capture"])  # captured
    assert all(json.loads(p) == [] for p in arts["lcsm_refusals"])
    plan = json.loads(arts["lcsm_plan"][0])
    assert plan["max_len"] == 32 and plan["groups"][0]["members"] == plan["long_convs"]
    sched = json.loads(arts["lcsm_schedule"][0])
    assert sched[0]["engine"] == "OnlineConv" and {"block", "fft_from", "delay_from", "levels"} <= set(sched[0])
    assert any("step program" in p and "def forward" in p for p in arts["lcsm_programs"])
    # the backend's artifacts belong to its compile (a frame id), next to dynamo's own
    raw = "\n".join(f.read_text() for f in files)
    assert re.search(r'"name": "lcsm_rewrite", "encoding": "string"\}, "frame_id": \d+', raw)
    if shutil.which("tlparse"):  # optional: the report tlparse builds lists them
        out = tmp_path / "tl_out"
        subprocess.run(["tlparse", str(files[0]), "-o", str(out), "--no-browser"], check=True,
                       capture_output=True, timeout=300)
        html = "\n".join(p.read_text(errors="replace") for p in out.rglob("*.html"))
        assert "lcsm_rewrite" in html


def test_refusals_artifact_names_the_refusal(tmp_path):
    trace = tmp_path / "trace"
    _run("""
import torch
from lcsm_compile.pipeline import lower
class Circular(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.randn(4, 64))
    def forward(self, x):
        L = x.shape[1]
        u = x.transpose(1, 2)
        y = torch.fft.irfft(torch.fft.rfft(u, n=L) * torch.fft.rfft(self.k[:, :L], n=L), n=L)
        return y.transpose(1, 2)
low = lower(Circular(), torch.randn(2, 9, 4))
assert low.refusals
""", {"TORCH_TRACE": str(trace)}, tmp_path)
    arts = _artifacts(trace)
    refusals = [r for p in arts["lcsm_refusals"] for r in json.loads(p)]
    assert refusals and all({"op", "source", "reason"} <= set(r) for r in refusals)


def test_torch_logs_shows_each_stage_with_its_time(tmp_path):
    out = _run(SMALL_MODEL + """
lcsm_compile.session(model, x, max_len=32)
""", {"TORCH_LOGS": "+lcsm_compile"}, tmp_path)
    stages = dict(re.findall(r"lcsm stage (\w+): (\d+\.\d+) s", out.stderr))
    want = [s.name for s in P.LOWER] + [s.name for s in P.PLAN]
    assert set(want) <= set(stages), (want, out.stderr[-2000:])
    assert re.search(r"lcsm stages capture/analyze/.*/check: \d+\.\d+ s, 0 refusal", out.stderr)


def test_no_torch_logs_no_stage_lines(tmp_path):
    out = _run(SMALL_MODEL + """
from lcsm_compile.pipeline import lower
lower(model, x)
""", {}, tmp_path)
    assert "lcsm stage" not in out.stderr


# ----------------------------------------------------------------------------- debug_dir
@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return HyenaLM(vocab=32, d_model=16, n_layers=1, max_len=64).eval(), torch.randint(0, 32, (1, 8))


def test_resolve_debug_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(DEBUG_DIR_ENV, raising=False)
    assert resolve_debug_dir(None) is None
    monkeypatch.setenv(DEBUG_DIR_ENV, "")
    assert resolve_debug_dir(None) is None
    monkeypatch.setenv(DEBUG_DIR_ENV, str(tmp_path))
    assert resolve_debug_dir(None) == str(tmp_path)
    assert resolve_debug_dir(tmp_path / "x") == str(tmp_path / "x")
    assert resolve_debug_dir(False) is None and resolve_debug_dir("") is None


LOWER_FILES = [f"{i:02d}_{s.name}.txt" for i, s in enumerate(P.LOWER)]
PLAN_FILES = [f"{i:02d}_{s.name}.txt" for i, s in enumerate(P.PLAN)]


def test_lcsm_debug_dir_is_the_default(small, monkeypatch, tmp_path):
    model, x = small
    env_dir = tmp_path / "env"
    monkeypatch.setenv(DEBUG_DIR_ENV, str(env_dir))
    low = P.lower(model, x)
    assert sorted(os.listdir(env_dir)) == LOWER_FILES
    assert "torch.ops.lcsm.long_conv.default" in (env_dir / "06_check.txt").read_text()
    assert "def forward" in (env_dir / "00_capture.txt").read_text()
    P.plan(low, 32, 1)
    assert sorted(os.listdir(env_dir)) == sorted(LOWER_FILES + PLAN_FILES)
    # an explicit debug_dir wins; False turns the dumps off
    other = tmp_path / "explicit"
    P.lower(model, x, debug_dir=str(other))
    assert sorted(os.listdir(other)) == LOWER_FILES
    shutil.rmtree(env_dir)
    P.lower(model, x, debug_dir=False)
    assert not env_dir.exists()


def test_lcsm_debug_dir_reaches_session_and_explain(small, monkeypatch, tmp_path):
    import lcsm_compile

    model, x = small
    lcsm_compile.session(model, x, max_len=32)  # cached lowering, made without a debug dir
    monkeypatch.setenv(DEBUG_DIR_ENV, str(tmp_path / "s"))
    lcsm_compile.session(model, x, max_len=32)  # the cache must not skip the dumps
    assert set(LOWER_FILES + PLAN_FILES) <= set(os.listdir(tmp_path / "s"))
    assert "def forward" in (tmp_path / "s" / "03_programs.txt").read_text()  # the step program
    monkeypatch.setenv(DEBUG_DIR_ENV, str(tmp_path / "e"))
    lcsm_compile.explain(model, x)
    assert set(LOWER_FILES) <= set(os.listdir(tmp_path / "e"))


def test_trace_artifact_is_quiet_without_tracing_or_private_api(monkeypatch):
    from torch._logging import _internal as tl

    calls = []
    assert P.trace_artifact("lcsm_x", lambda: calls.append(1) or "text") in (True, False)
    if not tl.trace_log.handlers:  # tracing off (no TORCH_TRACE): the payload is never built
        assert not calls
    monkeypatch.delattr(tl, "trace_structured_artifact")
    monkeypatch.delattr(tl, "trace_structured")
    assert P.trace_artifact("lcsm_x", lambda: "text") is False
    monkeypatch.setattr(tl, "trace_structured_artifact", lambda *a, **k: 1 / 0, raising=False)
    monkeypatch.setattr(tl.trace_log, "handlers", [object()])
    assert P.trace_artifact("lcsm_x", lambda: "text") is False  # a broken API never raises
