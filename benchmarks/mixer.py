"""Mixer benchmark: the online engine against the lazy and eager streaming baselines.

One group of C causal long-convolution channels (C = 1024 stands for 4 layers x 256), batch 1,
fp32, generating L positions from an empty prompt. For each L:

* ``online``: the engine, every step run and timed (median of ``--reps`` full runs);
* ``lazy``: each output a dot product over the whole history (O(t) per step);
* ``eager``: each input pushed into all future outputs (O(L - t) per step).

Lazy and eager cost O(L^2) in total; where a full run would take too long (``L >
--full-max``) their per-step time is measured at ``--samples`` evenly spaced positions and
integrated over all steps with the trapezoid rule (marked "sampled" in the table). The
floor is the FLOP count of the engine's tiling at the machine's measured peak rates (FFT
throughput for FFT tiles, GEMM throughput for the rest).

Statistic: every timing (online runs, baseline steps, peak rates) is the best of its
repetitions. The machine is shared, and other load only ever adds time; the same statistic
everywhere keeps the ratios fair. The peak rates are measured before and after the sizes
and the higher is used, so the floor is never inflated by a slow spell.

Run: ``python benchmarks/mixer.py`` (full) or ``--quick`` (small sizes, a smoke test).
Writes ``benchmarks/results/mixer.json`` and ``mixer.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import loglog_slope, min_time, write_results  # noqa: E402

from lcsm_compile import OnlineConv  # noqa: E402
from lcsm_compile.runtime import schedule  # noqa: E402
from lcsm_compile.runtime.baselines import EagerConv, LazyConv  # noqa: E402


def peak_rates(C: int) -> dict:
    """Measured peak throughputs on this machine: GEMM and batched real FFT (flop/s)."""
    n = 1024
    a = torch.randn(n, n)
    gemm = 2 * n ** 3 / min_time(lambda: a @ a, reps=5)
    best_fft = 0.0
    for U in (256, 1024, 4096):
        x = torch.randn(C, U)
        s = torch.fft.rfft(torch.randn(C, 2 * U), n=2 * U)
        t = min_time(lambda: torch.fft.irfft(torch.fft.rfft(x, n=2 * U) * s, n=2 * U), reps=7)
        flops = C * (2 * 2.5 * 2 * U * math.log2(2 * U) + 6 * (U + 1))
        best_fft = max(best_fft, flops / t)
    return {"gemm": gemm, "fft": best_fft}


def time_online(C: int, L: int, reps: int) -> tuple[float, OnlineConv]:
    k = torch.randn(C, L) / math.sqrt(L)
    eng = OnlineConv(k, max_len=L, batch_size=1)
    u = torch.randn(L, 1, C)

    def run():
        eng.reset()
        for t in range(L):
            eng.step(u[t])

    return min_time(run, reps=reps), eng


def profile_online(eng: OnlineConv) -> dict:
    """Where one run's time goes: the per-step red cells, and tiles by size."""
    L = eng.max_len
    eng.reset()
    u = torch.randn(L, 1, eng.channels)
    diag = 0.0
    tiles = defaultdict(float)
    for t in range(L):
        t0 = time.perf_counter()
        eng.diag(u[t])
        t1 = time.perf_counter()
        eng.advance()
        t2 = time.perf_counter()
        diag += t1 - t0
        tile = schedule.tile_after_step(t, 0, L, eng.block)
        tiles[tile.size if tile else 0] += t2 - t1
    return {"red_cells_us_per_step": diag / L * 1e6,
            "tiles_us_per_step": {str(U): v / L * 1e6 for U, v in sorted(tiles.items())}}


def time_baseline(cls, C: int, L: int, full_max: int, samples: int) -> tuple[float, bool]:
    """Total time of L steps; sampled and integrated above ``full_max``."""
    k = torch.randn(C, L) / math.sqrt(L)
    eng = cls(k, max_len=L, batch_size=1)
    u = torch.randn(1, C)
    if L <= full_max:
        def run():
            eng.position = 0
            for _ in range(L):
                eng.step(u)
        return min_time(run, reps=3), False
    pts = sorted({int(round(x)) for x in torch.linspace(0, L - 1, samples).tolist()})
    per = []
    for t in pts:
        def one():
            eng.position = t
            eng.step(u)
        per.append(min_time(one, reps=3))
    total = 0.0
    for (t0, a), (t1, b) in zip(zip(pts, per), zip(pts[1:], per[1:])):
        total += (a + b) / 2 * (t1 - t0)
    total += per[-1]  # the last step itself
    return total, True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, nargs="+", default=[1024, 256])
    ap.add_argument("--min-log2", type=int, default=10)
    ap.add_argument("--max-log2", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3, help="full online runs per size (median)")
    ap.add_argument("--full-max", type=int, default=4096, help="largest L at which baselines run in full")
    ap.add_argument("--samples", type=int, default=12, help="sampled steps per baseline above --full-max")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test of the script")
    ap.add_argument("--out", default="mixer", help="results file name (benchmarks/results/<out>.json/.md)")
    args = ap.parse_args()
    if args.quick:
        args.channels, args.min_log2, args.max_log2, args.reps, args.full_max = [64], 8, 10, 1, 512
        args.out = args.out if args.out != "mixer" else "mixer_quick"
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    sizes = [(C, 1 << e) for C in args.channels for e in range(args.min_log2, args.max_log2 + 1)]
    peaks = {C: peak_rates(C) for C in args.channels}  # again after the sizes; the higher is kept
    for C, L in tqdm(sizes, desc="mixer benchmark", unit="config"):
        t_on, eng = time_online(C, L, args.reps)
        t_lazy, s_lazy = time_baseline(LazyConv, C, L, args.full_max, args.samples)
        t_eager, s_eager = time_baseline(EagerConv, C, L, args.full_max, args.samples)
        row = {"C": C, "L": L, "block": eng.block, "fft_from": eng.fft_from,
               "online_s": t_on, "lazy_s": t_lazy, "lazy_sampled": s_lazy,
               "eager_s": t_eager, "eager_sampled": s_eager,
               "online_us_per_step": t_on / L * 1e6,
               "speedup_vs_best_baseline": min(t_lazy, t_eager) / t_on}
        if L == 1 << args.max_log2:
            row["profile"] = profile_online(eng)
        rows.append(row)
        del eng
    for C in args.channels:
        again = peak_rates(C)
        peaks[C] = {k: max(v, again[k]) for k, v in peaks[C].items()}
    for r in rows:  # the floor from the higher peak rates (a lower floor: never in our favour)
        fl = schedule.tiling_flops(r["L"], r["C"], r["block"], r["fft_from"])
        floor = fl["fft"] / peaks[r["C"]]["fft"] + (fl["red"] + fl["direct"]) / peaks[r["C"]]["gemm"]
        r["flops_per_step"] = fl["total"] / r["L"]
        r["floor_us_per_step"] = floor / r["L"] * 1e6
        r["gap_to_floor"] = r["online_s"] / floor

    lines = ["| C | L | online us/step | lazy us/step | eager us/step | speedup vs best | floor us/step | online/floor | block, fft_from |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    summary = {}
    for C in args.channels:
        rs = [r for r in rows if r["C"] == C]
        for r in rs:
            lz = f"{r['lazy_s'] / r['L'] * 1e6:,.1f}{'*' if r['lazy_sampled'] else ''}"
            eg = f"{r['eager_s'] / r['L'] * 1e6:,.1f}{'*' if r['eager_sampled'] else ''}"
            lines.append(f"| {C} | {r['L']} | {r['online_us_per_step']:.1f} | {lz} | {eg} | "
                         f"{r['speedup_vs_best_baseline']:.1f}x | {r['floor_us_per_step']:.1f} | "
                         f"{r['gap_to_floor']:.1f}x | {r['block']}, {r['fft_from']} |")
        fit = [r for r in rs if (1 << 12) <= r["L"] <= (1 << 16)] or rs
        if len(fit) >= 2:
            summary[C] = {"slope_online_total_time": loglog_slope([r["L"] for r in fit], [r["online_s"] for r in fit]),
                          "slope_lazy_total_time": loglog_slope([r["L"] for r in fit], [r["lazy_s"] for r in fit]),
                          "fit_range": [fit[0]["L"], fit[-1]["L"]]}
    table = "\n".join(lines)
    table += "\n\n`*` sampled: per-step time measured at evenly spaced positions and integrated over all steps.\n"
    for C, s in summary.items():
        table += (f"\nC={C}: log-log slope of total online time vs L over {s['fit_range'][0]}..{s['fit_range'][1]}: "
                  f"**{s['slope_online_total_time']:.2f}** (lazy: {s['slope_lazy_total_time']:.2f}).")
    for r in rows:
        if "profile" in r:
            p = r["profile"]
            tiles = ", ".join(f"U={U}: {v:.1f}" for U, v in p["tiles_us_per_step"].items())
            table += (f"\n\nProfile C={r['C']} L={r['L']} (us per step, amortized): red cells {p['red_cells_us_per_step']:.1f}; "
                      f"tiles {tiles}.")
    table += "\n\nPeak rates measured here: " + ", ".join(
        f"C={C}: GEMM {p['gemm'] / 1e9:.1f} GFLOP/s, FFT {p['fft'] / 1e9:.1f} GFLOP/s" for C, p in peaks.items()) + "."
    print(table)
    jp, mp = write_results(args.out, {"rows": rows, "summary": summary, "peaks": peaks, "args": vars(args)}, table)
    print(f"\nwrote {jp} and {mp}")


if __name__ == "__main__":
    main()
