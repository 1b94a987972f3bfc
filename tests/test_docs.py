"""The README's commands and examples are the ones CI runs and they work."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _bash_blocks():
    return re.findall(r"```bash\n(.*?)```", README, re.S)


def test_readme_test_command_is_what_ci_runs():
    blocks = [b.strip() for b in _bash_blocks()]
    test_cmd = [b for b in blocks if "pytest" in b]
    assert len(test_cmd) == 1, blocks
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd[0] in ci, "the README's test command and .ci/run diverged"
    assert "torch==2.13.0" in test_cmd[0]


def test_readme_quick_start_has_two_commands():
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    cmds = re.findall(r"```bash\n(.*?)```", quick, re.S)
    assert len(cmds) == 2 and all(c.strip().count("\n") == 0 for c in cmds)
    assert "lcsm demo" in cmds[0]


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 2  # the usage example and the engine example
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})  # raises if an example is broken


def test_docs_python_examples_run():
    for name in ("streaming.md",):
        text = (ROOT / "docs" / name).read_text()
        blocks = re.findall(r"```python\n(.*?)```", text, re.S)
        assert blocks, f"docs/{name} lost its example"
        for block in blocks:
            env = {}
            exec(compile(block, name, "exec"), env)  # raises if the example is broken
            assert env["ids"].shape == (2, 132) and env["logits"].shape == (2, 32, 256)
