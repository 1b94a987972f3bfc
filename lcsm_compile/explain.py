"""``lcsm_compile.explain(model_or_compiled, example)``: what the front end found, and why.

Returns an :class:`Explanation` (the records of :func:`lcsm_compile.pipeline.lower`):

* ``long_convs`` / ``short_convs`` / ``scans``: :class:`lcsm_compile.pipeline.ConvRecord` - the op,
  the user's ``file:line`` and code, shapes (``B``, ``L`` symbolic), the filter's origin, the
  verification result (probe lengths and max relative error);
* ``refusals``: :class:`lcsm_compile.pipeline.Refusal` - op, ``file:line``, reason;
* ``groups``: the cross-layer parallel groups (:class:`lcsm_compile.passes.groups.Group`) of a
  streamable model: long convs that share one engine and one tile launch per step;
* ``streamable``; ``str()`` is a readable report (rich tables rendered to text).
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any, List, Optional

import torch

from .pipeline import ConvRecord, Lowered, Refusal, lower

__all__ = ["explain", "Explanation"]


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
    lowered: Optional[Lowered] = dataclasses.field(default=None, repr=False)

    def errors(self):
        """Every refusal as an :class:`lcsm_compile.UnsupportedModelError`."""
        return [r.error() for r in self.refusals]

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
        if self.refusals:
            t = Table(title="refusals", expand=False)
            for col in ("op", "source", "reason"):
                t.add_column(col, overflow="fold")
            for r in self.refusals:
                t.add_row(r.op or "-", (r.source or "?") + (f"\n{r.code}" if r.code else ""), r.reason)
            con.print(t)
        if self.groups:
            t = Table(title="cross-layer parallel groups (one batched tile launch per step each)", expand=False)
            for col in ("group", "members (mixer depth)", "channels", "batch", "dtype"):
                t.add_column(col, overflow="fold")
            for i, g in enumerate(self.groups):
                mem = ", ".join(f"{m} ({g.depths[m]})" for m in g.members)
                t.add_row(str(i), mem, str(g.channels), str(g.batch), str(g.dtype).replace("torch.", ""))
            con.print(t)
        return buf.getvalue().rstrip() + "\n"

    def __repr__(self) -> str:
        return (f"Explanation(streamable={self.streamable}, long_convs={len(self.long_convs)}, "
                f"short_convs={len(self.short_convs)}, scans={len(self.scans)}, "
                f"refusals={len(self.refusals)})")


def explain(model_or_compiled: Any, example: torch.Tensor, **options: Any) -> Explanation:
    """Explain how lcsm-compile sees ``model_or_compiled`` (a module or a ``torch.compile``
    result) on inputs like ``example``. Never raises for unsupported models: they come back
    with ``refusals`` filled. ``options`` go to :func:`lcsm_compile.pipeline.lower`."""
    from .capture import unwrap_model

    low = lower(model_or_compiled, example, **options)
    mod = unwrap_model(model_or_compiled)
    groups = list(low.groups)
    if low.streamable and not groups:
        from .runtime import group_plan

        groups = group_plan(low, batch_size=example.shape[0]).groups
    return Explanation(low.long_convs, low.short_convs, low.refusals, groups,
                       low.scans, low.streamable, type(mod).__name__, low.input_kind,
                       low.valid_range, dict(low.stage_times), low)
