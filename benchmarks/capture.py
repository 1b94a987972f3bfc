"""Front-end cost: capture + analysis of an 8-layer, d=256 Hyena LM (target <= 10 s on CPU).

    python benchmarks/capture.py [--layers 8] [--d 256] [--reps 3]

Times :func:`lcsm_compile.pipeline.lower` stage by stage (capture, analyze, match, verify,
rewrite, classify, check). The first run in a process pays dynamo/aot warm-up ("cold"); the
median of the following runs is "warm". Writes benchmarks/results/capture.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._util import RESULTS, machine  # noqa: E402
from lcsm_compile.models import HyenaLM  # noqa: E402
from lcsm_compile.pipeline import lower  # noqa: E402

FRONT = ("capture", "analyze", "match", "verify", "rewrite", "classify")


def one(model, example):
    t0 = time.perf_counter()
    low = lower(model, example)
    total = time.perf_counter() - t0
    st = dict(low.stage_times)
    st["capture+analysis"] = sum(st.get(k, 0.0) for k in FRONT)
    st["total"] = total
    return low, st


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "capture.json"))
    args = ap.parse_args()

    torch.manual_seed(0)
    model = HyenaLM(vocab=args.vocab, d_model=args.d, n_layers=args.layers, max_len=8192).eval()
    example = torch.randint(0, args.vocab, (1, 64))
    low, cold = one(model, example)
    warm_runs = [one(model, example)[1] for _ in range(args.reps)]
    keys = list(cold)
    warm = {k: statistics.median(r[k] for r in warm_runs) for k in keys}

    print(f"lower() of HyenaLM: {args.layers} layers, d={args.d}, vocab={args.vocab} "
          f"({len(low.long_convs)} long, {len(low.short_convs)} short convs, "
          f"streamable={low.streamable}, {len(low.gm.graph.nodes)} nodes)")
    print(f"{'stage':<18}{'cold s':>10}{'warm s':>10}")
    for k in keys:
        print(f"{k:<18}{cold[k]:>10.2f}{warm[k]:>10.2f}")
    target = 10.0
    print(f"capture+analysis: cold {cold['capture+analysis']:.2f} s, warm "
          f"{warm['capture+analysis']:.2f} s (target <= {target:.0f} s)")
    res = {
        "what": "lcsm_compile.pipeline.lower on lcsm_compile.models.HyenaLM (seconds)",
        "command": "python benchmarks/capture.py " + " ".join(sys.argv[1:]),
        "config": {"layers": args.layers, "d_model": args.d, "vocab": args.vocab,
                   "example": list(example.shape), "reps": args.reps},
        "machine": machine(),
        "n_long": len(low.long_convs), "n_short": len(low.short_convs),
        "streamable": low.streamable, "graph_nodes": len(low.gm.graph.nodes),
        "cold": cold, "warm_median": warm, "target_s": target,
        "meets_target": warm["capture+analysis"] <= target and cold["capture+analysis"] <= target,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
