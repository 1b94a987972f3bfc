"""The memory model of a streaming session: its bytes by part, stated before they are allocated.

:func:`predict` gives a :class:`MemoryReport` for a lowered model, a batch, a ``max_len`` and the
session options, before anything of ``max_len`` size exists; :func:`check` refuses a session
that would not fit in the available memory (:func:`available_bytes`) with a
:class:`~lcsm_compile.SessionError` naming the parts and the largest ``max_len`` that fits;
:func:`measure` accounts the tensors of an instantiated program exactly (the tests compare the
two). ``lcsm_compile.session(...).memory`` and ``explain(..., max_len=N).memory`` show them.

The parts (``B`` batch, ``C`` long-conv channels of a group, ``L = max_len``, ``s`` the compute
dtype's size: 4 for fp32, bf16 and fp16 inputs, 8 for fp64):

* ``buffer``: ``B C L s``: inputs and accumulators share one buffer
  (:class:`~lcsm_compile.runtime.engine.OnlineConv`);
* ``filters``: ``C L s``, once per group (the folded filters become views of it);
* ``spectra``: ``C (U+1) 2s`` per FFT level below ``split_from`` (one per immediate level,
  two per delayed level), about ``32 C min(split_from, L/2)`` bytes; split levels store none;
* ``red-cell block``: ``(3 B C + C) block s``; ``split caches``: about ``16 U s`` per split level;
* ``ring buffers`` (short convolutions), ``KV caches`` (attention), ``modal states``,
  ``tables`` (position tables read by the step program, at ``L``).

Transients on top: ``fold`` (the filters evaluated at ``L``, before the state exists),
``prefill`` (the model's forward over the prompt and :func:`.partitioned.prompt_conv`'s blocks),
``compile`` (Inductor compiling the step program at the first step, when it does). The peak is
``max(fold, state + max(prefill, compile))``; a process also holds what it held before (the
model, torch): :attr:`MemoryReport.base_bytes`. Details and measurements: docs/memory.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..errors import SessionError
from ..ops import compute_dtype
from . import schedule
from .cost_model import DIRECT_MAX_BYTES
from ..passes.lean_eval import CHUNK_BYTES
from .partitioned import PROMPT_BLOCK_BYTES, SplitTiles

__all__ = ["Part", "MemoryReport", "predict", "measure", "check", "available_bytes", "resident_bytes",
           "add_process_growth", "plan_report", "check_plan", "check_fold", "formulas",
           "peak_resident_bytes", "group_filters", "engine_parts", "HEADROOM"]

#: a session may plan to use at most this share of the available memory (the model is within
#: ~10% of the measured peak; the rest of the machine needs some too)
HEADROOM = 0.9
#: at most what the fold stage holds beyond its tensors: the chunk buffers of the fused pad +
#: transform (``passes/lean_eval.py``, up to two chunks) come from the allocator's heap (below
#: glibc's 32 MiB mmap threshold) and stay resident (measured at 2^14: 30-40 MiB)
FOLD_SLACK = 32 << 20
#: Inductor's working memory while it compiles a step program at the first step (measured: 27-32
#: MiB for the HyenaLM 2 x 128 and 4 x 256 step programs)
COMPILE_BYTES = 32 << 20


# ----------------------------------------------------------------------------- the machine
def available_bytes() -> Optional[int]:
    """Memory a new allocation can get without swapping or an out-of-memory kill: Linux'
    ``MemAvailable``, capped by the cgroup's limit (v2 ``memory.max`` - ``memory.current``, v1
    ``limit_in_bytes`` - ``usage_in_bytes``); None where neither can be read."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    for lim, cur in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                     ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(lim) as f:
                raw = f.read().strip()
            if raw == "max":
                continue
            with open(cur) as f:
                free = int(raw) - int(f.read().strip())
            if int(raw) < 1 << 60:
                avail = free if avail is None else min(avail, free)
        except (OSError, ValueError):
            continue
    return avail


def resident_bytes() -> Optional[int]:
    """This process' resident memory now (``/proc/self/statm``), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_resident_bytes() -> Optional[int]:
    """This process' peak resident memory so far (``ru_maxrss``), or None."""
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except Exception:  # not on this platform
        return None


def _fmt(n: Optional[float]) -> str:
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


# ----------------------------------------------------------------------------- the report
@dataclasses.dataclass
class Part:
    """One part of the state (or of a transient): its bytes and the formula they come from."""

    name: str
    bytes: int
    formula: str = ""
    owner: str = ""


@dataclasses.dataclass
class MemoryReport:
    """A session's memory by part (:mod:`module doc <lcsm_compile.runtime.memory>`).

    ``parts``: held for the session's life; ``transients``: peaks on top of what is held at
    that moment (``fold`` before the state exists, ``prefill`` on top of it). ``base_bytes``:
    the process' resident memory when the report was made (the model, torch, ...);
    ``available``: :func:`available_bytes` then. ``kind``: "predicted" (before allocation) or
    "measured" (the tensors of a live program)."""

    max_len: int
    batch_size: int
    parts: List[Part]
    transients: List[Part] = dataclasses.field(default_factory=list)
    base_bytes: Optional[int] = None
    available: Optional[int] = None
    kind: str = "predicted"
    notes: List[str] = dataclasses.field(default_factory=list)
    #: per online group: the schedule the prediction assumed (:func:`engine_plan`)
    schedules: Dict[int, dict] = dataclasses.field(default_factory=dict)
    #: the live program's tensors (:func:`measure`), when the session exists
    measured: Optional["MemoryReport"] = None

    @property
    def state_bytes(self) -> int:
        """Bytes held by the session (the sum of ``parts``)."""
        return sum(p.bytes for p in self.parts)

    def _transient(self, name: str) -> int:
        return sum(p.bytes for p in self.transients if p.name == name)

    @property
    def objects_bytes(self) -> int:
        """The part ``graphs and objects`` (:func:`add_process_growth`: already resident)."""
        return sum(p.bytes for p in self.parts if p.name == "graphs and objects")

    @property
    def allocation_bytes(self) -> int:
        """What the session allocates at its peak, beyond what it already holds when the report
        is made: ``max(fold, state + max(prefill, compile))`` (what :func:`check` compares with
        the available memory, which already excludes what is resident)."""
        return max(self._transient("fold"), self.state_bytes - self.objects_bytes
                   + max(self._transient("prefill"), self._transient("compile")))

    @property
    def peak_bytes(self) -> int:
        """The most the session adds to the process at once: :attr:`allocation_bytes` plus the
        graphs and objects it holds."""
        return self.allocation_bytes + self.objects_bytes

    @property
    def peak_rss(self) -> Optional[int]:
        """Predicted peak resident memory of the process: ``base_bytes + peak_bytes``."""
        return None if self.base_bytes is None else self.base_bytes + self.peak_bytes

    def by_name(self) -> Dict[str, int]:
        """Bytes per part name (summed over groups and layers)."""
        out: Dict[str, int] = {}
        for p in self.parts:
            out[p.name] = out.get(p.name, 0) + p.bytes
        return out

    def per_channel_position(self, channels: int) -> float:
        """State bytes per long-conv channel and position (``channels`` all groups' C)."""
        return self.state_bytes / max(1, channels * self.max_len * self.batch_size)

    def fits(self, headroom: float = HEADROOM) -> bool:
        """Whether the allocations fit in ``headroom`` of the available memory (True if unknown)."""
        return self.available is None or self.allocation_bytes <= headroom * self.available

    def __str__(self) -> str:
        lines = [f"memory ({self.kind}) at max_len={self.max_len}, batch={self.batch_size}:"]
        w = max([len(p.name) + len(p.owner) + 3 for p in self.parts + self.transients] + [10])
        for p in self.parts:
            label = f"{p.name} ({p.owner})" if p.owner else p.name
            lines.append(f"  {label:<{w}} {_fmt(p.bytes):>11}   {p.formula}")
        lines.append(f"  {'state':<{w}} {_fmt(self.state_bytes):>11}")
        for p in self.transients:
            lines.append(f"  {'+ ' + p.name + ' (transient)':<{w}} {_fmt(p.bytes):>11}   {p.formula}")
        lines.append(f"  {'peak':<{w}} {_fmt(self.peak_bytes):>11}   max(fold, state + max(prefill, compile)); objects once")
        if self.base_bytes is not None:
            lines.append(f"  process before: {_fmt(self.base_bytes)}; predicted peak resident "
                         f"{_fmt(self.peak_rss)}" + (f"; available {_fmt(self.available)}"
                                                     if self.available is not None else ""))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- the engine
def engine_parts(C: int, B: int, L: int, cdtype: torch.dtype, block: int, fft_from: int, delay_from: int,
                 split_from: int, tiles: str = "native", owner: str = "") -> List[Part]:
    """The parts of one :class:`~lcsm_compile.runtime.engine.OnlineConv` (exact bytes of its
    tensors; ``split caches`` an upper bound). ``tiles``: "native" / "triton" (direct tiles read
    ``k``: nothing stored) or "torch" (Toeplitz blocks up to ``DIRECT_MAX_BYTES`` per level)."""
    s = torch.empty((), dtype=cdtype).element_size()
    spectra = toeplitz = 0
    n_spec = 0

    def level(U: int, o: int) -> None:
        nonlocal spectra, toeplitz, n_spec
        if o > 1 and U >= split_from:
            return
        if U < fft_from and tiles in ("native", "triton"):
            return
        if U < fft_from and C * U * U * s <= DIRECT_MAX_BYTES:
            toeplitz += C * U * U * s
            return
        spectra += C * (U + 1) * 2 * s
        n_spec += 1

    for U in schedule.levels(L, 0, block, delay_from):
        level(U, 1)
    split = []
    for U in schedule.delayed_levels(L, 0, block, delay_from):
        if U >= split_from:
            split.append(U)
        for o in (2, 3):
            if o * U < L:
                level(U, o)
    parts = [
        Part("buffer", B * C * L * s, f"B x C x max_len x {s} = {B} x {C} x {L} x {s} (inputs and accumulators, "
             f"one buffer)", owner),
        Part("filters", C * L * s, f"C x max_len x {s} = {C} x {L} x {s}", owner),
        Part("spectra", spectra, f"C x (U+1) x {2 * s} per FFT level U >= fft_from={fft_from} below "
             f"split_from={split_from if split_from < schedule.NO_SPLIT else 'none'}: {n_spec} spectra", owner),
        Part("red-cell block", (3 * B * C + C) * block * s + 5 * 8, f"(3 x B x C + C) x block x {s}, block={block}",
             owner),
    ]
    if toeplitz:
        parts.append(Part("toeplitz", toeplitz, "C x U x U x s per direct level (torch kernels)", owner))
    if split:
        parts.append(Part("split caches", SplitTiles.cache_bytes(split, split_from // 2, s),
                          f"about 16 x U x {s} per split level {split[0]}..{split[-1]} (the row in progress)", owner))
    return parts


def _kernel_tiles(kernels: str, cdtype: torch.dtype, device) -> str:
    from ..codegen import select_kernels

    try:
        return select_kernels(kernels, cdtype, device).impl
    except SessionError:
        return "torch"


def engine_plan(C: int, B: int, L: int, cdtype: torch.dtype, device, kernels: str = "auto",
                engine_options: Optional[dict] = None) -> dict:
    """The schedule an :class:`OnlineConv` of this shape will run (its ``__init__``'s choices:
    the cost model's ``block``/``fft_from`` unless given, then ``delay_from``, ``split_from``)."""
    from .cost_model import choose_plan

    eo = dict(engine_options or {})
    tiles = _kernel_tiles(kernels, cdtype, device)
    block, fft_from = eo.get("block"), eo.get("fft_from")
    if block is None or fft_from is None:
        plan = choose_plan(B, C, cdtype, torch.device(device), L // 2, native=tiles == "native")
        block = plan.block if block is None else block
        fft_from = plan.fft_from if fft_from is None else fft_from
    delay_from = eo.get("delay_from") or schedule.default_delay_from(B * C, int(block), int(fft_from))
    chunk = float(round(eo.get("chunk_flops") or schedule.CHUNK_FLOPS))
    split = eo.get("split_from") or schedule.default_split_from(chunk, int(fft_from))
    return {"block": int(block), "fft_from": int(fft_from), "delay_from": int(delay_from), "chunk_flops": chunk,
            "split_from": int(split), "tiles": tiles}


def group_filters(folded, members: Sequence[str], max_len: int, dtype: torch.dtype) -> torch.Tensor:
    """The filters of a group's ``members`` as one ``[C, max_len]`` buffer in the engine's
    compute dtype (zero-padded), written once; every folded filter that holds the same values
    becomes a view of it (``folded.filters``, and the same tensor in ``folded.tables``), so the
    filters are held once (pass the result with ``copy_filters=False``)."""
    from .engine import _zeros_huge

    ks = [folded.filters[m] for m in members]
    kdt = ks[0].dtype
    for kk in ks[1:]:
        kdt = torch.promote_types(kdt, kk.dtype)
    cd = compute_dtype(dtype if dtype == torch.float64 else kdt)
    rows = [math.prod(kk.shape[:-1]) for kk in ks]
    buf = _zeros_huge(sum(rows), max_len, dtype=cd, device=ks[0].device)
    r = 0
    for m, kk, n in zip(members, ks, rows):
        K = kk.shape[-1]
        buf[r:r + n, :min(K, max_len)] = kk.reshape(n, K)[:, :max_len]
        if kk.dtype == cd and K <= max_len:
            try:
                view = buf[r:r + n, :K].view(kk.shape)
            except RuntimeError:
                view = None
            if view is not None:
                folded.filters[m] = view
                for name, (v, td) in list(folded.tables.items()):
                    if v is kk:
                        folded.tables[name] = (view, td)
        r += n
    return buf


# ----------------------------------------------------------------------------- graphs
def _numel(val, subs) -> Optional[int]:
    shape = getattr(val, "shape", None)
    if shape is None:
        return None
    n = 1
    for d in shape:
        e = d.node.expr if isinstance(d, torch.SymInt) else d
        try:
            e = e.xreplace(subs) if hasattr(e, "xreplace") else e
            n *= int(e)
        except (TypeError, ValueError):
            return None
    return n


def _is_view(n) -> bool:
    sch = getattr(n.target, "_schema", None)
    if sch is None or not sch.returns:
        return False
    return sch.returns[0].alias_info is not None


def _storage_id(val) -> Optional[int]:
    try:
        from torch.multiprocessing.reductions import StorageWeakRef

        return StorageWeakRef(val.untyped_storage()).cdata
    except Exception:  # a value without a storage (a symbolic int, a fake without one)
        return None


def graph_peak(gm, L: int, B: int, ta, nodes: Optional[set] = None, compact: bool = False) -> tuple:  # noqa: C901
    """``(peak, outputs)``: live tensor bytes at the worst point of running ``gm`` (the nodes in
    ``nodes``, default all) at length ``L`` and batch ``B``, from the symbolic shapes of its
    nodes. Values that alias (views, and values whose traced fakes share a storage) are one
    allocation, made by its non-view member, freed after the last use of any of them; the
    model's own parameters (``get_attr``) allocate nothing. ``outputs``: the bytes still live
    at the end (the values used outside ``nodes``, or the graph's outputs). ``compact``: the
    savings of :class:`~lcsm_compile.passes.lean_eval.LeanInterpreter` (the fold stage's
    evaluation): fused pads allocate nothing, in-place elementwise ops reuse their operand, a
    result that is a view into a larger buffer is copied and the buffer freed at its last use."""
    import sympy

    subs = {}
    if ta is not None and isinstance(getattr(ta, "symbol", None), sympy.Symbol):
        subs[ta.symbol] = sympy.Integer(L)
    if ta is not None and isinstance(getattr(ta, "batch", None), sympy.Symbol):
        subs[ta.batch] = sympy.Integer(B)
    order = [n for n in gm.graph.nodes if nodes is None or n in nodes]
    pos = {n: i for i, n in enumerate(order)}
    parent: Dict[Any, Any] = {n: n for n in order}

    def find(n):
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    by_storage: Dict[int, Any] = {}
    for n in order:
        val = n.meta.get("val")
        if _is_view(n) and n.args and getattr(n.args[0], "op", None) is not None and n.args[0] in parent:
            parent[find(n)] = find(n.args[0])
        sid = _storage_id(val) if isinstance(val, torch.Tensor) else None
        if sid is not None:
            if sid in by_storage:
                parent[find(n)] = find(by_storage[sid])
            else:
                by_storage[sid] = n
    free_nodes = set()
    if compact:
        from ..passes.lean_eval import pad_fuses, runs_in_place

        members: Dict[Any, int] = {}
        for n in order:
            members[find(n)] = members.get(find(n), 0) + 1
        for n in order:
            if pad_fuses(n):
                free_nodes.add(n)
            elif runs_in_place(n) and n.args[0] in parent and find(n.args[0]) is n.args[0] \
                    and members.get(n.args[0], 0) == 1 and find(n) is n:
                parent[n] = n.args[0]  # written into its operand: one allocation
                free_nodes.add(n)
    size: Dict[Any, int] = {}
    born: Dict[Any, int] = {}
    resident = set()
    for n in order:
        r = find(n)
        val = n.meta.get("val")
        if n.op == "get_attr":
            resident.add(r)
            continue
        if n.op == "output" or _is_view(n) or not isinstance(val, torch.Tensor) or n in free_nodes:
            continue
        k = _numel(val, subs)
        if k is not None:
            size[r] = size.get(r, 0) + k * val.element_size()
            born.setdefault(r, pos[n])
    last: Dict[Any, int] = {}
    for n in order:
        r = find(n)
        last[r] = max(last.get(r, -1), pos[n])
        # a fused pad's input lives until its transform has run
        at = pos[next(iter(n.users))] if n in free_nodes and n.target == torch.ops.aten.constant_pad_nd.default \
            and next(iter(n.users)) in pos else pos[n]
        for a in n.all_input_nodes:
            if a in parent:
                ra = find(a)
                last[ra] = max(last.get(ra, -1), at)
    kept = []
    for n in order:
        if nodes is None:
            if n.op == "output":
                kept += [a for a in n.all_input_nodes if a in parent]
        elif any(u not in nodes for u in n.users):
            kept.append(n)
    keep = {find(n) for n in kept}
    events: Dict[int, int] = {}
    extra = 0
    if compact:
        whole = {find(n) for n in kept if not _is_view(n)}
        for n in kept:
            r = find(n)
            val = n.meta.get("val")
            k = _numel(val, subs) if isinstance(val, torch.Tensor) else None
            if r in whole or r in resident or r not in size or k is None or k * val.element_size() >= size[r]:
                continue
            keep.discard(r)  # the copy is made while the buffer still lives
            events[pos[n]] = events.get(pos[n], 0) + k * val.element_size()
            extra += k * val.element_size()
        for n in order:  # a fused pad + transform: the rows of one chunk in flight
            if n in free_nodes and n.target == torch.ops.aten.constant_pad_nd.default:
                i = pos[next(iter(n.users))]
                val = n.meta.get("val")
                k = _numel(val, subs) if isinstance(val, torch.Tensor) else None
                t = min(CHUNK_BYTES, 2 * k * val.element_size()) if k is not None else CHUNK_BYTES
                events[i] = events.get(i, 0) + t
                events[i + 1] = events.get(i + 1, 0) - t
    for r in size:
        if r in resident:
            continue
        b = born[r]
        events[b] = events.get(b, 0) + size[r]
        if r not in keep:
            d = last.get(r, b) + 1
            events[d] = events.get(d, 0) - size[r]
    live = peak = 0
    for i in range(len(order) + 1):
        live += events.get(i, 0)
        peak = max(peak, live)
    return peak, sum(size[r] for r in keep if r in size and r not in resident) + extra


def _fold_peak(low, L: int, skip: Sequence[str] = ()) -> tuple:
    """Predicted peak of the fold stage (the frontier evaluated at ``L``, then again at
    ``L // 3`` while those values live) and the bytes of the folded values; ``skip``: modal
    long convolutions, whose filters are not folded."""
    from ..passes.fold_filters import folded_frontier

    front = folded_frontier(low.gm, low.analysis, skip)
    need = set()
    stack = list(front)
    while stack:
        n = stack.pop()
        if n in need:
            continue
        need.add(n)
        stack.extend(n.all_input_nodes)
    peak, held = graph_peak(low.gm, L, 1, low.ta, need, compact=True)
    third, _ = graph_peak(low.gm, max(2, L // 3), 1, low.ta, need, compact=True)
    from ..passes.lean_eval import pad_fuses

    subs, pads = _subs(low, L, 1), [0]
    for n in need:
        if pad_fuses(n):
            k = _numel(n.meta.get("val"), subs)
            pads.append(0 if k is None else k * n.meta["val"].element_size())
    slack = min(FOLD_SLACK, 2 * min(CHUNK_BYTES, max(pads)))
    return max(peak, held + third) + slack, held


def _subs(low, L: int, B: int) -> dict:
    import sympy

    out = {}
    ta = low.ta
    if ta is not None and isinstance(ta.symbol, sympy.Symbol):
        out[ta.symbol] = sympy.Integer(L)
    if ta is not None and isinstance(getattr(ta, "batch", None), sympy.Symbol):
        out[ta.batch] = sympy.Integer(B)
    return out


def _table_bytes(low, L: int, filters: set) -> int:
    """Bytes of the position tables the step program reads (frontier values with a time dim,
    not a filter), at ``L``."""
    from ..passes.fold_filters import frontier

    subs = _subs(low, L, 1)
    total = 0
    for n in frontier(low.gm, low.analysis):
        if n in filters:
            continue
        info = low.analysis.info.get(n.name)
        if getattr(info, "time_dim", None) is None:
            continue
        k = _numel(n.meta.get("val"), subs)
        if k is not None:
            total += k * n.meta["val"].element_size()
    return total


# ----------------------------------------------------------------------------- prediction
def predict(low, max_len: int, batch_size: int, groups=None, shapes=None, *, engine: str = "online",
            engine_options: Optional[dict] = None, kernels: str = "auto", prompt_len: int = 0,
            prefill_gm=None, exclude: Sequence[str] = (), schedules: Optional[dict] = None,
            compile_step: bool = False) -> MemoryReport:
    """The memory of a session of ``low`` (a streamable :class:`~lcsm_compile.pipeline.Lowered`)
    at ``max_len`` and ``batch_size``, before allocating it.

    ``groups``/``shapes``: the plan's (:class:`~lcsm_compile.passes.groups.GroupPlan` and the
    shapes stage's); computed here (cheap) when None. ``prompt_len``: the prefill the transient
    is predicted for (the example's length). ``prefill_gm``: the plan's prefill graph (else the
    lowered graph stands for it). ``exclude``: long convolutions that hold no engine state (modal
    recurrences: their states are counted from the program). ``schedules``: ``{group index:
    engine_plan}`` to reuse (``block`` and ``fft_from`` then come from it, not the cost model);
    the report's ``schedules`` holds the ones used. ``compile_step``: the step program is
    compiled with Inductor at the first step (:data:`COMPILE_BYTES` then)."""
    from ..passes.common import LONG_CONV, SHORT_CONV

    L, B = int(max_len), int(batch_size)
    if groups is None or shapes is None:
        from ..pipeline import PLAN, ProgramPlan, run_stages

        stages = [s for s in PLAN if s.name in ("shapes", "groups")]
        pp = run_stages(ProgramPlan(low, max_len=max(2, L), batch_size=B), stages)
        groups, shapes = pp.groups, pp.shapes
    parts: List[Part] = []
    notes: List[str] = []
    used: Dict[int, dict] = {}
    by_name = {n.name: n for n in low.gm.graph.nodes}
    filt_nodes = {n.args[1] for n in low.gm.graph.nodes if n.op == "call_function" and n.target == LONG_CONV}
    for gi, g in enumerate(groups.groups if groups is not None else []):
        members = [m for m in g.members if m not in exclude]
        if not members:
            continue
        C = g.channels
        kdt = None
        for m in members:
            v = by_name[m].args[1].meta.get("val") if m in by_name else None
            dt = getattr(v, "dtype", None) or g.dtype
            kdt = dt if kdt is None else torch.promote_types(kdt, dt)
        cd = compute_dtype(g.dtype if g.dtype == torch.float64 else (kdt or g.dtype))
        owner = f"group {gi}: {C} channels"
        if engine == "online":
            eo = dict(engine_options or {})
            if schedules and gi in schedules:
                eo.setdefault("block", schedules[gi]["block"])
                eo.setdefault("fft_from", schedules[gi]["fft_from"])
            ep = used[gi] = engine_plan(C, g.batch, L, cd, g.device, kernels, eo)
            parts += engine_parts(C, g.batch, L, cd, ep["block"], ep["fft_from"], ep["delay_from"],
                                  ep["split_from"], ep["tiles"], owner)
        elif engine in ("lazy", "eager"):
            s = torch.empty((), dtype=cd).element_size()
            parts.append(Part("buffer", g.batch * C * L * s, f"B x C x max_len x {s} ({engine} baseline)", owner))
            parts.append(Part("filters", C * L * s * (2 if engine == "lazy" else 1),
                              f"C x max_len x {s}" + (" x 2 (and reversed)" if engine == "lazy" else ""), owner))
    rings = 0
    for name, (lead, C, dtype, device) in (shapes or {}).items():
        n = by_name.get(name)
        if n is None or n.target != SHORT_CONV:
            continue
        wv = n.args[1].meta.get("val") if hasattr(n.args[1], "meta") else None
        K = int(wv.shape[-1]) if isinstance(wv, torch.Tensor) else 1
        b = math.prod(lead) if lead else 1
        s = torch.empty((), dtype=dtype).element_size()
        rings += b * C * K * s + C * K * s + C * s
    if rings:
        parts.append(Part("ring buffers", rings, "B x C x K x s per short convolution (+ its weights)"))
    kv = 0
    for a in getattr(low, "attention", []) or []:
        try:
            kv += int(a.cache_bytes(B, L))
        except Exception:  # an attention record of another shape: counted from the program
            pass
    if kv:
        parts.append(Part("KV caches", kv, "B x heads x positions x (D + Dv) x s per attention layer"))
    tables = _table_bytes(low, L, filt_nodes)
    if tables:
        parts.append(Part("tables", tables, "position tables read by the step program, at max_len"))
    transients: List[Part] = []
    fold, held = _fold_peak(low, L, exclude)
    transients.append(Part("fold", fold, f"the filters and tables evaluated at max_len (then at max_len // 3); "
                                         f"{_fmt(held)} of values"))
    P = max(0, min(int(prompt_len), L))
    if P:
        g = prefill_gm if prefill_gm is not None else low.gm
        fwd, _ = graph_peak(g, P, B, low.ta)
        pc = min(PROMPT_BLOCK_BYTES * 2, max(p.bytes for p in parts if p.name == "buffer") if any(
            p.name == "buffer" for p in parts) else 0)
        transients.append(Part("prefill", fwd + pc, f"the model's forward over a {P}-position prompt and the "
                                                    f"prompt's convolution blocks"))
    if compile_step:
        transients.append(Part("compile", COMPILE_BYTES, "Inductor compiling the step program at the first step "
                                                         "(measured)"))
    if exclude:
        notes.append(f"modal recurrences ({len(exclude)}) hold O(B x C x modes) each: counted when measured")
    rep = MemoryReport(L, B, parts, transients, base_bytes=resident_bytes(), available=available_bytes(),
                       notes=notes)
    rep.schedules = used
    return rep


def plan_report(pl, *, engine: str = "online", engine_options: Optional[dict] = None, kernels: str = "auto",
                prompt_len: int = 0, max_len: Optional[int] = None, schedules: Optional[dict] = None,
                compile_step: bool = False) -> MemoryReport:
    """:func:`predict` for a :class:`~lcsm_compile.pipeline.ProgramPlan` (its groups, shapes and
    prefill program; modal recurrences are in no group), at ``max_len`` (default the plan's)."""
    modal = getattr(pl, "modal", None)
    rep = predict(pl.lowered, max_len or pl.max_len, pl.batch_size, pl.groups, pl.shapes, engine=engine,
                  engine_options=engine_options, kernels=kernels, prompt_len=prompt_len, prefill_gm=pl.prefill_gm,
                  schedules=schedules, exclude=tuple(getattr(modal, "filters", {}) or {}), compile_step=compile_step)
    n_modal = len(getattr(modal, "filters", {}) or {})
    if n_modal:
        rep.notes.append(f"{n_modal} long convolution(s) stream as modal recurrences: O(B x C x modes) each, "
                         f"counted when measured")
    return rep


def add_process_growth(report: MemoryReport, grown: Optional[int]) -> None:
    """Add what the session already holds when the report is made, before any state: the
    resident memory grown while lowering the model (``grown``, measured by the caller before the
    fold: the captured and rewritten graphs, their fake tensors and shape environments). Measured,
    not a formula; part ``graphs and objects``. (The fold's own leftovers are ``FOLD_SLACK``.)"""
    if grown is None:
        return
    report.parts.append(Part("graphs and objects", max(0, int(grown)), "measured: the process' growth while "
                                                                       "lowering the model"))


def check_plan(pl, report: MemoryReport, **options) -> None:
    """:func:`check` for a plan's report: the largest ``max_len`` that fits is searched with the
    same groups and schedule choices (no new cost-model timings)."""
    def peak_at(L: int) -> float:
        return plan_report(pl, max_len=max(2, L), schedules=report.schedules, **options).allocation_bytes
    check(report, peak_at)


def check_fold(low, max_len: int, skip: Sequence[str] = ()) -> None:
    """Refuse before the fold stage when evaluating the filters at ``max_len`` alone would not
    fit (that happens before any state exists: :func:`check_plan` covers the rest); ``skip``:
    the modal long convolutions (not folded)."""
    avail = available_bytes()
    if avail is None:
        return
    fold, held = _fold_peak(low, max_len, skip)
    if fold <= HEADROOM * avail:
        return
    rep = MemoryReport(max_len, 1, [], [Part("fold", fold, "the filters evaluated at max_len")],
                       base_bytes=resident_bytes(), available=avail)
    check(rep, lambda L: _fold_peak(low, max(2, L), skip)[0], what="session's filter folding")


# ----------------------------------------------------------------------------- measurement
def _engine_measured(eng, owner: str) -> List[Part]:
    """The parts of a live engine from its tensors (what :func:`engine_parts` predicts)."""
    parts = []
    if hasattr(eng, "_tile_data"):
        buf = eng.hist.nbytes + (0 if getattr(eng, "merged", False) else eng.acc.nbytes)
        parts.append(Part("buffer", buf, "measured", owner))
        parts.append(Part("filters", eng.k.nbytes, "measured", owner))
        spec = sum(d.nbytes for kind, d in eng._tile_data.values() if d is not None and kind == "fft")
        toe = sum(d.nbytes for kind, d in eng._tile_data.values() if d is not None and kind == "direct")
        parts.append(Part("spectra", spec, "measured", owner))
        blk = eng.blk_hist.nbytes + eng.blk_acc.nbytes + eng._stage.nbytes + eng._kb.nbytes + eng.meta.nbytes
        parts.append(Part("red-cell block", blk, "measured", owner))
        if toe:
            parts.append(Part("toeplitz", toe, "measured", owner))
        cache = 0
        sp = getattr(eng, "_split", None)
        if sp is not None:
            for row in sp._rows.values():
                cache += row.X.nbytes + row.inp.nbytes
            for _, c in sp._k.values():
                cache += sum(t.nbytes for t in c.values())
        if getattr(eng, "_split_levels", None):
            parts.append(Part("split caches", cache, "measured (now)", owner))
    else:  # a baseline engine
        seen = set()
        total = 0
        for v in vars(eng).values():
            if isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() not in seen:
                seen.add(v.untyped_storage().data_ptr())
                total += v.untyped_storage().nbytes()
        parts.append(Part("buffer", total, f"measured ({type(eng).__name__})", owner))
    return parts


def measure(prog) -> MemoryReport:
    """The bytes of an instantiated program's tensors by part (exact: the engines' state,
    filters, spectra and blocks; ring buffers, KV caches, modal states; the step program's
    constants (tables, weights it keeps))."""
    parts: List[Part] = []
    seen = set()
    for gi, eng in enumerate(prog.engines):
        ps = _engine_measured(eng, f"group {gi}: {getattr(eng, 'channels', '?')} channels")
        parts += ps
        for name in ("hist", "acc", "k", "_kb", "blk_hist", "blk_acc", "meta", "state", "k_rev"):
            t = getattr(eng, name, None)
            if isinstance(t, torch.Tensor):
                seen.add(t.untyped_storage().data_ptr())
        st = eng.state_tensors() if hasattr(eng, "state_tensors") else {}
        for t in st.values():
            seen.add(t.untyped_storage().data_ptr())
    rings = 0
    for r in prog.shorts.values():
        for t in (r.buf, r.w, r.bias):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                rings += t.nbytes
    if rings:
        parts.append(Part("ring buffers", rings, "measured"))
    kv = 0
    for c in getattr(prog, "attention", {}).values():
        for t in (c.k, c.v):
            seen.add(t.untyped_storage().data_ptr())
            kv += t.nbytes
    if kv:
        parts.append(Part("KV caches", kv, "measured"))
    modal = 0
    for m in getattr(prog, "modal", {}).values():
        for t in vars(m).values():
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                modal += t.nbytes
    if modal:
        parts.append(Part("modal states", modal, "measured"))
    low_gm = getattr(getattr(prog, "lowered", None), "gm", None)
    if low_gm is not None:  # the model's own parameters and buffers are not the session's
        for t in list(low_gm.parameters()) + list(low_gm.buffers()):
            seen.add(t.untyped_storage().data_ptr())
    tables = 0
    for gm in (prog.step_gm,):
        for name, t in list(gm.named_buffers()) + list(gm.named_parameters()):
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:
                continue
            seen.add(ptr)
            if name.startswith("_lcsm_const") or "_lcsm_const" in name:
                tables += t.untyped_storage().nbytes()
    if tables:
        parts.append(Part("tables", tables, "measured: the step program's folded constants"))
    return MemoryReport(prog.max_len, prog.batch_size, parts, kind="measured", base_bytes=None,
                        available=available_bytes())


# ----------------------------------------------------------------------------- the check
def largest_fitting(fn, max_len: int, budget: float) -> int:
    """The largest ``L <= max_len`` whose ``fn(L)`` (peak bytes) fits ``budget`` (0: none)."""
    lo, hi = 0, int(max_len)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fn(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def check(report: MemoryReport, peak_at=None, *, headroom: float = HEADROOM, what: str = "session") -> None:
    """Raise :class:`SessionError` when ``report``'s peak does not fit in ``headroom`` of the
    available memory, naming the parts and the largest ``max_len`` that fits (``peak_at(L)``:
    the peak at another length, for the search; the report's own scaling when None)."""
    avail = report.available
    if avail is None or report.allocation_bytes <= headroom * avail:
        return
    budget = headroom * avail
    if peak_at is None:
        scale = report.allocation_bytes / max(1, report.max_len)
        peak_at = lambda L: L * scale  # noqa: E731 - linear in max_len

    best = largest_fitting(peak_at, report.max_len, budget)
    big = sorted(report.parts, key=lambda p: -p.bytes)[:4]
    parts = ", ".join(f"{p.name}{' (' + p.owner + ')' if p.owner else ''} {_fmt(p.bytes)}" for p in big)
    trans = ", ".join(f"{p.name} {_fmt(p.bytes)}" for p in report.transients)
    msg = (f"the {what} would not fit in memory: at max_len={report.max_len}, batch={report.batch_size} it needs "
           f"{_fmt(report.allocation_bytes)} at its peak (state {_fmt(report.state_bytes)}: {parts}; transients: {trans}) "
           f"but {_fmt(avail)} is available ({int(headroom * 100)}% usable); "
           + (f"the largest max_len that fits is about {best}" if best > 0 else "no max_len fits") +
           " (docs/memory.md; memory_check=False skips this check)")
    err = SessionError(msg)
    err.max_len_fits = best
    err.memory = report
    raise err


class Formulas:
    """The memory model as formulas in ``max_len`` (what ``explain`` prints without one)."""

    def __init__(self, lines: List[str]):
        self.lines = lines

    def __str__(self) -> str:
        return "\n".join(["memory (formulas; pass max_len= for bytes):"] + [f"  {x}" for x in self.lines])

    def __repr__(self) -> str:
        return f"Formulas({self.lines!r})"


def formulas(pl, kernels: str = "auto") -> Formulas:
    """The state of a session of plan ``pl`` by part, as formulas in ``max_len`` (``B`` and the
    channels filled in; the spectra depend on ``fft_from``, chosen by the cost model when the
    session is made)."""
    lines = []
    by_name = {n.name: n for n in pl.lowered.gm.graph.nodes}
    for gi, g in enumerate(pl.groups.groups if pl.groups is not None else []):
        kdt = None
        for m in g.members:
            v = by_name[m].args[1].meta.get("val") if m in by_name else None
            dt = getattr(v, "dtype", None) or g.dtype
            kdt = dt if kdt is None else torch.promote_types(kdt, dt)
        cd = compute_dtype(g.dtype if g.dtype == torch.float64 else (kdt or g.dtype))
        s = torch.empty((), dtype=cd).element_size()
        B, C = g.batch, g.channels
        lines.append(f"group {gi} ({C} channels, batch {B}, state in {str(cd).replace('torch.', '')}): "
                     f"buffer {B} x {C} x max_len x {s} + filters {C} x max_len x {s} + spectra about "
                     f"{4 * s} x {C} x min(split_from, max_len / 2) (split_from = "
                     f"{schedule.default_split_from(schedule.CHUNK_FLOPS, 256)} for fft_from 256) bytes "
                     f"= {(B + 1) * s} x {C} x max_len bytes + spectra")
    rings = 0
    for name, (lead, C, dtype, device) in (pl.shapes or {}).items():
        n = by_name.get(name)
        from ..passes.common import SHORT_CONV

        if n is None or n.target != SHORT_CONV:
            continue
        wv = n.args[1].meta.get("val") if hasattr(n.args[1], "meta") else None
        K = int(wv.shape[-1]) if isinstance(wv, torch.Tensor) else 1
        rings += (math.prod(lead) if lead else 1) * C * K * torch.empty((), dtype=dtype).element_size()
    if rings:
        lines.append(f"ring buffers: {rings} bytes (independent of max_len)")
    for a in getattr(pl.lowered, "attention", []) or []:
        try:
            lines.append(f"KV cache {a.node}: {a.cache_formula()}")
        except Exception:  # another record shape
            pass
    lines.append("transients: the filters folded at max_len (before the state), the prompt's forward at prefill")
    return Formulas(lines)
