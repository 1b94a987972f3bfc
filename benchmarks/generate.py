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

Step latency: the longest single online step, the median step and their ratio (also the 99.9th
percentile, less sensitive to a preempted step on a shared machine), for the online session and
the mixer. ``--delay-from N`` sets the engine's ``delay_from`` (default: the engine's); with
``--compare-undelayed`` the online session and the mixer are also timed with the schedule
without delayed tiles (``delay_from = 2^max_log2``: one step in 2^m runs a whole tile of size
2^m) in the same run, the before/after of bounded step latency. ``--online-only`` skips the
lazy / eager / recompute baselines. ``--latency-reps N`` times the online runs N times and also
reports the per-position minimum over the runs: the schedule's work at a position is the same in
every run, a preempted step (a shared machine) is not.
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


def _ms2(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1e3:.2f}"


def latency(ts, first_pos: int = 0) -> dict:
    """Longest step, its position, median, 99.9th percentile and longest / median of step times."""
    srt = sorted(ts)
    med = statistics.median(ts)
    mx = max(ts)
    return {"max": mx, "max_pos": first_pos + ts.index(mx), "median": med, "mean": statistics.fmean(ts),
            "p999": srt[min(len(srt) - 1, int(0.999 * len(srt)))], "max_over_median": mx / med,
            "top5": [round(x, 6) for x in srt[-5:]]}


def _lat_line(name: str, lat: dict, delay_from) -> str:
    return (f"{name} (delay_from={delay_from}): longest step {lat['max'] * 1e3:.2f} ms at position {lat['max_pos']}, "
            f"median {lat['median'] * 1e3:.3f} ms, **longest / median = {lat['max_over_median']:.1f}x** "
            f"(99.9th percentile {lat['p999'] * 1e3:.2f} ms = {lat['p999'] / lat['median']:.1f}x median; "
            f"mean {lat['mean'] * 1e3:.3f} ms; five longest: {', '.join(f'{x * 1e3:.1f}' for x in lat['top5'])} ms).")


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
    ap.add_argument("--delay-from", type=int, default=None,
                    help="the online engine's delay_from (default: the engine's default)")
    ap.add_argument("--compare-undelayed", action="store_true",
                    help="also time online and mixer with delay_from = 2^max_log2 (no delayed tiles)")
    ap.add_argument("--online-only", action="store_true", help="skip the lazy / eager / recompute baselines")
    ap.add_argument("--latency-reps", type=int, default=1,
                    help="time the online run(s) N times and also report the latency of the per-position "
                         "minimum over the runs (the schedule's work is the same every run; preemption "
                         "and other one-off noise is not)")
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
    eopts = {"delay_from": args.delay_from} if args.delay_from else None
    sess = lcsm_compile.session(model, ids[:, :P], max_len=Lmax, engine_options=eopts)
    setup = time.perf_counter() - t0
    group = sess.program.plan.groups.groups[0]
    eng0 = sess.program.engines[0]
    delay_from = eng0.delay_from
    print(f"session setup (capture, analysis, folding, plan): {setup:.1f} s; group: {group.describe()}; "
          f"engine plan block={eng0.block} fft_from={eng0.fft_from} delay_from={delay_from}")

    # online: one run to Lmax, every step timed
    on = per_step_times(sess, ids, P, Lmax - P, "online")
    online_avg = {L: statistics.fmean(on[: L - P]) for L in Ls}
    lat = {"online": latency(on, P)}
    print(_lat_line("online", lat["online"], delay_from))
    if args.latency_reps > 1:
        runs = [on] + [per_step_times(sess, ids, P, Lmax - P, f"online, run {r + 1}") for r in range(1, args.latency_reps)]
        lat["online_min"] = latency([min(x) for x in zip(*runs)], P)
        print(_lat_line(f"online, per-position minimum of {args.latency_reps} runs", lat["online_min"], delay_from))
    res = {"online": online_avg}
    windows = {"2k-4k": statistics.median(on[2048 - P: 4096 - P]) if Lmax >= 4096 else None,
               "8k-16k": statistics.median(on[8192 - P: 16384 - P]) if Lmax >= 16384 else None}
    compiled = None
    if args.compile:
        t0 = time.perf_counter()
        csess = lcsm_compile.session(model, ids[:, :P], max_len=Lmax, compile_step=True, engine_options=eopts)
        per_step_times(csess, ids, P, 50, "compile warm-up")
        ctime = time.perf_counter() - t0
        con = per_step_times(csess, ids, P, Lmax - P, "online+compile")
        res["online_compiled"] = {L: statistics.fmean(con[: L - P]) for L in Ls}
        compiled = {"setup_s": ctime}
        del csess

    del sess  # the baselines' prefills at large batch need the memory (16 x 2^15 ran out of 24 GB)
    gc.collect()

    if args.compare_undelayed:  # the same session with the schedule without delayed tiles
        usess = lcsm_compile.session(model, ids[:, :P], max_len=Lmax, engine_options={"delay_from": Lmax})
        uon = per_step_times(usess, ids, P, Lmax - P, "online, no delay")
        res["online_undelayed"] = {L: statistics.fmean(uon[: L - P]) for L in Ls}
        lat["online_undelayed"] = latency(uon, P)
        print(_lat_line("online, no delayed tiles", lat["online_undelayed"], Lmax))
        if args.latency_reps > 1:
            runs = [uon] + [per_step_times(usess, ids, P, Lmax - P, f"online, no delay, run {r + 1}")
                            for r in range(1, args.latency_reps)]
            lat["online_undelayed_min"] = latency([min(x) for x in zip(*runs)], P)
            print(_lat_line(f"online, no delayed tiles, per-position minimum of {args.latency_reps} runs",
                            lat["online_undelayed_min"], Lmax))
        del usess
        gc.collect()

    # floor: position-wise work alone
    fsess = lcsm_compile.session(model, ids[:, :P], max_len=Lmax, engine="none")
    fl = per_step_times(fsess, ids, P, min(2000, Lmax - P), "floor")
    floor = statistics.median(fl)
    lat["floor"] = latency(fl, P)
    del fsess
    res["floor"] = {L: floor for L in Ls}

    # mixer only: the engine on the model's group
    kmix = torch.randn(group.channels, Lmax) / Lmax ** 0.5
    u = torch.randn(Lmax, group.batch, group.channels)
    mixer_flops = {}
    for key, dfrom in (("mixer_online", args.delay_from),) + ((("mixer_undelayed", Lmax),) if args.compare_undelayed else ()):
        eng = OnlineConv(kmix, max_len=Lmax, batch_size=group.batch, delay_from=dfrom)
        mts = []
        for t in range(Lmax):
            t0 = time.perf_counter()
            eng.step(u[t])
            mts.append(time.perf_counter() - t0)
        res[key] = {L: statistics.fmean(mts[:L]) for L in Ls}
        lat[key] = latency(mts)
        lat[key]["delay_from"] = eng.delay_from
        mixer_flops[key] = eng.flops_per_step()
        print(_lat_line(key, lat[key], eng.delay_from))
        del eng

    # caching baselines on the same step program
    for kind in (() if args.online_only else ("lazy", "eager")):
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

    if not args.online_only:
        res["recompute_eager"] = recompute(model, "recompute eager")
    if args.inductor and not args.online_only:
        cm = torch.compile(model, dynamic=True)
        res["recompute_inductor"] = recompute(cm, "recompute inductor")

    baselines = [k for k in ("lazy", "eager", "recompute_eager", "recompute_inductor") if k in res]
    for k in ("lazy", "eager", "recompute_eager"):  # --online-only: not run
        res.setdefault(k, {L: float("nan") for L in Ls})
    # ours: the faster of the two step programs (eager FX step, Inductor-compiled step)
    ours = "online"
    if "online_compiled" in res and res["online_compiled"][Ls[-1]] < res["online"][Ls[-1]]:
        ours = "online_compiled"
    undelayed = "online_undelayed" in res
    hdr = ["L", "online", *(["online, no delay"] if undelayed else []), *(["online+compile"] if compiled else []),
           "floor", "ours/floor", "mixer only", *(["mixer, no delay"] if undelayed else []),
           "lazy*", "eager*", "recompute eager*", *(["recompute inductor*"] if "recompute_inductor" in res else []),
           "speedup vs best"]
    lines = ["| " + " | ".join(hdr) + " |", "|" + "---:|" * len(hdr)]
    rows = []
    for L in Ls:
        best = min([res[b][L] for b in baselines if res[b][L] == res[b][L]] or [float("nan")])  # NaN: not run
        row = {"L": L, **{k: v[L] for k, v in res.items()}, "speedup_vs_best": best / res[ours][L],
               "ours_over_floor": res[ours][L] / floor}
        rows.append(row)
        cells = [str(L), f"{res['online'][L] * 1e3:.3f}"]
        if undelayed:
            cells.append(f"{res['online_undelayed'][L] * 1e3:.3f}")
        if compiled:
            cells.append(f"{res['online_compiled'][L] * 1e3:.3f}")
        cells += [f"{floor * 1e3:.3f}", f"{row['ours_over_floor']:.2f}x", f"{res['mixer_online'][L] * 1e3:.3f}"]
        if undelayed:
            cells.append(f"{res['mixer_undelayed'][L] * 1e3:.3f}")
        cells += [_ms2(res['lazy'][L]), _ms2(res['eager'][L]), _ms(res['recompute_eager'][L])]
        if "recompute_inductor" in res:
            cells.append(_ms(res['recompute_inductor'][L]))
        cells.append("-" if row["speedup_vs_best"] != row["speedup_vs_best"] else f"{row['speedup_vs_best']:.1f}x")
        lines.append("| " + " | ".join(cells) + " |")
    table = (f"Per-step time in ms (one step = one token for each of the {args.batch} sequences), averaged over "
             f"generating positions 0..L (batch {args.batch}, fp32, "
             f"HyenaLM {args.layers} layers, d={args.d_model}).\n\n" + "\n".join(lines))
    table += ("\n\n`*` sampled: per-token time measured at evenly spaced context lengths and integrated "
              "(trapezoid). `ours` = " + ours + ".")
    if args.recompute_max_log2:
        table += f" `-`: recompute not run above L = 2^{args.recompute_max_log2} (--recompute-max-log2)."
    if args.online_only:
        table += " `-`: baselines not run (--online-only)."
    if windows["2k-4k"] and windows["8k-16k"]:
        g = windows["8k-16k"] / windows["2k-4k"]
        table += (f"\n\nPer-step growth (median online step, context 8k-16k vs 2k-4k): {g:.2f}x "
                  f"({windows['2k-4k'] * 1e3:.3f} ms -> {windows['8k-16k'] * 1e3:.3f} ms).")
    else:
        g = None
    slope = loglog_slope(Ls, [res["online"][L] * L for L in Ls]) if len(Ls) > 1 else None
    table += f"\n\nLog-log slope of total online generation time vs L: {slope:.2f}." if slope else ""
    table += "\n\nStep latency (every online step of one run to L = 2^%d timed; mixer: the engine alone):\n" % args.max_log2
    table += "\n* " + _lat_line("online", lat["online"], delay_from)
    if "online_min" in lat:
        table += "\n* " + _lat_line(f"online, per-position minimum of {args.latency_reps} runs", lat["online_min"],
                                     delay_from)
    if undelayed:
        table += "\n* " + _lat_line("online, no delayed tiles", lat["online_undelayed"], Lmax)
        if "online_undelayed_min" in lat:
            table += "\n* " + _lat_line(f"online, no delayed tiles, per-position minimum of {args.latency_reps} runs",
                                         lat["online_undelayed_min"], Lmax)
        Lt = Ls[-1]
        table += (f"\n* average online step at L = {Lt}: {res['online'][Lt] * 1e3:.3f} ms delayed vs "
                  f"{res['online_undelayed'][Lt] * 1e3:.3f} ms without delays "
                  f"({res['online'][Lt] / res['online_undelayed'][Lt]:.2f}x)")
    table += ("\n* " + _lat_line("floor (the step program with free long convs; its first %d steps)" % len(fl),
                                  lat["floor"], "-") + " This is the step program's own jitter, which no schedule removes.")
    for key in ("mixer_online", "mixer_undelayed"):
        if key in lat:
            table += "\n* " + _lat_line("mixer" + (", no delayed tiles" if key == "mixer_undelayed" else ""),
                                         lat[key], lat[key]["delay_from"])
    if undelayed:
        fl = mixer_flops
        table += (f"\n* mixer FLOPs per step (schedule.tiling_flops): {fl['mixer_online'] / 1e6:.2f} M delayed vs "
                  f"{fl['mixer_undelayed'] / 1e6:.2f} M without delays ({fl['mixer_online'] / fl['mixer_undelayed']:.2f}x)")
    table += f"\n\nSession setup (capture, analysis, filter folding, plan): {setup:.1f} s."
    if compiled:
        table += f" With compile_step=True: {compiled['setup_s']:.1f} s (Inductor)."
    print(table)
    jp, mp = write_results(args.out, {"rows": rows, "windows": windows, "growth": g, "slope": slope,
                                      "latency": lat, "delay_from": delay_from, "mixer_flops_per_step": mixer_flops,
                                      "setup_s": setup, "args": vars(args)}, table)
    print(f"\nwrote {jp} and {mp}")


if __name__ == "__main__":
    main()
