"""Loaded artifacts: per-step time of the plain loaded step program against the one compiled
ahead of time with AOTInductor (``export(..., aot=True)``), and against live sessions.

Model: ``lcsm_compile.models.HyenaLM`` (``--layers`` x ``--d-model``, vocab 256, fp32), batch
``--batch``, ``max_len`` ``--max-len``. One export with ``aot=True`` (its time reported), then,
each from a prefill of ``--prompt`` tokens, ``--steps`` timed steps (median, after
``--warmup`` untimed ones) of:

* ``live session (graph)``: ``lcsm_compile.session(..., compile_step=False)``;
* ``live session (compiled step)``: ``compile_step=True`` (Inductor, its setup not timed);
* ``loaded, plain``: ``lcsm_compile.load(path, aot=False)``: the ``torch.export`` step
  program run as its ``GraphModule``;
* ``loaded, AOTInductor``: ``lcsm_compile.load(path)``: the step program's shared library.

All rows are the same model and inputs in one process, one after the other; ratios are to the
plain loaded program. The largest difference of the AOT outputs from the plain ones over the
timed steps is printed (float rounding: Inductor fuses).

Run: ``taskset -c 1 python benchmarks/artifact.py`` (about 3 minutes; ``--quick``: tiny).
Writes ``benchmarks/results/artifact.json`` and ``artifact.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _util import machine, write_results  # noqa: E402

import lcsm_compile  # noqa: E402
from lcsm_compile.models import HyenaLM  # noqa: E402


def _logits(y):
    return y[0] if isinstance(y, (tuple, list)) else getattr(y, "logits", y)


def time_session(sess, ids, prompt: int, steps: int, warmup: int):
    """Median seconds per step and the outputs of the timed steps."""
    sess.reset()
    sess.prefill(ids[:, :prompt])
    for t in range(prompt, prompt + warmup):
        sess.step(ids[:, t:t + 1])
    ts, outs = [], []
    for t in range(prompt + warmup, prompt + warmup + steps):
        t0 = time.perf_counter()
        y = sess.step(ids[:, t:t + 1])
        ts.append(time.perf_counter() - t0)
        outs.append(_logits(y))
    return statistics.median(ts), outs


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    ap.add_argument("--out", default="artifact")
    args = ap.parse_args(argv)
    if args.quick:
        args.layers, args.d_model, args.max_len, args.prompt, args.steps, args.warmup = 1, 16, 64, 8, 20, 4
        args.out += "_quick"
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = HyenaLM(vocab=256, d_model=args.d_model, n_layers=args.layers, max_len=args.max_len).eval()
    ids = torch.randint(0, 256, (args.batch, args.max_len))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.lcsm")
        t0 = time.perf_counter()
        lcsm_compile.export(model, ids[:, :16], max_len=args.max_len, path=path, aot=True, threads=1)
        export_s = time.perf_counter() - t0
        size = os.path.getsize(path)
        plain = lcsm_compile.load(path, aot=False).session(args.batch)
        aot = lcsm_compile.load(path, aot=True).session(args.batch)
        graph = lcsm_compile.session(model, ids[:, :16], max_len=args.max_len, compile_step=False)
        comp = lcsm_compile.session(model, ids[:, :16], max_len=args.max_len, compile_step=True)
        res = {}
        for name, sess in (("loaded, plain", plain), ("loaded, AOTInductor", aot),
                           ("live session (graph)", graph), ("live session (compiled step)", comp)):
            res[name] = time_session(sess, ids, args.prompt, args.steps, args.warmup)
    base = res["loaded, plain"][0]
    diff = max((a - b).abs().max().item() for a, b in zip(res["loaded, AOTInductor"][1], res["loaded, plain"][1]))
    for name, (med, _) in res.items():
        rows.append({"row": name, "ms_per_step": med * 1e3, "vs_plain_load": base / med})
    m = machine()
    lines = [f"HyenaLM {args.layers} x {args.d_model}, batch {args.batch}, max_len {args.max_len}, prompt "
             f"{args.prompt}, {args.steps} timed steps (median); export with aot=True {export_s:.1f} s, "
             f"artifact {size / 1e6:.1f} MB; max |AOT - plain| over the timed logits {diff:.1e}",
             f"machine: {m['cpu']}, torch {m['torch']}, 1 thread, affinity {m['affinity']}", "",
             "| step program | ms / step | speedup vs plain load |", "|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['ms_per_step']:.3f} | {r['vs_plain_load']:.2f}x |")
    table = "\n".join(lines)
    print(table)
    payload = {"args": vars(args), "machine": m, "export_s": export_s, "artifact_bytes": size,
               "max_abs_diff": diff, "rows": rows}
    write_results(args.out, payload, table)
    return payload


if __name__ == "__main__":
    main()
