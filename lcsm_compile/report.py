"""Records and reports: what the compiler found, refused and did, and how it is printed.

Plain data with no compiler logic (every layer may import it):

* :class:`ConvRecord`: one matched and verified convolution;
* :class:`Refusal`: why (part of) a model cannot be streamed: op, user's ``file:line``, reason.
  Passes return refusals as data; only the public entry points raise them
  (:meth:`Refusal.error`, :func:`refusal_error`);
* :class:`GraphReport`: what the backend did with one graph;
* :class:`Explanation`: the result of :func:`lcsm_compile.explain`, ``str()`` a readable report.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any, List, Optional, Sequence

from .errors import UnsupportedModelError

__all__ = ["ConvRecord", "AttentionRecord", "Refusal", "GraphReport", "Explanation", "refusal_error"]


@dataclasses.dataclass(frozen=True)
class ConvRecord:
    """One matched and verified convolution (what ``explain`` prints).

    ``kind``: "long" | "short" | "scan" (cumsum over time, streamed as a long conv with an
    all-ones filter). ``node``: name of the ``lcsm`` op node in ``Lowered.gm``. ``op``: the
    matched op (``aten._fft_c2r``, ``aten.convolution``, ``aten.cumsum``). ``source``:
    ``file:line`` of the user's code; ``code``: that line. ``u_shape`` / ``k_shape``: shapes in
    the model's layout (symbolic: ``B``, ``L``) and of the canonical filter. ``filter_origin``:
    what the filter is computed from. ``verified``: the probe result.
    """

    kind: str
    node: str
    op: str
    source: Optional[str]
    code: Optional[str]
    u_shape: str
    k_shape: str
    layout: str
    filter_origin: str
    fft_size: Optional[str]
    verified: str
    max_err: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class AttentionRecord:
    """One matched and verified causal attention layer (what ``explain`` prints), streamed with
    a KV cache (docs/frontend.md, "Attention").

    ``op``/``source``/``code``: the softmax and the user's line. ``q_shape`` / ``k_shape`` /
    ``v_shape``: the operands of its matmuls (``[N, L, D]``, ``[N, D, L]``, ``[N, L, Dv]``, ``N``
    = batch x heads). ``heads``: rows of ``N`` per batch row (query heads); ``kv_heads``: the
    key/value heads the cache keeps. ``scale``, ``window`` (0: none), ``slopes`` (ALiBi; None: no
    bias): the spec extracted by the probes. ``itemsize``: bytes per cached value.
    """

    kind: str
    node: str
    op: str
    source: Optional[str]
    code: Optional[str]
    q_shape: str
    k_shape: str
    v_shape: str
    heads: int
    head_dim: int
    v_dim: int
    scale: float
    window: int
    slopes: Optional[tuple]
    itemsize: int
    verified: str
    max_err: Optional[float] = None
    #: kv heads the cache keeps per batch row: ``heads / g`` for grouped-query heads (groups of
    #: ``g`` query heads sharing one key/value head, found by the probes), else ``heads``
    kv_heads: Optional[int] = None

    def cache_positions(self, max_len: int) -> int:
        """Positions the KV cache holds: ``max_len``, or the window (a ring)."""
        return min(max_len, self.window) if self.window else max_len

    def cache_bytes(self, batch: int, max_len: int) -> int:
        """Bytes of this layer's KV cache: ``batch * kv_heads * positions * (D + Dv) * itemsize``."""
        return batch * (self.kv_heads or self.heads) * self.cache_positions(max_len) * \
            (self.head_dim + self.v_dim) * self.itemsize

    def cache_formula(self) -> str:
        """The cache size as a formula in ``B`` and ``max_len``."""
        pos = f"min(max_len, {self.window})" if self.window else "max_len"
        return f"B x {self.kv_heads or self.heads} x {pos} x ({self.head_dim} + {self.v_dim}) x {self.itemsize} bytes"


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why (part of) a model cannot be streamed: the op, the user's ``file:line``, the reason."""

    op: Optional[str]
    source: Optional[str]
    reason: str
    node: Optional[str] = None
    code: Optional[str] = None

    def error(self) -> UnsupportedModelError:
        """This refusal as the exception the public entry points raise."""
        return UnsupportedModelError(self.reason, op=self.op, source=self.source)


def refusal_error(refusals: Sequence[Refusal]) -> UnsupportedModelError:
    """One :class:`UnsupportedModelError` for a list of refusals: the first, naming its op and
    source line, with up to three more summarized."""
    first = refusals[0]
    if len(refusals) == 1:
        return first.error()
    more = "; ".join(f"{r.reason} ({r.op} at {r.source})" for r in refusals[1:4])
    return UnsupportedModelError(f"{first.reason} (and {len(refusals) - 1} more: {more})",
                                 op=first.op, source=first.source)


@dataclasses.dataclass
class GraphReport:
    """What the backend did with one graph: ``mode`` ("lcsm" | "eager" | "inductor"), why, and
    the convolutions it rewrote."""

    mode: str
    reason: str
    long_convs: int = 0
    short_convs: int = 0
    refusals: list = dataclasses.field(default_factory=list)
    #: what the graph's calls do: stream (a call extending the previous input runs only its new
    #: positions) or why not
    streaming: str = ""
    #: what the calls did, for a graph whose calls stream: ``full`` forwards, streamed ``steps``,
    #: sessions ``made`` and ``grown`` (updated as the compiled model runs)
    calls: dict = dataclasses.field(default_factory=dict)
    #: how the full (not streamed) forward of an ``lcsm`` graph runs: compiled by Inductor (the
    #: ``lcsm`` ops as extern calls) or op by op, and why (an Inductor failure's reason)
    full_forward: str = ""
    #: Inductor compiles of the full forward (dynamo frames) and the wall time of the calls that
    #: compiled (trace, compile, run and the check against the op-by-op run)
    inductor_compiles: int = 0
    inductor_compile_s: float = 0.0


@dataclasses.dataclass
class Explanation:
    """What :func:`explain` found (see the module doc)."""

    long_convs: List[ConvRecord]
    short_convs: List[ConvRecord]
    refusals: List[Refusal]
    groups: list = dataclasses.field(default_factory=list)
    scans: List[ConvRecord] = dataclasses.field(default_factory=list)
    streamable: bool = False
    model_name: str = ""
    input_kind: str = ""
    valid_range: tuple = (1, None)
    stage_times: dict = dataclasses.field(default_factory=dict)
    lowered: Optional[Any] = dataclasses.field(default=None, repr=False)
    #: causal attention layers, streamed with a KV cache each (:class:`AttentionRecord`); the batch
    #: and ``max_len`` their cache sizes are printed for (``max_len`` None: the formula only)
    attention: List[AttentionRecord] = dataclasses.field(default_factory=list)
    batch_size: int = 1
    max_len: Optional[int] = None
    #: how each long convolution streams (node -> :class:`lcsm_compile.passes.modal.ConvPath`:
    #: ``path`` "modal" (an exact recurrence) or "online" (the online engine), and why)
    conv_paths: dict = dataclasses.field(default_factory=dict)
    #: the session's memory by part (``lcsm_compile.runtime.memory``): a report at ``max_len`` when
    #: given, else the formulas in B, C and ``max_len``; None for a model that does not stream
    memory: Optional[Any] = None
    #: which kernels a session with these options runs and why (``select_kernels``' note), and
    #: the emitted kernel sources in the kernel cache (``[(what, path)]``; empty until built)
    kernels: str = ""
    kernel_sources: list = dataclasses.field(default_factory=list)

    def errors(self):
        """Every refusal as an :class:`lcsm_compile.UnsupportedModelError`."""
        return [r.error() for r in self.refusals]

    @property
    def compiled_calls(self) -> str:
        """What calls of ``torch.compile(model, backend="lcsm")`` do for this model."""
        if self.streamable:
            return ("torch.compile(model, backend=\"lcsm\"): calls stream (a call extending the previous "
                    "call's input runs only its new positions)")
        why = self.refusals[0].reason if self.refusals else "not streamable"
        return f"torch.compile(model, backend=\"lcsm\"): every call runs the full forward ({why})"

    def __str__(self) -> str:
        from rich.console import Console
        from rich.table import Table

        buf = io.StringIO()
        con = Console(file=buf, width=160, force_terminal=False, color_system=None)
        verdict = "streamable" if self.streamable else "NOT streamable"
        hi = self.valid_range[1] if self.valid_range else None
        con.print(f"lcsm explain: {self.model_name} ({self.input_kind} input) - {verdict}; "
                  f"{len(self.long_convs)} long conv(s), {len(self.short_convs)} short conv(s), "
                  f"{len(self.scans)} scan(s), {len(self.refusals)} refusal(s)"
                  + (f"; valid for L <= {hi}" if hi else ""))
        con.print(self.compiled_calls)
        convs = self.long_convs + self.short_convs + self.scans
        if convs:
            t = Table(title="convolutions", show_lines=False, expand=False)
            for col in ("kind", "op", "source", "u shape / layout", "filter", "fft n", "filter origin",
                        "verification"):
                t.add_column(col, overflow="fold")
            for r in convs:
                t.add_row(r.kind, r.op, (r.source or "?") + (f"\n{r.code}" if r.code else ""),
                          f"{r.u_shape}\n{r.layout}", r.k_shape, r.fft_size or "-", r.filter_origin,
                          r.verified)
            con.print(t)
        if self.conv_paths:
            con.print(self._paths_table())
        if self.attention:
            con.print(self._attention_table())
        if self.memory is not None:  # the memory model (lcsm_compile/runtime/memory.py)
            con.print(str(self.memory), highlight=False, markup=False)
        if self.refusals:
            t = Table(title="refusals", expand=False)
            for col in ("op", "source", "reason"):
                t.add_column(col, overflow="fold")
            for r in self.refusals:
                t.add_row(r.op or "-", (r.source or "?") + (f"\n{r.code}" if r.code else ""), r.reason)
            con.print(t)
        if self.kernels:
            con.print(f"kernels: {self.kernels}", highlight=False, markup=False)
            for what, path in self.kernel_sources:
                con.print(f"  {what}: {path}", highlight=False, markup=False)
        if self.groups:
            t = Table(title="cross-layer parallel groups (one batched tile launch per step each)", expand=False)
            for col in ("group", "members (mixer depth)", "channels", "batch", "dtype"):
                t.add_column(col, overflow="fold")
            for i, g in enumerate(self.groups):
                mem = ", ".join(f"{m} ({g.depths[m]})" for m in g.members)
                t.add_row(str(i), mem, str(g.channels), str(g.batch), str(g.dtype).replace("torch.", ""))
            con.print(t)
        return buf.getvalue().rstrip() + "\n"

    def _paths_table(self):
        """How each long convolution streams (modal recurrence or online engine) and why."""
        from rich.table import Table

        t = Table(title="long convolutions: streaming path", expand=False)
        for col in ("node", "source", "path", "why"):
            t.add_column(col, overflow="fold")
        for c in self.conv_paths.values():
            t.add_row(c.node, (c.source or "?") + (f"\n{c.code}" if c.code else ""), c.path, c.reason)
        return t

    def _attention_table(self):
        """The attention layers and their KV caches, as a rich table."""
        from rich.table import Table

        t = Table(title="causal attention layers (streamed with a KV cache each)", expand=False)
        for col in ("op", "source", "q / k^T / v", "heads x dim", "spec", "KV cache", "verification"):
            t.add_column(col, overflow="fold")
        for a in self.attention:
            size = a.cache_formula()
            if self.max_len:
                size += f"\n= {a.cache_bytes(self.batch_size, self.max_len):,} bytes at B={self.batch_size}, " \
                        f"max_len={self.max_len}"
            bias = ("ALiBi slopes " + ", ".join(f"{m:.3g}" for m in a.slopes)) if a.slopes else "no bias"
            kvh = f" ({a.kv_heads} kv)" if a.kv_heads and a.kv_heads != a.heads else ""
            t.add_row(a.op, (a.source or "?") + (f"\n{a.code}" if a.code else ""),
                      f"{a.q_shape}\n{a.k_shape}\n{a.v_shape}", f"{a.heads}{kvh} x {a.head_dim}",
                      f"scale {a.scale:.4g}\n{'window ' + str(a.window) if a.window else 'no window'}\n{bias}",
                      size, a.verified)
        return t

    def __repr__(self) -> str:
        return (f"Explanation(streamable={self.streamable}, long_convs={len(self.long_convs)}, "
                f"short_convs={len(self.short_convs)}, scans={len(self.scans)}, "
                f"refusals={len(self.refusals)})")
