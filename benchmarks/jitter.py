"""The machine's own step-time tail: a CONSTANT workload timed like a generation step.

The long-run targets ("longest step <= 4x the median", issue 15 and issue 10) compare one
outlier among 10^5..10^6 steps with the median. This benchmark shows what the machine alone
gives for the same statistic: the same work every iteration (a fixed set of ``torch.mm`` on
fixed tensors, no allocation that varies, no Python branching), sized to the step's median
(``--median-ms``), timed ``--steps`` times with the wall clock and the thread's CPU clock,
exactly as ``benchmarks/long_run.py`` times steps. Whatever its longest/median is, an engine
step cannot be judged below it on this machine: interrupts, other processes, the hypervisor
(on a VM, time the vCPU is descheduled can be charged to the running thread) and frequency
changes hit a constant workload too.

Run: ``OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/jitter.py --steps 130048 --median-ms 0.7``
(the step count and median of the 2^17 long run). Writes ``benchmarks/results/jitter.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import write_results  # noqa: E402


def quantiles(xs: list) -> dict:
    """Median, tail quantiles and the longest of ``xs`` (seconds), ratios to the median. Quantiles
    by rank (the sample at ``int(p * n)``); ``long_run.percentiles`` interpolates between the two
    nearest ranks: at 10^5..10^6 samples the two differ by less than one sample's step."""
    x = sorted(xs)
    q = lambda p: x[min(len(x) - 1, int(p * len(x)))]  # noqa: E731
    med = q(0.5)
    return {"median_ms": med * 1e3, "p99": q(0.99) / med, "p99.9": q(0.999) / med, "p99.99": q(0.9999) / med,
            "longest_ms": x[-1] * 1e3, "longest": x[-1] / med, "at": xs.index(x[-1])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=130048)
    ap.add_argument("--median-ms", type=float, default=0.7, help="the constant work's target time per step")
    ap.add_argument("--out", default="jitter")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    a, b = torch.randn(256, 256), torch.randn(256, 64)
    out = torch.empty(256, 64)

    def unit():
        torch.mm(a, b, out=out)

    t0 = time.perf_counter()
    for _ in range(200):
        unit()
    per = (time.perf_counter() - t0) / 200
    reps = max(1, round(args.median_ms * 1e-3 / per))

    def work():
        for _ in range(reps):
            unit()

    for _ in range(100):  # warm-up
        work()
    wall, cpu = [], []
    pc, tt = time.perf_counter, time.thread_time
    for _ in range(args.steps):
        w0, c0 = pc(), tt()
        work()
        c1, w1 = tt(), pc()
        wall.append(w1 - w0)
        cpu.append(c1 - c0)
    rows = {"wall": quantiles(wall), "thread CPU": quantiles(cpu)}
    lines = [f"A constant workload ({reps} x torch.mm [256x256]@[256x64], one thread) timed {args.steps} times "
             f"like a generation step.", "",
             "| clock | median | p99 | p99.9 | p99.99 | longest | longest / median |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['median_ms']:.3f} ms | {r['p99']:.1f}x | {r['p99.9']:.1f}x | {r['p99.99']:.1f}x "
                     f"| {r['longest_ms']:.2f} ms (at {r['at']}) | **{r['longest']:.1f}x** |")
    text = "\n".join(lines)
    write_results(args.out, {"args": vars(args), "reps": reps, "rows": rows}, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
