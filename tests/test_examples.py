"""The examples in examples/ run and check what they claim.

Each script's ``main(argv)`` runs in-process with small arguments (it raises if one of its own
checks fails) and returns what it measured, which is checked again here; the idiom models in
examples/idioms/ are the package the other tests import.
"""

import importlib
import inspect
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TOL = 1e-4


def _load(name: str) -> dict:
    """The script's globals, run as a module (``__name__ != "__main__"``: main() not called)."""
    return runpy.run_path(str(EXAMPLES / name), run_name="not_main")


def test_quickstart():
    res = _load("quickstart.py")["main"](["--new-tokens", "4", "--prompt-len", "8", "--batch", "2"])
    assert res["compile_err"] <= TOL, res
    assert res["streamable"] and (res["n_long"], res["n_short"]) == (2, 2), res
    assert res["greedy_equal"] is True, res
    assert res["sampled_ok"] is True and res["sampled_reproducible"] is True, res
    for key in ("prefill_err", "step_err", "resume_err", "resume_vs_first"):
        assert 0.0 <= res[key] <= TOL, (key, res)


def test_custom_model():
    g = _load("custom_model.py")
    res = g["main"](["--prompt-len", "12", "--prefill", "5", "--new-tokens", "3"])
    assert res["streamable"] and (res["n_long"], res["n_short"]) == (2, 2), res
    # the long convs are found in CausalFFTConv.forward, the short ones in HyenaMixer.forward
    for cls, sources in ((g["CausalFFTConv"], res["long_sources"]), (g["HyenaMixer"], res["short_sources"])):
        lines, first = inspect.getsourcelines(cls.forward)
        for s in sources:
            path, _, line = s.rpartition(":")
            assert path.endswith("custom_model.py") and first <= int(line) < first + len(lines), (cls, s)
    assert res["positions_checked"] == 12 and 0.0 <= res["teacher_forcing_err"] <= TOL, res
    assert res["greedy_equal"] is True, res
    # the circular model is refused, with the op and the line of the circular FFT conv
    assert res["refused"] is True
    assert res["refusal_op"] and res["refusal_op"].startswith("aten._fft"), res["refusal"]
    assert f"{res['refusal_op']}" in res["refusal"] and "custom_model.py:" in res["refusal"], res["refusal"]
    assert "circular" in res["refusal"].lower(), res["refusal"]
    lines, first = inspect.getsourcelines(g["CircularFFTConv"].forward)
    assert first <= res["refusal_line"] < first + len(lines), res
    assert "n=L" in res["refusal_code"], res["refusal_code"]


def test_custom_model_refuses_bad_arguments():
    main = _load("custom_model.py")["main"]
    with pytest.raises(SystemExit):
        main(["--prompt-len", "4", "--prefill", "4"])  # nothing left to step


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py") if p.name != "__init__.py"))
def test_example_runs_as_a_script(name):
    """``python examples/<name> --help`` from the repo root: the script's imports resolve."""
    out = subprocess.run([sys.executable, str(Path("examples") / name), "--help"], cwd=ROOT,
                         capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("usage:") and "--new-tokens" in out.stdout, out.stdout


def test_idioms_package_imports_every_file():
    idioms = importlib.import_module("examples.idioms")
    assert Path(idioms.__file__).resolve().parent == EXAMPLES / "idioms"
    assert len(idioms.ZOO) > 0 and len(set(idioms.names())) == len(idioms.ZOO)
    files = sorted(p.stem for p in (EXAMPLES / "idioms").glob("*.py") if p.stem != "__init__")
    assert files, "examples/idioms/ has no idiom files"
    used = {e.build.__module__ for e in idioms.ZOO}
    for stem in files:
        mod = f"examples.idioms.{stem}"
        assert getattr(idioms, stem, None) is sys.modules.get(mod) is not None, f"{mod} is not imported by the package"
        assert mod in used, f"no ZOO entry is built by {mod}"
    for name in ("ZOO", "ZooEntry", "IDIOM_TAGS", "get", "names", "streamable", "refused", "output_tensors"):
        assert hasattr(idioms, name), name
