"""Pictures of what the compiler made: a rewritten graph as DOT, and the tiling schedule.

* :func:`graph_dot` / :func:`write_dot`: an FX graph (a lowered graph, a prefill or step
  program) as Graphviz DOT text, the convolutions highlighted: ``lcsm::long_conv`` (and the
  stateful long-conv calls of the programs) red, ``lcsm::short_conv`` (and the ring buffers)
  orange, any other ``lcsm::`` op yellow. :func:`write_dot` renders it with the ``dot`` binary
  to ``.svg``/``.png``/``.pdf`` when Graphviz is installed, else draws it with matplotlib
  (:func:`graph_figure`, a layered networkx layout) beside the DOT text and says so.
* :func:`tiling_pieces`: the (input ``s``, output ``t``) pairs of one long convolution as the
  schedule of :mod:`lcsm_compile.runtime.schedule` computes them (prefill, red cells, immediate
  and delayed tiles), each piece with the step(s) that compute it; :func:`tiling_figure` draws
  them with matplotlib (Agg backend: no display needed).

These take live objects (a ``GraphModule``, the schedule parameters of an engine:
``max_len``, ``prefill``, ``block``, ``delay_from``, ``fft_from``); ``lcsm inspect`` uses them.
matplotlib is an optional dependency (``pip install lcsm-compile[viz]``): without it
:func:`tiling_figure` raises :class:`VisualizationUnavailable` with a one-line message.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

from .errors import LcsmError
from .runtime import schedule as sched

__all__ = ["graph_dot", "write_dot", "graph_figure", "mixer_kind", "Piece", "tiling_pieces", "pairs_of", "tiling_figure",
           "VisualizationUnavailable", "DOT_FORMATS"]

#: output formats :func:`write_dot` renders with the Graphviz ``dot`` binary
DOT_FORMATS = ("svg", "png", "pdf")

#: fill colours of the highlighted nodes
_COLORS = {"long": "#e45756", "short": "#f58518", "lcsm": "#eeca3b"}
_LONG_OPS = {"long_conv", "online_diag", "online_prefill", "online_advance", "online_finish_prefill"}
_SHORT_OPS = {"short_conv", "ring_step", "ring_prefill"}


class VisualizationUnavailable(LcsmError):
    """A picture needs an optional package that is not installed (the message says which)."""


# ----------------------------------------------------------------------------- graphs
def mixer_kind(node: Any, mixers: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """``"long"``, ``"short"`` or ``"lcsm"`` (another ``lcsm::`` op) for a node that runs a
    convolution, else None. Recognized: the ``lcsm::`` ops (``torch.ops.lcsm.long_conv.default``
    ...), the unbound slots of a plan's programs (by ``mixers``: slot name -> kind, else by the
    name of the op node they replace) and the runtime members bound to them."""
    if getattr(node, "op", None) != "call_function":
        return None
    t = node.target
    name = str(t)
    if name.startswith("lcsm."):  # an OpOverload / OpOverloadPacket of the lcsm namespace
        op = name.split(".")[1]
        return "long" if op in _LONG_OPS else "short" if op in _SHORT_OPS else "lcsm"
    owner = getattr(t, "__self__", None)  # a bound runtime member: LongMember.step, ...
    cls = type(owner).__name__ if owner is not None else ""
    if cls == "LongMember":
        return "long"
    if cls == "ShortMember":
        return "short"
    if type(t).__name__ == "Slot":  # passes.step_graph.Slot (a plan's unbound program)
        slot = getattr(t, "name", "")
        if mixers and slot in mixers:
            return mixers[slot]
        return "long" if slot.startswith("long_conv") else "short" if slot.startswith("short_conv") else "lcsm"
    return None


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _shape(node: Any) -> str:
    v = node.meta.get("val") if hasattr(node, "meta") else None
    if v is None:
        v = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    shape = getattr(v, "shape", None)
    if shape is None:
        return ""
    dtype = str(getattr(v, "dtype", "")).replace("torch.", "")
    return f"[{', '.join(str(s) for s in shape)}] {dtype}".strip()


def _target_name(node: Any) -> str:
    t = node.target
    if node.op in ("get_attr", "call_module", "call_method"):
        return str(t)
    if type(t).__name__ == "Slot":
        return f"{t.mode}({t.name})"
    owner = getattr(t, "__self__", None)
    if owner is not None and hasattr(owner, "name"):
        return f"{type(owner).__name__}({owner.name}).{getattr(t, '__name__', '')}"
    name = str(t)
    if name.startswith("lcsm."):
        return "lcsm::" + name.split(".")[1]
    return name.replace("aten.", "aten::").replace(".default", "") if name.startswith("aten.") else \
        getattr(t, "__name__", name)


def graph_dot(gm: Any, title: Optional[str] = None, mixers: Optional[Mapping[str, str]] = None) -> str:
    """The FX graph of ``gm`` (a ``GraphModule`` or a ``torch.fx.Graph``) as DOT text: one node
    per FX node (name, target, shape), one edge per use; the convolution nodes
    (:func:`mixer_kind`) filled and bold, with a legend. ``mixers``: slot name -> ``"long"`` /
    ``"short"`` for a plan's programs (see :func:`mixer_kind`)."""
    graph = getattr(gm, "graph", gm)
    ids: Dict[Any, str] = {}
    lines = ["digraph lcsm {",
             f'  graph [rankdir=TB, labelloc=t, fontsize=14, label="{_esc(title or "lcsm graph")}"];',
             '  node [shape=box, style="rounded", fontname="Helvetica", fontsize=10];',
             '  edge [color="#555555", arrowsize=0.6];']
    counts = {"long": 0, "short": 0, "lcsm": 0}
    for i, n in enumerate(graph.nodes):
        ids[n] = f"n{i}"
        kind = mixer_kind(n, mixers)
        shape = _shape(n)
        if n.op == "placeholder":
            label, attrs = f"input {n.name}", 'shape=ellipse, style="filled", fillcolor="#c6dbef"'
        elif n.op == "output":
            label, attrs = "output", 'shape=ellipse, style="filled", fillcolor="#c6dbef"'
        elif n.op == "get_attr":
            label = n.name if n.name == str(n.target) else f"{n.name}\n{n.target}"
            attrs = 'shape=note, style="filled", fillcolor="#eeeeee", fontcolor="#555555"'
        else:
            label, attrs = f"{n.name}\n{_target_name(n)}", 'style="rounded"'
        if shape:
            label += f"\n{shape}"
        if kind is not None:
            counts[kind] += 1
            attrs = (f'style="filled,bold", penwidth=2.5, fillcolor="{_COLORS[kind]}", fontsize=12, '
                     f'fontname="Helvetica-Bold"')
        lines.append(f'  {ids[n]} [label="{_esc(label)}", {attrs}];')
    for n in graph.nodes:
        for a in n.all_input_nodes:
            if a in ids:
                lines.append(f"  {ids[a]} -> {ids[n]};")
    legend = [(k, f"{v} {('lcsm::long_conv' if k == 'long' else 'lcsm::short_conv' if k == 'short' else 'other lcsm op')}")
              for k, v in counts.items() if v]
    if legend:
        lines.append('  subgraph cluster_legend { label="convolutions"; fontsize=11; style="dashed";')
        for k, text in legend:
            lines.append(f'    legend_{k} [label="{_esc(text)}", style="filled,bold", fillcolor="{_COLORS[k]}"];')
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_dot(gm: Any, path: str, title: Optional[str] = None, mixers: Optional[Mapping[str, str]] = None) -> str:
    """Write the picture of ``gm`` (:func:`graph_dot`) to ``path`` and return a one-line message
    saying what was written. ``.svg``/``.png``/``.pdf`` are rendered with the Graphviz ``dot``
    binary; where it is not installed the DOT text goes to ``path`` with the suffix ``.dot``
    instead, and the message says so. Any other suffix (``.dot``, ``.gv``) gets the DOT text."""
    text = graph_dot(gm, title, mixers)
    root, ext = os.path.splitext(path)
    fmt = ext.lower().lstrip(".")
    if fmt not in DOT_FORMATS:
        _write(path, text)
        return f"wrote the DOT text of the graph to {path}"
    dot = shutil.which("dot")
    if dot is None:
        dot_path = root + ".dot"
        _write(dot_path, text)
        try:
            graph_figure(gm, path, title, mixers)
        except VisualizationUnavailable:
            return (f"graphviz `dot` not found: wrote the DOT text to {dot_path} instead of {path} "
                    f"(install graphviz, or render it with `dot -T{fmt} {dot_path} -o {path}`)")
        return (f"graphviz `dot` not found: drew {path} with matplotlib (a simpler layered layout) and wrote "
                f"the DOT text to {dot_path} (install graphviz for its layout: `dot -T{fmt} {dot_path} -o {path}`)")
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    res = subprocess.run([dot, f"-T{fmt}", "-o", path], input=text.encode(), capture_output=True, timeout=120)
    if res.returncode != 0:
        dot_path = root + ".dot"
        _write(dot_path, text)
        err = res.stderr.decode(errors="replace").strip().splitlines()
        return f"graphviz `dot` failed ({err[-1] if err else res.returncode}): wrote the DOT text to {dot_path}"
    return f"wrote {path} (graphviz dot)"


def graph_figure(gm: Any, path: Optional[str] = None, title: Optional[str] = None,
                 mixers: Optional[Mapping[str, str]] = None):
    """The FX graph of ``gm`` drawn with matplotlib (no Graphviz needed), written to ``path``
    when given (``.png``/``.svg``/``.pdf``); returns the ``Figure``.

    The same content as :func:`graph_dot` in a simpler layout: one row per topological
    generation of the use graph (networkx), data flowing down, one box per node; the
    convolution nodes (:func:`mixer_kind`) filled in their colours and labelled with their op,
    inputs and output blue; other nodes small grey boxes with their op name. Raises
    :class:`VisualizationUnavailable` without matplotlib."""
    import networkx as nx

    graph = getattr(gm, "graph", gm)
    nodes = list(graph.nodes)
    g = nx.DiGraph()
    g.add_nodes_from(range(len(nodes)))
    idx = {n: i for i, n in enumerate(nodes)}
    for n in nodes:
        for a in n.all_input_nodes:
            if a in idx:
                g.add_edge(idx[a], idx[n])
    level = {}
    for depth, gen in enumerate(nx.topological_generations(g)):
        for i in gen:
            level[i] = depth
    for i in g.nodes:  # weights and constants sit just above their first use, not all in row 0
        if g.in_degree(i) == 0 and g.out_degree(i) > 0 and nodes[i].op != "placeholder" or \
                nodes[i].op == "placeholder" and g.out_degree(i) > 0 and i != 0:
            level[i] = max(0, min(level[u] for u in g.successors(i)) - 1)
    rows = [[] for _ in range(max(level.values(), default=0) + 1)]
    for i in sorted(level):
        rows[level[i]].append(i)
    rows = [r for r in rows if r]
    width = max((len(r) for r in rows), default=1)
    pos = {}
    for y, row in enumerate(rows):
        for j, i in enumerate(row):
            pos[i] = ((j + 0.5) * width / len(row), -y)
    fig = _pyplot_free_figure((min(4 + 1.6 * width, 24), min(2 + 0.42 * len(rows), 60)))
    ax = fig.add_subplot(1, 1, 1)
    for a, b in g.edges:
        (x0, y0), (x1, y1) = pos[a], pos[b]
        ax.annotate("", xy=(x1, y1 + 0.18), xytext=(x0, y0 - 0.18),
                    arrowprops=dict(arrowstyle="-|>", color="#888888", lw=0.5, shrinkA=0, shrinkB=0))
    counts = {"long": 0, "short": 0, "lcsm": 0}
    for i, n in enumerate(nodes):
        kind = mixer_kind(n, mixers)
        x, y = pos[i]
        if kind is not None:
            counts[kind] += 1
            ax.text(x, y, f"{_target_name(n)}\n{_shape(n)}".strip(), ha="center", va="center", fontsize=8,
                    fontweight="bold", bbox=dict(boxstyle="round,pad=0.3", fc=_COLORS[kind], ec="black", lw=1.5))
        elif n.op in ("placeholder", "output"):
            label = f"input {n.name}" if n.op == "placeholder" else "output"
            ax.text(x, y, label, ha="center", va="center", fontsize=7,
                    bbox=dict(boxstyle="round,pad=0.3", fc="#c6dbef", ec="#555555", lw=0.6))
        else:
            name = n.name if n.op == "get_attr" else _target_name(n).replace("aten::", "")
            ax.text(x, y, name[:28], ha="center", va="center", fontsize=5.5, color="#333333",
                    bbox=dict(boxstyle="round,pad=0.2", fc="#f4f4f4", ec="#bbbbbb", lw=0.4))
    ax.set_xlim(-0.2, width + 0.2)
    ax.set_ylim(-len(rows) + 0.4, 0.6)
    ax.axis("off")
    legend = ", ".join(f"{v} {'long conv' if k == 'long' else 'short conv' if k == 'short' else 'other lcsm op'}"
                       f"{'s' if v != 1 else ''} ({'red' if k == 'long' else 'orange' if k == 'short' else 'yellow'})"
                       for k, v in counts.items() if v)
    ax.set_title((title or "lcsm graph") + (f"\n{legend}" if legend else ""), fontsize=10)
    fig.tight_layout()
    if path is not None:
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        fig.savefig(path, dpi=80)
    return fig


def _write(path: str, text: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


# ----------------------------------------------------------------------------- tiling
class Piece(NamedTuple):
    """A rectangle of (input ``s``, output ``t``) pairs ``[s0, s1) x [t0, t1)`` computed as one
    unit: ``kind`` ``"prefill"`` (the prompt's FFT convolution, ``steps`` None), ``"red"`` (the
    red-cell block of step ``t``, computed in that step), ``"tile"`` (an immediate tile of
    ``level`` U, run by the advance of one step) or ``"delayed"`` (one output block of a delayed
    tile of ``level`` U, its row chunks spread over the steps ``steps[0] .. steps[1]``)."""

    kind: str
    level: Optional[int]
    s0: int
    s1: int
    t0: int
    t1: int
    steps: Optional[Tuple[int, int]]


def tiling_pieces(max_len: int, prefill: int = 0, block: int = 1, delay_from: Optional[int] = None,
                  fft_from: Optional[int] = None, rows: int = 1,
                  chunk_flops: float = sched.CHUNK_FLOPS) -> List[Piece]:
    """Every (input, output) pair ``s <= t < max_len`` of one convolution, grouped in the pieces
    the schedule computes together (:class:`Piece`), read from :func:`schedule.step_work` (what
    the engine runs): the prefill, then per step ``t = prefill .. max_len-1`` its red cells and
    its tile work. ``rows`` (batch x channels) and ``chunk_flops``/``fft_from`` only decide how
    delayed tiles are cut into row chunks, i.e. over which steps they are spread."""
    if max_len < 1 or not 0 <= prefill <= max_len:
        raise ValueError(f"need 0 <= prefill <= max_len and max_len >= 1, got prefill={prefill}, max_len={max_len}")
    pieces: List[Piece] = []
    for t in range(min(prefill, max_len)):  # the prompt's own outputs (triangle)
        pieces.append(Piece("prefill", None, 0, t + 1, t, t + 1, None))
    if 0 < prefill < max_len:  # the prompt's contribution to every later output
        pieces.append(Piece("prefill", None, 0, prefill, prefill, max_len, None))
    tiles: Dict[tuple, list] = {}
    for t in range(prefill, max_len):
        b = sched.block_start(t, prefill, block)
        pieces.append(Piece("red", None, b, t + 1, t, t + 1, (t, t)))
        for w in sched.step_work(t, prefill, max_len, block, delay_from, rows, chunk_flops, fft_from):
            if w.r1 <= w.r0:
                continue
            key = (w.level, w.s0, w.s1, w.outs, w.delayed)
            span = tiles.setdefault(key, [t, t])
            span[0], span[1] = min(span[0], t), max(span[1], t)
    for (U, s0, s1, outs, delayed), (a, b) in tiles.items():
        for _, t0, t1 in outs:
            pieces.append(Piece("delayed" if delayed else "tile", U, s0, s1, t0, t1, (a, b)))
    return pieces


def pairs_of(pieces: Iterable[Piece]) -> Iterable[Tuple[int, int]]:
    """The (s, t) pairs of ``pieces``, with repetition (a pair in two pieces comes twice)."""
    for p in pieces:
        for t in range(p.t0, p.t1):
            for s in range(p.s0, p.s1):
                yield s, t


def _pyplot_free_figure(figsize):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise VisualizationUnavailable(
            f"pictures need matplotlib, which is not installed ({e}); "
            f"install it with `pip install matplotlib` (or `pip install lcsm-compile[viz]`)") from None
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)  # the Agg backend: no display, no global pyplot state
    return fig


def tiling_figure(max_len: int, prefill: int = 0, block: int = 1, delay_from: Optional[int] = None,
                  fft_from: Optional[int] = None, path: Optional[str] = None, rows: int = 1,
                  chunk_flops: float = sched.CHUNK_FLOPS, title: Optional[str] = None):
    """A matplotlib picture of the tiling (:func:`tiling_pieces`), written to ``path`` when given
    (format from the suffix: ``.png``, ``.svg``, ``.pdf``); returns the ``Figure``.

    Top: the pairs ``(s, t)``, input ``s`` across and output ``t`` down, one rectangle per
    piece: the prefill grey, red cells red, tiles coloured by level ``U`` (immediate tiles solid,
    delayed tiles hatched and dashed), large pieces labelled with the step(s) computing them.
    Bottom: for each step ``t`` the levels of the tile work its advance does (filled: immediate,
    hollow: a chunk of a delayed tile). Raises :class:`VisualizationUnavailable` without
    matplotlib."""
    pieces = tiling_pieces(max_len, prefill, block, delay_from, fft_from, rows, chunk_flops)
    fig = _pyplot_free_figure((9, 10.5))
    from matplotlib.collections import PatchCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle
    from matplotlib import colormaps

    gs = fig.add_gridspec(2, 1, height_ratios=(4.2, 1.0), hspace=0.18)
    ax, ax2 = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
    levels = sorted({p.level for p in pieces if p.level is not None})
    cmap = colormaps["viridis"]
    color = {U: cmap(0.15 + 0.75 * (i / max(1, len(levels) - 1))) for i, U in enumerate(levels)}

    def rects(sel):
        return [Rectangle((p.s0, p.t0), p.s1 - p.s0, p.t1 - p.t0) for p in sel]

    pre = [p for p in pieces if p.kind == "prefill"]
    red = [p for p in pieces if p.kind == "red"]
    if pre:
        ax.add_collection(PatchCollection(rects(pre), facecolor="#bdbdbd", edgecolor="none"))
    ax.add_collection(PatchCollection(rects(red), facecolor="#d62728", edgecolor="none", alpha=0.9))
    lw = 0.6 if max_len <= 256 else 0.2
    for U in levels:
        imm = [p for p in pieces if p.kind == "tile" and p.level == U]
        dly = [p for p in pieces if p.kind == "delayed" and p.level == U]
        if imm:
            ax.add_collection(PatchCollection(rects(imm), facecolor=color[U], edgecolor="white", linewidth=lw))
        if dly:
            ax.add_collection(PatchCollection(rects(dly), facecolor=color[U], edgecolor="black", linewidth=lw,
                                              linestyle="--", hatch="///", alpha=0.75))
    # step labels on the pieces big enough to hold one
    big = sorted((p for p in pieces if p.kind in ("tile", "delayed")), key=lambda p: -(p.s1 - p.s0))
    min_side = max(2, max_len / 24)
    for p in big[:80]:
        if min(p.s1 - p.s0, p.t1 - p.t0) < min_side:
            break
        a, b = p.steps
        ax.text((p.s0 + p.s1) / 2, (p.t0 + p.t1) / 2, f"t={a}" if a == b else f"t={a}..{b}", ha="center",
                va="center", fontsize=7, color="white" if p.kind == "tile" else "black")
    ax.plot([0, max_len], [0, max_len], color="black", linewidth=0.5)
    ax.set_xlim(0, max_len)
    ax.set_ylim(max_len, 0)
    ax.set_aspect("equal")
    ax.set_xlabel("input position s")
    ax.set_ylabel("output position t")
    D = delay_from if delay_from is not None and delay_from < max_len else None
    ax.set_title(title or (f"tiling of one long convolution: max_len={max_len}, prefill={prefill}, block={block}, "
                           f"delay_from={D if D is not None else 'none'}, fft_from={fft_from}"), fontsize=10)
    handles = ([Patch(facecolor="#bdbdbd", label="prefill (one FFT conv)")] if pre else []) + \
        [Patch(facecolor="#d62728", label="red cells (in the step)")] + \
        [Patch(facecolor=color[U], label=f"tile U={U}" + (" (FFT)" if fft_from is not None and U >= fft_from else ""))
         for U in levels]
    if any(p.kind == "delayed" for p in pieces):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="///", linestyle="--",
                             label="delayed tile (spread over steps)"))
    ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.9)
    # bottom: which levels each step computes
    for p in pieces:
        if p.level is None:
            continue
        a, b = p.steps
        y = math.log2(p.level)
        if p.kind == "tile":
            ax2.plot([a], [y], marker="s", markersize=4, color=color[p.level], linestyle="none")
        else:
            ax2.plot([a, b], [y, y], color=color[p.level], linewidth=1.0, linestyle="--")
            ax2.plot([a, b], [y, y], marker="o", markersize=4, markerfacecolor="white",
                     markeredgecolor=color[p.level], linestyle="none")
    ax2.set_xlim(0, max_len)
    if levels:
        ax2.set_yticks([math.log2(U) for U in levels], [str(U) for U in levels])
    ax2.set_xlabel("step t (the advance after output t)")
    ax2.set_ylabel("tile level U")
    ax2.legend(handles=[Line2D([], [], marker="s", color="gray", linestyle="none", label="immediate tile"),
                        Line2D([], [], marker="o", markerfacecolor="white", color="gray", linestyle="--",
                               label="delayed tile: first..last chunk")], fontsize=7, loc="upper left",
               bbox_to_anchor=(1.0, 1.0))
    ax2.grid(alpha=0.3)
    if path is not None:
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig
