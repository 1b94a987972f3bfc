"""The layout promises one-way data flow (DESIGN.md section 5): checked on the import graph.

Layers, earliest first: base (errors, ops, report, options) -> capture/ -> passes/ -> pipeline ->
codegen/ -> runtime/ -> entry points (api, backend, cli, models). A module may import its own
layer and earlier ones, never a later one, and the package has no import cycle.
"""

from __future__ import annotations

import ast
import functools
import pathlib

import networkx as nx
import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "lcsm_compile"

LAYERS = {
    "errors": 0, "ops": 0, "report": 0, "options": 0,
    "capture": 1,
    "passes": 2,
    "pipeline": 3,
    "codegen": 4,
    "runtime": 5,
    "api": 6, "backend": 6, "cli": 6, "models": 6, "incremental": 6, "inspection": 6, "visualize": 6, "artifact": 6,
    "__init__": 7,
}


@functools.lru_cache(maxsize=None)
def _module_list():
    return tuple(_scan())


def _modules():
    return _module_list()


def _scan():
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        yield name[: -len(".__init__")] if name.endswith(".__init__") else name, p


def _imports(name: str, path: pathlib.Path):
    """Package modules imported by ``name`` (module level and inside functions)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    mods = {m for m, _ in _modules()}
    out = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom):
            if n.level:
                parts = base[: len(base) - (n.level - 1)] + (n.module.split(".") if n.module else [])
            else:
                parts = (n.module or "").split(".")
            target = ".".join(parts)
            for a in n.names:
                full = f"{target}.{a.name}"
                out.add(full if full in mods else target)
        elif isinstance(n, ast.Import):
            out |= {a.name for a in n.names}
    return {t for t in out if t in mods and t != name}


@functools.lru_cache(maxsize=None)
def _graph():
    g = nx.DiGraph()
    for name, path in _modules():
        g.add_node(name)
        for t in _imports(name, path):
            g.add_edge(name, t)
    return g


def _layer(mod: str) -> int:
    parts = mod.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    return LAYERS[key]


def test_every_module_has_a_layer():
    unplaced = []
    for name, _ in _modules():
        parts = name.split(".")
        if (parts[1] if len(parts) > 1 else "__init__") not in LAYERS:
            unplaced.append(name)
    assert not unplaced, f"modules the layout does not place: {unplaced}"
    assert len(_modules()) > 20


def test_no_import_cycle():
    cycles = list(nx.simple_cycles(_graph()))
    assert not cycles, cycles[:5]


@pytest.mark.parametrize("name", [m for m, _ in _modules()])
def test_imports_flow_one_way(name):
    g = _graph()
    later = [t for t in g.successors(name) if _layer(t) > _layer(name)]
    assert not later, f"{name} (layer {_layer(name)}) imports later layers: {later}"
