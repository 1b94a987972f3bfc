"""lcsm_compile.visualize: DOT pictures of rewritten graphs, the tiling picture and the pairs it
draws (checked from the schedule, not from the picture)."""

from collections import Counter

import pytest
import torch

from lcsm_compile import visualize as V
from lcsm_compile.models import HyenaLM
from lcsm_compile.pipeline import lower


@pytest.fixture(scope="module")
def lowered():
    torch.manual_seed(0)
    model = HyenaLM(vocab=32, d_model=16, n_layers=2, max_len=64).eval()
    low = lower(model, torch.randint(0, 32, (1, 8)))
    assert low.streamable, low.refusals
    return low


def _node_lines(dot, color):
    return [ln for ln in dot.splitlines() if f'fillcolor="{color}"' in ln and ln.strip().startswith("n")]


def test_dot_highlights_the_convolution_ops(lowered):
    dot = V.graph_dot(lowered.gm, "rewritten")
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    longs = _node_lines(dot, V._COLORS["long"])
    shorts = _node_lines(dot, V._COLORS["short"])
    n_long = sum(n.target is torch.ops.lcsm.long_conv.default for n in lowered.gm.graph.nodes)
    n_short = sum(n.target is torch.ops.lcsm.short_conv.default for n in lowered.gm.graph.nodes)
    assert (n_long, n_short) == (2, 2)
    assert len(longs) == n_long and all("lcsm::long_conv" in ln for ln in longs)
    assert len(shorts) == n_short and all("lcsm::short_conv" in ln for ln in shorts)
    assert "2 lcsm::long_conv" in dot and "2 lcsm::short_conv" in dot  # the legend
    # one DOT node per FX node, one edge per use
    assert sum(ln.strip().startswith("n") and "[label=" in ln for ln in dot.splitlines()) == \
        len(lowered.gm.graph.nodes)
    assert dot.count(" -> ") == sum(len(n.all_input_nodes) for n in lowered.gm.graph.nodes)


def test_dot_of_the_captured_graph_highlights_nothing(lowered):
    dot = V.graph_dot(lowered.captured_gm, "captured")
    assert not _node_lines(dot, V._COLORS["long"]) and not _node_lines(dot, V._COLORS["short"])
    assert "lcsm::" not in dot


def test_dot_of_a_plans_programs_highlights_the_slots(lowered):
    from lcsm_compile.inspection import mixer_kinds
    from lcsm_compile.pipeline import plan

    pl = plan(lowered, 32, 1)
    kinds = mixer_kinds(pl)
    assert sorted(kinds.values()) == ["long", "long", "short", "short"]
    for gm in (pl.prefill_gm, pl.step_gm):
        dot = V.graph_dot(gm, "program", mixers=kinds)
        assert len(_node_lines(dot, V._COLORS["long"])) == 2
        assert len(_node_lines(dot, V._COLORS["short"])) == 2


def test_dot_labels_are_escaped():
    import torch.fx as fx

    g = fx.Graph()
    x = g.placeholder('x"quoted"')
    g.output(x)
    dot = V.graph_dot(g, 'a "title"\nwith a newline')
    assert '\\"title\\"' in dot and "\\n" in dot and '\n"' not in dot


def test_write_dot_text_and_missing_graphviz(lowered, tmp_path, monkeypatch):
    msg = V.write_dot(lowered.gm, str(tmp_path / "g.dot"))
    assert (tmp_path / "g.dot").read_text() == V.graph_dot(lowered.gm, None) and "g.dot" in msg
    monkeypatch.setattr(V.shutil, "which", lambda name: None)
    msg = V.write_dot(lowered.gm, str(tmp_path / "pic.svg"), title="t")
    assert (tmp_path / "pic.dot").read_text().startswith("digraph")
    assert "not found" in msg and "pic.dot" in msg and "matplotlib" in msg
    svg = (tmp_path / "pic.svg").read_text()  # drawn with matplotlib instead: the convolutions' labels in it
    assert "<svg" in svg and svg.count("lcsm::long_conv") == 2 and svg.count("lcsm::short_conv") == 2


def test_graph_figure_without_matplotlib_says_so(lowered, tmp_path, monkeypatch):
    def missing(*a, **k):
        raise V.VisualizationUnavailable("pictures need matplotlib")

    monkeypatch.setattr(V, "_pyplot_free_figure", missing)
    monkeypatch.setattr(V.shutil, "which", lambda name: None)
    msg = V.write_dot(lowered.gm, str(tmp_path / "pic.png"))
    assert not (tmp_path / "pic.png").exists() and (tmp_path / "pic.dot").exists() and "not found" in msg


def test_write_dot_renders_with_graphviz(lowered, tmp_path):
    import shutil

    if shutil.which("dot") is None:
        pytest.skip("graphviz `dot` is not installed")
    out = tmp_path / "g.svg"
    msg = V.write_dot(lowered.gm, str(out))
    assert out.stat().st_size > 0 and "<svg" in out.read_text() and "graphviz" in msg


# ----------------------------------------------------------------------------- tiling
CASES = [  # (max_len, prefill, block, delay_from)
    (37, 0, 1, 4),        # odd length, delayed tiles from level 4
    (64, 5, 2, 8),        # prefill, blocks of 2
    (33, 3, 4, 4),        # odd, delay_from == block
    (50, 0, 1, None),     # no delayed tiles
    (129, 7, 4, 8),       # odd, longer
    (61, 0, 8, 64),       # delay_from beyond the length
    (16, 16, 1, None),    # prefill only
    (1, 0, 1, None),
]


@pytest.mark.parametrize("max_len,prefill,block,delay_from", CASES)
@pytest.mark.parametrize("rows", [1, 96])
def test_tiling_pieces_cover_every_pair_exactly_once(max_len, prefill, block, delay_from, rows):
    pieces = V.tiling_pieces(max_len, prefill, block, delay_from, fft_from=8, rows=rows, chunk_flops=2e4)
    counts = Counter(V.pairs_of(pieces))
    want = {(s, t) for t in range(max_len) for s in range(t + 1)}
    assert set(counts) == want, (sorted(set(counts) - want)[:5], sorted(want - set(counts))[:5])
    assert max(counts.values()) == 1, [p for p, c in counts.items() if c > 1][:5]


@pytest.mark.parametrize("max_len,prefill,block,delay_from", [c for c in CASES if c[0] > c[1] + 1])
def test_tiling_pieces_say_when_they_are_computed(max_len, prefill, block, delay_from):
    """Each piece is computed by a step that has its inputs (``s1 - 1 <= step``) and before its
    first output is needed (``step < t0``); red cells in their own step; a tile spread over
    steps only when it is delayed."""
    pieces = V.tiling_pieces(max_len, prefill, block, delay_from, fft_from=8, rows=4096, chunk_flops=2e5)
    kinds = Counter(p.kind for p in pieces)
    assert kinds["red"] == max_len - prefill
    if delay_from is not None and 2 * delay_from < max_len - prefill:
        assert kinds["delayed"] > 0
    for p in pieces:
        if p.kind == "prefill":
            assert p.steps is None and p.s1 <= prefill
            continue
        a, b = p.steps
        if p.kind == "red":
            assert a == b == p.t0 == p.t1 - 1
            continue
        assert p.s1 - 1 <= a <= b < p.t0, p
        assert p.s1 - p.s0 == p.level
        if p.kind == "tile":
            assert a == b
    assert any(p.kind == "delayed" and p.steps[0] < p.steps[1] for p in pieces) or kinds["delayed"] == 0


def test_tiling_pieces_reject_bad_arguments():
    with pytest.raises(ValueError):
        V.tiling_pieces(10, 11)
    with pytest.raises(ValueError):
        V.tiling_pieces(10, 0, block=3)


def test_tiling_figure_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "tiling.png"
    fig = V.tiling_figure(40, 3, 2, 4, 8, path=str(out), rows=64)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    ax = fig.axes[0]
    assert "max_len=40" in ax.get_title() and "delay_from=4" in ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "red cells (in the step)" in labels and any(lbl.startswith("tile U=") for lbl in labels)
    assert any("delayed" in lbl for lbl in labels)
    svg = tmp_path / "tiling.svg"
    V.tiling_figure(17, 0, 1, None, None, path=str(svg))
    assert "<svg" in svg.read_text()


def test_tiling_figure_without_matplotlib(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_mpl(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    with pytest.raises(V.VisualizationUnavailable, match="need matplotlib"):
        V.tiling_figure(16, 0, 1, None, None)
