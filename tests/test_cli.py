"""The ``lcsm`` command: explain / inspect of a model given as MODULE:FACTORY, the pictures,
``--help`` on every subcommand, and one clear line with exit status 2 for a wrong argument."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lcsm_compile import cli

ROOT = Path(__file__).resolve().parent.parent
FACTORY = "tests.cli_factory:make"


def _main(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("cmd", ["demo", "explain", "inspect", "bench"])
def test_help_on_every_subcommand(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lcsm {cmd}")
    if cmd == "inspect":
        assert "--dot" in out and "--tiling" in out and "--max-len" in out and "MODULE:FACTORY" in out


def test_explain_demo_model_without_argument(capsys):
    rc, out, _ = _main(capsys, "explain", "--layers", "1", "--d-model", "16")
    assert rc == 0 and "HyenaLM" in out and "long" in out.lower()


def test_explain_factory(capsys):
    rc, out, err = _main(capsys, "explain", FACTORY)
    assert rc == 0, err
    assert "HyenaLM" in out and "models.py:" in out  # the convolutions with the user's source lines
    assert "2 long" in out or out.lower().count("long_conv") >= 2


def test_explain_factory_from_a_file(capsys):
    rc, out, err = _main(capsys, "explain", str(ROOT / "tests" / "cli_factory.py") + ":make")
    assert rc == 0, err
    assert "HyenaLM" in out


def test_inspect_factory_with_pictures(capsys, tmp_path):
    dot, png = tmp_path / "graph.svg", tmp_path / "tiling.png"
    rc, out, err = _main(capsys, "inspect", FACTORY, "--max-len", "96", "--block", "2", "--delay-from", "8",
                         "--dot", str(dot), "--tiling", str(png))
    assert rc == 0, err
    for part in ("## groups", "group 0: 2 long convs", "## schedule", "block=2", "delay_from=8",
                 "delayed tile levels [8, 16, 32]", "kernels:", "## prefill program", "## step program",
                 "def forward(self", "max_len 96, batch 1, input ids"):
        assert part in out, (part, out[:3000])
    assert out.count("def forward(self") >= 2  # prefill and step programs as code
    # --dot: rendered by graphviz, or the DOT text next to it and a message saying so
    if dot.exists():
        assert dot.stat().st_size > 0 and "wrote" in out
    else:
        text = (tmp_path / "graph.dot").read_text()
        assert "graphviz `dot` not found" in out and "lcsm::long_conv" in text and "lcsm::short_conv" in text
    # --tiling: a PNG of the session's own schedule
    pytest.importorskip("matplotlib")
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
    assert "--tiling: wrote" in out and "block=2" in out.split("--tiling: wrote")[1]


def test_inspect_dot_of_the_step_program(capsys, tmp_path):
    out_dot = tmp_path / "step.dot"
    rc, out, err = _main(capsys, "inspect", FACTORY, "--max-len", "32", "--dot", str(out_dot), "--dot-graph", "step")
    assert rc == 0, err
    text = out_dot.read_text()
    assert "step program" in out and "step graph" in text
    assert text.count('fillcolor="#e45756"') >= 2 and text.count('fillcolor="#f58518"') >= 2


BAD = [  # (argument, what the one line must say)
    ("no_colon_here", "expected MODULE:FACTORY"),
    ("tests.cli_factory:", "expected MODULE:FACTORY"),
    ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
    ("tests/no_such_file.py:make", "no such file"),
    ("tests.cli_factory:missing", "has no attribute 'missing'"),
    ("tests.cli_factory:not_callable", "is not callable"),
    ("tests.cli_factory:returns_three", "must return (model, example_input), got a tuple of 3 items"),
    ("tests.cli_factory:returns_no_tensor", "[B, L] or [B, L, Din] tensor, got a list"),
    ("tests.cli_factory:raises", "raised RuntimeError: factory broke"),
    ("no_such_model.lcsm", "no_such_model.lcsm: no such file"),
]


@pytest.mark.parametrize("cmd", ["explain", "inspect"])
@pytest.mark.parametrize("arg,says", BAD)
def test_wrong_target_one_line_status_2(cmd, arg, says, capsys):
    rc, out, err = _main(capsys, cmd, arg)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith(f"lcsm {cmd}: error: "), err
    assert says in err and "Traceback" not in err + out


@pytest.mark.parametrize("argv,says", [
    (["--block", "3"], "--block must be a power of two"),
    (["--max-len", "0"], "--max-len must be >= 1"),
    (["--block", "8", "--delay-from", "4"], "--delay-from must be >= --block"),
])
def test_wrong_inspect_option_one_line_status_2(argv, says, capsys):
    rc, out, err = _main(capsys, "inspect", FACTORY, *argv)
    assert rc == 2 and err.count("\n") == 1 and says in err


def test_wrong_target_from_the_shell():
    """The installed entry point's behaviour: exit status 2, one line, no traceback."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for arg, says in (("no_colon_here", "expected MODULE:FACTORY"), ("model.lcsm", "no such file")):
        out = subprocess.run([sys.executable, "-m", "lcsm_compile.cli", "inspect", arg], capture_output=True,
                             text=True, cwd=str(ROOT), env=env, timeout=300)
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().count("\n") == 0 and says in out.stderr and "Traceback" not in out.stderr


def test_unsupported_model(capsys):
    """explain lists the refusal; inspect cannot build a session: one line, status 1."""
    rc, out, err = _main(capsys, "explain", "tests.cli_factory:circular")
    assert rc == 0 and "circular" in out.lower() and "cli_factory.py:" in out
    rc, out, err = _main(capsys, "inspect", "tests.cli_factory:circular")
    assert rc == 1 and err.count("\n") == 1 and "UnsupportedModelError" in err and "cli_factory.py:" in err


def test_export_then_explain_and_inspect_the_artifact(capsys, tmp_path):
    """lcsm export MODULE:FACTORY -o FILE; lcsm explain FILE.lcsm; lcsm inspect FILE.lcsm
    (programs as code, --tiling from the stored schedule); a file that is not an artifact: one
    line, status 2."""
    out_file = str(tmp_path / "m.lcsm")
    rc, out, err = _main(capsys, "export", FACTORY, "-o", out_file, "--max-len", "64")
    assert rc == 0 and "wrote" in out and os.path.getsize(out_file) > 0
    rc, out, err = _main(capsys, "explain", out_file)
    assert rc == 0 and "lcsm artifact" in out and "HyenaLM" in out and "long conv" in out
    png = str(tmp_path / "t.png")
    rc, out, err = _main(capsys, "inspect", out_file, "--tiling", png)
    assert rc == 0 and "== step program" in out and "lcsm.online_diag" in out and os.path.getsize(png) > 0
    bad = tmp_path / "bad.lcsm"
    bad.write_bytes(b"not a zip at all")
    rc, out, err = _main(capsys, "inspect", str(bad))
    assert rc == 2 and err.count("\n") == 1 and "not an lcsm artifact" in err
    rc, out, err = _main(capsys, "export", FACTORY, "-o", out_file, "--batch-sizes", "x")
    assert rc == 2 and "--batch-sizes" in err


def test_demo_end_to_end_is_exact_and_compares_speeds(capsys):
    """``lcsm demo`` at a tiny size: generates, checks exactness, and prints one speed line with
    the caching baseline and recompute ratios."""
    rc = cli.main(["demo", "--layers", "1", "--d-model", "16", "--prompt", "3", "--new-tokens", "24",
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and out.rstrip().endswith("OK"), out
    speed = [ln for ln in out.splitlines() if ln.startswith("speed per token")]
    assert len(speed) == 1 and "best caching baseline (" in speed[0] and "recomputing the forward" in speed[0]
    err = float(out.split("positions = ")[1].split()[0])
    assert err < 1e-4
