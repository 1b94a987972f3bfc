"""A user's own generation loop through ``torch.compile(model, backend=...)``: per-call time.

The loop every user writes without a cache (and Hugging Face ``generate()`` runs on a model
with ``use_cache=False``)::

    fast = torch.compile(model, backend="lcsm")
    for _ in range(n):
        logits = fast(ids)                        # the whole growing prefix
        ids = torch.cat([ids, logits[:, -1:].argmax(-1)], 1)

Model: ``lcsm_compile.models.HyenaLM`` (4 layers x d 256, vocab 256, max_len 2^15), batch 1,
fp32. At each context ``L`` (2^10 .. --max-ctx) it times the calls of that loop at context
``L`` (the median of ``--calls`` consecutive calls after the loop reaches ``L``):

* ``lcsm``: ``backend="lcsm"`` (the calls stream: each runs only its new position);
* ``inductor``: ``backend="inductor", dynamic=True`` (one full forward per call);
* ``eager``: the model itself (one full forward per call);
* ``step``: ``lcsm_compile.session(...).step`` at the same context, the streaming floor the
  loop's calls are compared with (``lcsm / step``: the overhead of going through the loop);
  each timed loop call is followed by one such step (alternated: both see the same machine).

and, separately, one full forward on a fresh input (not a growing prefix, so nothing
streams) through each backend: ``full lcsm`` (its per-call graph compiled by Inductor, the
default) and ``full lcsm op by op`` (``options={"inductor": False}``, both after a warm-up
call at that length: the filters of a new length) vs ``full eager`` / ``full inductor``.
First-call costs: ``setup`` (dynamo's static then dynamic graph, the lcsm front end twice, the
first session) and ``inductor first call`` (the full forward's second call, which compiles it
with Inductor: trace, compile, run, and the check against the op-by-op run).

The lcsm loop at context L is reached by a restart (a call with a new prompt of L - 1
positions, a compact copy like the loop's own inputs: a full forward, then the session's prefill)
rather than by running every call from 2^10; the calls timed after it are the steady state.
Writes ``benchmarks/results/compiled_loop.json`` and ``.md``. Run pinned::

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/compiled_loop.py [--max-ctx 32768]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _util import machine, write_results  # noqa: E402

import lcsm_compile  # noqa: E402
from lcsm_compile.backend import LcsmBackend  # noqa: E402
from lcsm_compile.models import HyenaLM  # noqa: E402


def _compact(t):
    """A compact copy (strides of a fresh tensor, as torch.cat gives; a [1, n] slice of a longer
    tensor keeps the longer row stride, and dynamo compiles another graph for such inputs)."""
    return t.clone(memory_format=torch.contiguous_format)


def _timed_calls(fn, ids, n):
    """Time ``n`` calls of the greedy loop from ``ids``; returns the per-call times."""
    ts = []
    with torch.no_grad():
        for _ in range(n):
            t0 = time.perf_counter()
            out = fn(ids)
            ts.append(time.perf_counter() - t0)
            ids = torch.cat([ids, out[:, -1:].argmax(-1)], 1)
    return ts


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-ctx", type=int, default=1 << 15, help="the longest context timed")
    ap.add_argument("--calls", type=int, default=16, help="calls timed at each context")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--no-inductor", action="store_true", help="skip the Inductor baseline")
    ap.add_argument("--out", default="compiled_loop")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    # the model's filters hold 2 * max_ctx positions: the loop's sessions (twice the context,
    # rounded up to a power of two) stay inside the model's own range
    model = HyenaLM(vocab=256, d_model=args.d_model, n_layers=args.layers, max_len=2 * args.max_ctx).eval()
    ctxs = [c for c in (1 << 10, 1 << 11, 1 << 12, 1 << 13, 1 << 14, 1 << 15) if c <= args.max_ctx] \
        or [args.max_ctx]
    g = torch.Generator().manual_seed(1)
    seq = torch.randint(0, 256, (1, args.max_ctx + 2 * args.calls + 2), generator=g)
    backend = LcsmBackend()
    fast = torch.compile(model, backend=backend)
    plain_backend = LcsmBackend()
    plain = torch.compile(model, backend=plain_backend, options={"inductor": False, "stream": False})
    ind = None if args.no_inductor else torch.compile(model, backend="inductor", dynamic=True)
    rows = []
    t_setup = time.perf_counter()
    _timed_calls(fast, seq[:, :64], 3)  # compile (static, then dynamic length) and a first session
    setup = time.perf_counter() - t_setup
    # the full forward's second call compiles its per-call graph with Inductor (fresh inputs)
    with torch.no_grad():
        t0 = time.perf_counter()
        fast(torch.randint(0, 256, (1, ctxs[0]), generator=g))
        inductor_first = time.perf_counter() - t0
        full_rep = max(backend.reports, key=lambda r: r.inductor_compiles)
        plain(_compact(seq[:, :64]))
        plain(_compact(seq[:, :65]))
    print(f"setup {setup:.1f} s; the full forward's Inductor compile: call {inductor_first:.1f} s "
          f"({full_rep.inductor_compiles} compile(s), {full_rep.full_forward})", flush=True)
    for L in ctxs:
        row = {"L": L}
        # a restart at this context (a full forward, then the session's prefill), then the loop;
        # each timed loop call is followed by one session.step at the same context (alternated,
        # so that both see the same machine: the ratio lcsm / step is the loop's overhead)
        sess = lcsm_compile.session(model, example=seq[:, :L], max_len=2 * L)
        ids = _compact(seq[:, : L - 1])
        ts, steps = [], []
        with torch.no_grad():
            sess.prefill(seq[:, :L])
            for i in range(2 + args.calls):
                t0 = time.perf_counter()
                out = fast(ids)
                ts.append(time.perf_counter() - t0)
                ids = torch.cat([ids, out[:, -1:].argmax(-1)], 1)
                if i >= 2:
                    t = i - 2
                    t0 = time.perf_counter()
                    sess.step(seq[:, L + t:L + t + 1])
                    steps.append(time.perf_counter() - t0)
        del sess
        row["lcsm"] = statistics.median(ts[2:])
        row["lcsm_calls"] = ts
        row["step"] = statistics.median(steps)
        row["eager"] = statistics.median(_timed_calls(model, seq[:, :L], 3))
        if ind is not None:
            _timed_calls(ind, seq[:, :L], 1)
            row["inductor"] = statistics.median(_timed_calls(ind, seq[:, :L], 3))
        full, full_plain = [], []  # fresh inputs: nothing to stream
        with torch.no_grad():
            fast(torch.randint(0, 256, (1, L), generator=g))  # this length's filters
            plain(torch.randint(0, 256, (1, L), generator=g))
            for _ in range(3):  # alternated, so both see the same machine
                for f, ts_ in ((fast, full), (plain, full_plain)):
                    x = torch.randint(0, 256, (1, L), generator=g)
                    t0 = time.perf_counter()
                    f(x)
                    ts_.append(time.perf_counter() - t0)
        row["full_lcsm"] = statistics.median(full)
        row["full_lcsm_op_by_op"] = statistics.median(full_plain)
        rows.append(row)
        best = min(row["eager"], row.get("inductor", float("inf")))
        print(f"L={L:6d}  lcsm {row['lcsm'] * 1e3:8.2f} ms  step {row['step'] * 1e3:7.2f} ms  eager "
              f"{row['eager'] * 1e3:8.1f} ms  inductor {row.get('inductor', float('nan')) * 1e3:8.1f} ms  "
              f"x{best / row['lcsm']:6.1f}   full lcsm {row['full_lcsm'] * 1e3:8.1f} ms  "
              f"(op by op {row['full_lcsm_op_by_op'] * 1e3:8.1f} ms)", flush=True)
    rep = max((r for r in backend.reports if r.calls), key=lambda r: r.calls["steps"], default=None)
    head = ("| context L | lcsm loop call (ms) | session.step (ms) | lcsm / step | eager call (ms) | "
            "inductor call (ms) | best baseline / lcsm | full forward: lcsm (ms) | full: lcsm / best | "
            "full: lcsm op by op (ms) |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        best = min(r["eager"], r.get("inductor", float("inf")))
        lines.append(f"| {r['L']} | {r['lcsm'] * 1e3:.2f} | {r['step'] * 1e3:.2f} | {r['lcsm'] / r['step']:.2f} | "
                     f"{r['eager'] * 1e3:.1f} | {r.get('inductor', float('nan')) * 1e3:.1f} | "
                     f"{best / r['lcsm']:.1f}x | {r['full_lcsm'] * 1e3:.1f} | {r['full_lcsm'] / best:.2f} | "
                     f"{r['full_lcsm_op_by_op'] * 1e3:.1f} |")
    growth = rows[-1]["lcsm"] / rows[0]["lcsm"] if len(rows) > 1 else float("nan")
    full_rep = max(backend.reports, key=lambda r: r.inductor_compiles)
    table = "\n".join(lines) + (
        f"\n\nPer-call growth of the lcsm loop from L={rows[0]['L']} to L={rows[-1]['L']}: {growth:.2f}x. "
        f"Setup (dynamo twice + the first session): {setup:.1f} s. The full forward's Inductor compile "
        f"(its second call, at L={ctxs[0]}): {inductor_first:.1f} s; Inductor compiles of that graph over the "
        f"whole run: {full_rep.inductor_compiles} ({full_rep.full_forward}). Calls of the timed graph: "
        f"{rep.calls if rep else {}}.")
    print(table)
    payload = {"machine": machine(), "args": vars(args), "rows": rows, "growth": growth, "setup_s": setup,
               "inductor_first_call_s": inductor_first, "inductor_compiles": full_rep.inductor_compiles,
               "full_forward": full_rep.full_forward,
               "command": "OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/compiled_loop.py " + " ".join(argv or sys.argv[1:])}
    write_results(args.out, payload, table)
    return payload


if __name__ == "__main__":
    main()
