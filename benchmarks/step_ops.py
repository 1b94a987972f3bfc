"""The per-step ops as C++ kernels against their Python bodies, interleaved in one session.

``lcsm_compile.codegen.cpu_ops`` registers C++ CPU kernels for the step's stateful ops (ring
steps, red cells, the advance of steps without tile work, modal steps); the Python bodies are
what ran before. Timed one after the other, two rows see different spells of this shared
machine (docs/benchmarks.md section 6), so here one compiled session (``compile_step=True``)
alternates between them: blocks of ``--block`` steps with the C++ kernels, then the same number
with the Python bodies (``cpu_ops.python_bodies()``), ``--blocks`` blocks in all, so slow spells
hit both alike. Reports each side's median and 10th percentile step and the ratio of medians.
The two sides compute the same bits (tests/test_cpu_ops.py).

Models: ``lcsm_compile.models.HyenaLM`` / ``StripedHyenaLM`` 4 x 256 (``--models``), at batch
sizes ``--batch``, steps ending near ``--context`` (default 2^15) after a prefill.

Run: ``OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/step_ops.py`` (about 4 minutes);
``--quick``: tiny sizes. Writes ``benchmarks/results/step_ops.md`` / ``.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _util import write_results  # noqa: E402

import lcsm_compile  # noqa: E402
from lcsm_compile.codegen import cpu_ops  # noqa: E402
from lcsm_compile.models import HyenaLM, StripedHyenaLM  # noqa: E402

MODELS = {"hyena": "HyenaLM", "striped": "StripedHyenaLM"}


def run(name: str, B: int, args) -> dict:
    torch.manual_seed(0)
    L = args.context
    if name == "hyena":
        model = HyenaLM(vocab=256, d_model=args.d_model, n_layers=args.layers, max_len=L).eval()
    else:
        model = StripedHyenaLM(vocab=256, d_model=args.d_model, n_layers=args.layers).eval()
    n = args.block * args.blocks
    ids = torch.randint(0, 256, (B, L), generator=torch.Generator().manual_seed(B))
    sess = lcsm_compile.session(model, ids[:, :16], max_len=L, compile_step=True, threads=1)
    P = L - n - args.warmup
    sess.prefill(ids[:, :P])
    pos = P
    for _ in range(args.warmup):  # the first one compiles (and builds / loads the C++ ops)
        sess.step(ids[:, pos:pos + 1])
        pos += 1
    times = {"cpp": [], "python": []}
    for b in range(args.blocks):
        side = "cpp" if b % 2 == 0 else "python"
        with contextlib.nullcontext() if side == "cpp" else cpu_ops.python_bodies():
            if cpu_ops.active() != (side == "cpp"):
                raise SystemExit(f"the C++ step ops are not available: {cpu_ops.status()}")
            for _ in range(args.block):
                t0 = time.perf_counter()
                sess.step(ids[:, pos:pos + 1])
                times[side].append(time.perf_counter() - t0)
                pos += 1
    out = {"model": MODELS[name], "batch": B, "steps_each": len(times["cpp"]), "positions": [P + args.warmup, pos]}
    for side, ts in times.items():
        s = sorted(ts)
        out[side] = {"median_ms": statistics.median(ts) * 1e3, "p10_ms": s[len(s) // 10] * 1e3,
                     "mean_ms": statistics.fmean(ts) * 1e3}
    out["cpp_over_python"] = out["cpp"]["median_ms"] / out["python"]["median_ms"]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="hyena,striped")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--context", type=int, default=1 << 15)
    ap.add_argument("--block", type=int, default=100, help="steps per block (one side)")
    ap.add_argument("--blocks", type=int, default=12, help="blocks in all, alternating (even: as many each)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    ap.add_argument("--out", default="step_ops")
    args = ap.parse_args(argv)
    if args.quick:
        args.layers, args.d_model, args.context, args.block, args.blocks, args.warmup = 2, 32, 512, 10, 4, 4
        args.batch = "1"
        args.out = args.out if args.out != "step_ops" else "step_ops_quick"
    torch.set_num_threads(1)
    rows = []
    for m in (s.strip() for s in args.models.split(",") if s.strip()):
        if m not in MODELS:
            ap.error(f"unknown model {m!r} (have {', '.join(MODELS)})")
        for B in (int(b) for b in args.batch.split(",")):
            r = run(m, B, args)
            rows.append(r)
            print(f"{r['model']} B={B}: C++ step ops {r['cpp']['median_ms']:.3f} ms, Python bodies "
                  f"{r['python']['median_ms']:.3f} ms (medians): {r['cpp_over_python']:.3f}x")
    lines = [f"{args.layers} x {args.d_model} models, compile_step=True, 1 thread, context {args.context}; "
             f"blocks of {args.block} steps alternating C++ step ops / Python bodies, {args.blocks} blocks.\n",
             "| model | batch | steps each | C++ median ms | C++ p10 ms | Python median ms | Python p10 ms | C++ / Python (medians) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['steps_each']} | {r['cpp']['median_ms']:.3f} | "
                     f"{r['cpp']['p10_ms']:.3f} | {r['python']['median_ms']:.3f} | {r['python']['p10_ms']:.3f} | "
                     f"**{r['cpp_over_python']:.2f}x** |")
    table = "\n".join(lines)
    print(table)
    jp, mp = write_results(args.out, {"rows": rows, "args": vars(args)}, table)
    print(f"wrote {jp} and {mp}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
