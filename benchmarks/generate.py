"""End-to-end generation benchmark: a Hyena LM streamed by lcsm-compile against baselines.

Model: ``lcsm_compile.models.HyenaLM`` (4 layers, d = 256, vocab 256: one long conv and one
short conv per layer, 1024 long-conv channels in one cross-layer group), batch 1, fp32.
Per-token times, averaged over generating positions 0 .. L, for L = 2^11 .. 2^15:

* ``online``: ``lcsm_compile.session`` (online engine), every step of one run to 2^15 timed;
  the per-token average up to L is the mean of the first L steps. Also with
  ``compile_step=True`` (Inductor on the step program) when ``--compile``.
* ``floor``: the same step program with the long convolutions replaced by a free
  ``k[0] * u`` (``engine="none"``): the model's position-wise work alone.
* ``mixer``: the online engine alone on the model's group (1024 channels).
* ``lazy``/``eager``: the same step program with ``engine="lazy"`` (each long-conv output a
  dot product over the history) / ``engine="eager"`` (each input pushed into all future
  outputs): the activation-caching baselines.
* ``recompute``: the full forward over the whole prefix per new token (eager; Inductor with
  ``dynamic=True`` when ``--inductor``).

Baselines cost O(t) (or more) per token; their per-token time is measured at ``--samples``
context lengths t (prefill t tokens, then time steps) and integrated over 0 .. L with the
trapezoid rule (marked ``*``). Writes ``benchmarks/results/generate.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import loglog_slope, median_time, write_results  # noqa: E402

import lcsm_compile  # noqa: E402
from lcsm_compile import OnlineConv  # noqa: E402
from lcsm_compile.models import HyenaLM  # noqa: E402


def per_step_times(sess, ids, P, n_steps, desc):
    """Prefill P tokens, then time each of ``n_steps`` steps (seconds per step)."""
    sess.reset()
    sess.prefill(ids[:, :P])
    ts = []
    for t in tqdm(range(P, P + n_steps), desc=desc, unit="tok", leave=False):
        x = ids[:, t:t + 1]
        t0 = time.perf_counter()
        sess.step(x)
        ts.append(time.perf_counter() - t0)
    return ts


def sampled_average(cost_at, L, points):
    """Average per-token cost over positions 0..L from costs at sampled positions (trapezoid)."""
    pts = sorted({max(1, min(L - 1, int(p))) for p in points} | {1, L - 1})
    cs = [cost_at(t) for t in pts]
    total = 0.0
    for (a, ca), (b, cb) in zip(zip(pts, cs), zip(pts[1:], cs[1:])):
        total += (ca + cb) / 2 * (b - a)
    return total / (pts[-1] - pts[0])


def _ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1e3:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--min-log2", type=int, default=11)
    ap.add_argument("--max-log2", type=int, default=15)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--samples", type=int, default=5, help="sampled context lengths per baseline and L")
    ap.add_argument("--steps-per-sample", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time compile_step=True")
    ap.add_argument("--inductor", action="store_true", help="also time recompute with Inductor")
    ap.add_argument("--recompute-max-log2", type=int, default=None,
                    help="time recompute only up to L = 2^N (it is O(L) per token and never the best "
                         "baseline; large batches make it take hours); larger L show '-'")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    ap.add_argument("--out", default="generate")
    args = ap.parse_args()
    if args.quick:
        args.min_log2, args.max_log2, args.layers, args.d_model, args.samples = 7, 9, 2, 32, 3
        args.out = args.out if args.out != "generate" else "generate_quick"
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    Lmax = 1 << args.max_log2
    Ls = [1 << e for e in range(args.min_log2, args.max_log2 + 1)]
    model = HyenaLM(vocab=256, d_model=args.d_model, n_layers=args.layers, max_len=Lmax).eval()
    ids = torch.randint(0, 256, (args.batch, Lmax))
    P = 16
    t0 = time.perf_counter()
    sess = lcsm_compile.session(model, ids[:, :P], max_len=Lmax)
    setup = time.perf_counter() - t0
    group = sess.program.plan.groups.groups[0]
    print(f"session setup (capture, analysis, folding, plan): {setup:.1f} s; group: {group.describe()}; "
          f"engine plan block={sess.program.engines[0].block} fft_from={sess.program.engines[0].fft_from}")

    # online: one run to Lmax, every step timed
    on = per_step_times(sess, ids, P, Lmax - P, "online")
    online_avg = {L: statistics.fmean(on[: L - P]) for L in Ls}
    print(f"online steps: max {max(on) * 1e3:.2f} ms at step {on.index(max(on))}, median {statistics.median(on) * 1e3:.3f} ms")
    res = {"online": online_avg}
    windows = {"2k-4k": statistics.median(on[2048 - P: 4096 - P]) if Lmax >= 4096 else None,
               "8k-16k": statistics.median(on[8192 - P: 16384 - P]) if Lmax >= 16384 else None}
    compiled = None
    if args.compile:
        t0 = time.perf_counter()
        csess = lcsm_compile.session(model, ids[:, :P], max_len=Lmax, compile_step=True)
        per_step_times(csess, ids, P, 50, "compile warm-up")
        ctime = time.perf_counter() - t0
        con = per_step_times(csess, ids, P, Lmax - P, "online+compile")
        res["online_compiled"] = {L: statistics.fmean(con[: L - P]) for L in Ls}
        compiled = {"setup_s": ctime}
        del csess

    del sess  # the baselines' prefills at large batch need the memory (16 x 2^15 ran out of 24 GB)
    gc.collect()

    # floor: position-wise work alone
    fsess = lcsm_compile.session(model, ids[:, :P], max_len=Lmax, engine="none")
    fl = per_step_times(fsess, ids, P, min(2000, Lmax - P), "floor")
    floor = statistics.median(fl)
    del fsess
    res["floor"] = {L: floor for L in Ls}

    # mixer only: the engine on the model's group
    eng = OnlineConv(torch.randn(group.channels, Lmax) / Lmax ** 0.5, max_len=Lmax, batch_size=group.batch)
    u = torch.randn(Lmax, group.batch, group.channels)
    mts = []
    for t in range(Lmax):
        t0 = time.perf_counter()
        eng.step(u[t])
        mts.append(time.perf_counter() - t0)
    res["mixer_online"] = {L: statistics.fmean(mts[:L]) for L in Ls}
    del eng

    # caching baselines on the same step program
    for kind in ("lazy", "eager"):
        bsess = lcsm_compile.session(model, ids[:, :P], max_len=Lmax, engine=kind)
        cache = {}

        def cost(t, bsess=bsess, cache=cache):
            if t not in cache:
                start = min(t, Lmax - args.steps_per_sample)
                cache[t] = statistics.median(per_step_times(bsess, ids, start, args.steps_per_sample, f"{kind}@{t}"))
            return cache[t]

        res[kind] = {L: sampled_average(cost, L, [L * i / (args.samples - 1) for i in range(args.samples)])
                     for L in tqdm(Ls, desc=kind, leave=False)}
        del bsess, cost
        gc.collect()

    # recompute: full forward over the prefix per token
    def recompute(fn, name):
        cache = {}

        def cost(t):
            if t not in cache:
                with torch.no_grad():
                    cache[t] = median_time(lambda: fn(ids[:, : t + 1]), reps=2, warmup=1)
            return cache[t]

        limit = 1 << args.recompute_max_log2 if args.recompute_max_log2 else Lmax
        return {L: (sampled_average(cost, L, [L * i / (args.samples - 1) for i in range(args.samples)])
                    if L <= limit else float("nan"))
                for L in tqdm(Ls, desc=name, leave=False)}

    res["recompute_eager"] = recompute(model, "recompute eager")
    if args.inductor:
        cm = torch.compile(model, dynamic=True)
        res["recompute_inductor"] = recompute(cm, "recompute inductor")

    baselines = [k for k in ("lazy", "eager", "recompute_eager", "recompute_inductor") if k in res]
    # ours: the faster of the two step programs (eager FX step, Inductor-compiled step)
    ours = "online"
    if "online_compiled" in res and res["online_compiled"][Ls[-1]] < res["online"][Ls[-1]]:
        ours = "online_compiled"
    hdr = ["L", "online", *(["online+compile"] if compiled else []), "floor", "ours/floor", "mixer only",
           "lazy*", "eager*", "recompute eager*", *(["recompute inductor*"] if args.inductor else []),
           "speedup vs best"]
    lines = ["| " + " | ".join(hdr) + " |", "|" + "---:|" * len(hdr)]
    rows = []
    for L in Ls:
        best = min(res[b][L] for b in baselines if res[b][L] == res[b][L])  # NaN: not run
        row = {"L": L, **{k: v[L] for k, v in res.items()}, "speedup_vs_best": best / res[ours][L],
               "ours_over_floor": res[ours][L] / floor}
        rows.append(row)
        cells = [str(L), f"{res['online'][L] * 1e3:.3f}"]
        if compiled:
            cells.append(f"{res['online_compiled'][L] * 1e3:.3f}")
        cells += [f"{floor * 1e3:.3f}", f"{row['ours_over_floor']:.2f}x", f"{res['mixer_online'][L] * 1e3:.3f}",
                  f"{res['lazy'][L] * 1e3:.2f}", f"{res['eager'][L] * 1e3:.2f}", _ms(res['recompute_eager'][L])]
        if args.inductor:
            cells.append(_ms(res['recompute_inductor'][L]))
        cells.append(f"{row['speedup_vs_best']:.1f}x")
        lines.append("| " + " | ".join(cells) + " |")
    table = (f"Per-step time in ms (one step = one token for each of the {args.batch} sequences), averaged over "
             f"generating positions 0..L (batch {args.batch}, fp32, "
             f"HyenaLM {args.layers} layers, d={args.d_model}).\n\n" + "\n".join(lines))
    table += ("\n\n`*` sampled: per-token time measured at evenly spaced context lengths and integrated "
              "(trapezoid). `ours` = " + ours + ".")
    if args.recompute_max_log2:
        table += f" `-`: recompute not run above L = 2^{args.recompute_max_log2} (--recompute-max-log2)."
    if windows["2k-4k"] and windows["8k-16k"]:
        g = windows["8k-16k"] / windows["2k-4k"]
        table += (f"\n\nPer-step growth (median online step, context 8k-16k vs 2k-4k): {g:.2f}x "
                  f"({windows['2k-4k'] * 1e3:.3f} ms -> {windows['8k-16k'] * 1e3:.3f} ms).")
    else:
        g = None
    slope = loglog_slope(Ls, [res["online"][L] * L for L in Ls]) if len(Ls) > 1 else None
    table += f"\n\nLog-log slope of total online generation time vs L: {slope:.2f}." if slope else ""
    table += (f"\n\nLongest single online step: {max(on) * 1e3:.1f} ms at position {P + on.index(max(on))} "
              f"(the largest tile of the run); median step {statistics.median(on) * 1e3:.3f} ms.")
    table += f"\n\nSession setup (capture, analysis, filter folding, plan): {setup:.1f} s."
    if compiled:
        table += f" With compile_step=True: {compiled['setup_s']:.1f} s (Inductor)."
    print(table)
    jp, mp = write_results(args.out, {"rows": rows, "windows": windows, "growth": g, "slope": slope,
                                      "setup_s": setup, "args": vars(args)}, table)
    print(f"\nwrote {jp} and {mp}")


if __name__ == "__main__":
    main()
