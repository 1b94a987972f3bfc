"""Shared helpers of the benchmarks: timing, machine description, results files."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except Exception:
        pass
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except Exception:
        affinity = None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "affinity": affinity,
            "torch": torch.__version__, "python": platform.python_version(),
            "capability": torch.backends.cpu.get_cpu_capability()}


def median_time(fn, reps: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def min_time(fn, reps: int = 5) -> float:
    """Fastest of ``reps`` runs after one warm-up (interference only ever adds time)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def loglog_slope(xs, ys) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    num = sum((a - mx) * (b - my) for a, b in zip(lx, ly))
    den = sum((a - mx) ** 2 for a in lx)
    return num / den


def write_results(name: str, payload: dict, table: str) -> tuple[Path, Path]:
    """Write ``results/<name>.json`` and ``results/<name>.md`` (the table the docs quote)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = dict(payload)
    payload["machine"] = machine()
    payload["command"] = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    payload["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    jp = RESULTS / f"{name}.json"
    jp.write_text(json.dumps(payload, indent=1, default=str))
    mp = RESULTS / f"{name}.md"
    m = payload["machine"]
    mp.write_text(f"<!-- written by {payload['command']} -->\n"
                  f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['capability']}), "
                  f"{m['torch_threads']} threads, pinned to CPUs {m['affinity']}. Date: {payload['date']}.\n"
                  f"Command: `{payload['command']}`\n\n{table}\n")
    return jp, mp
