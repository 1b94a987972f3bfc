"""Per-token benchmark for issue 10's targets: one step of a streamed LM against its weight floor.

Models (fp32, vocab 256): ``lcsm_compile.models.HyenaLM`` and ``StripedHyenaLM``, ``--layers`` x
``--d-model`` (default 4 x 256). For each model and each batch size in ``--batch``, at context
``--context`` (default 2^15): prefill P = context - steps tokens (after ``--warmup`` untimed
steps), then time ``--steps`` consecutive steps ending at the context, one thread
(``torch.set_num_threads``; the sessions get ``threads=`` the same). A step is one new token
for each of the B sequences; times are per step.

Rows:

* ``lcsm step (graph)``: ``lcsm_compile.session(..., compile_step=False)``;
* ``lcsm step (compiled)``: ``compile_step=True`` (Inductor on the step program; on the CPU the
  per-step ops run as the C++ step ops of ``lcsm_compile.codegen.cpu_ops``); its setup
  (session + first step, which compiles) is reported separately and never in the step times;
* ``lcsm step (compiled, Python ops)`` (``--python-ops``): the same with the ops' Python bodies;
* ``weight floor``: the model's matmul weights (every 2-D parameter used as a matmul weight on
  the token stream, found by running the model once: nn.Linear layers, a tied head; not the
  embedding table, a row lookup, nor weights that only compute the long filters) read once as
  GEMVs of the same shapes at that batch, ``torch.mm(x_b, W.t())`` for each, timed together
  as one function (median of ``--floor-reps``): the weight-streaming floor;
* ``lazy`` / ``eager`` (caching baselines): the same session with ``engine="lazy"`` /
  ``"eager"`` (each long-conv output computed from cached activations, O(t) per step) and
  ``compile_step`` of the better lcsm row, so only the long convolution differs;
  ``--baseline-steps`` steps are timed from position context / 2: a lazy step costs O(t) and
  an eager one O(max_len - t), so at the midpoint each costs its average over a generation to
  the context (timed at the end, eager would look nearly free and lazy twice its average).

Latency: longest single step / median step over the timed lcsm steps and the 99.9th
percentile; ``--latency-steps N`` also times N consecutive steps from a prefill of P
(``--latency-prefill``; the sessions' max_len grows to fit) for both lcsm rows, to catch the
steps that run slices of delayed tiles.

``--spin``: after each lcsm row's quiet run, the same row is timed again while a spinner process
(``while True: pass``) runs pinned to another core than the benchmark's; reports spinning vs
quiet. The benchmark pins itself to one core first if it is not pinned (run it under
``taskset -c N`` to choose); with one core available the spin rows are skipped.

Targets table (ratios from the ``--stat`` of the steps, default the median; the better lcsm row
is "lcsm"): lcsm / floor (target <= 2), best baseline / lcsm (>= 10x at batch 1, >= 30x at
batch 8), longest / median (<= 4), spinning / quiet (<= 1.3).

Run: ``taskset -c 1 python benchmarks/step.py [--spin]`` (full) or ``--quick`` (tiny sizes, a
smoke test, about a minute). Writes ``benchmarks/results/step.json`` and ``step.md``
(``--quick``: ``step_quick``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import median_time, write_results  # noqa: E402

import lcsm_compile  # noqa: E402
from lcsm_compile.models import HyenaLM, StripedHyenaLM  # noqa: E402
from lcsm_compile.codegen import cpu_ops  # noqa: E402

MODELS = {"hyena": "HyenaLM", "striped": "StripedHyenaLM"}
VOCAB = 256
NAN = float("nan")


def build_model(name: str, args, max_len: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "hyena":
        m = HyenaLM(vocab=VOCAB, d_model=args.d_model, n_layers=args.layers, max_len=max_len)
    else:
        m = StripedHyenaLM(vocab=VOCAB, d_model=args.d_model, n_layers=args.layers)
    return m.eval()


# ---------------------------------------------------------------------------- weight floor

class _MatmulWeights(TorchFunctionMode):
    """Records every 2-D parameter used as a matmul weight on a [B, L, ...] activation."""

    FUNCS = {F.linear, torch.matmul, torch.mm, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.mm}

    def __init__(self, params: dict, lead: tuple):
        super().__init__()
        self.params, self.lead, self.used = params, lead, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FUNCS and len(args) >= 2:
            x, w = args[0], args[1]
            if func is F.linear:
                cand = [(w, x, False)]
            else:  # x @ W (W: [in, out]) or W @ x
                cand = [(w, x, True), (x, w, False)]
            for weight, act, transposed in cand:
                if (isinstance(weight, torch.Tensor) and weight.dim() == 2 and id(weight) in self.params
                        and isinstance(act, torch.Tensor) and tuple(act.shape[:len(self.lead)]) == self.lead):
                    W = weight.detach()
                    self.used.append((self.params[id(weight)], (W.t() if transposed else W).contiguous()))
                    break
        return func(*args, **kwargs)


def matmul_weights(model: torch.nn.Module) -> list:
    """[(name, W [out, in])] for each use of a 2-D parameter as a matmul weight in one forward
    over the token stream (a tied head counts; the embedding lookup and the filter MLPs,
    which see no batch/time axes, do not)."""
    params = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    lead = (3, 5)  # distinctive batch and length
    rec = _MatmulWeights(params, lead)
    with torch.no_grad(), rec:
        model(torch.randint(0, VOCAB, lead))
    return rec.used


def weight_floor(weights: list, batch: int, reps: int) -> float:
    """Median time of reading every weight once as a GEMV (GEMM at batch > 1) of the same shape."""
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(batch, W.shape[1], generator=g), W) for _, W in weights]

    def fn():
        for x, W in pairs:
            torch.mm(x, W.t())

    return median_time(fn, reps=reps, warmup=max(3, reps // 20))


# ---------------------------------------------------------------------------- spinner

def _other_cpu() -> tuple:
    """(the benchmark's CPUs, a CPU for the spinner or None, a note)."""
    try:
        mine = os.sched_getaffinity(0)
    except AttributeError:
        return None, None, "os.sched_getaffinity not available: spin rows skipped"
    note = ""
    if len(mine) > 1:  # not pinned: pin to one core so the spinner can take another
        core = max(mine)
        os.sched_setaffinity(0, {core})
        note = f"benchmark was not pinned (CPUs {sorted(mine)}): pinned it to CPU {core}. "
        others = sorted(mine - {core})
        mine = {core}
    else:
        others = sorted(set(range(os.cpu_count() or 1)) - mine)
    usable = []
    for cpu in others:  # CPUs outside this process's cpuset refuse the affinity
        try:
            os.sched_setaffinity(0, {cpu})
            usable.append(cpu)
        except OSError:
            pass
        finally:
            os.sched_setaffinity(0, mine)
    if not usable:
        return mine, None, note + f"only one core available (CPUs {sorted(mine)}): spin rows skipped"
    return mine, usable[0], note + f"benchmark on CPU {sorted(mine)}, spinner on CPU {usable[0]}"


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except Exception:
        return NAN


@contextmanager
def spinner(cpu: int, log: list):
    """A ``while True: pass`` process pinned to ``cpu`` for the duration; always killed."""
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
    try:
        os.sched_setaffinity(p.pid, {cpu})
        time.sleep(0.2)  # running and spinning before the first timed step
        t0, c0 = time.perf_counter(), _cpu_seconds(p.pid)
        yield p
        wall, cpu_s = time.perf_counter() - t0, _cpu_seconds(p.pid) - c0
        log.append({"wall_s": wall, "cpu_s": cpu_s, "busy": cpu_s / wall if wall > 0 else NAN,
                    "cpu": sorted(os.sched_getaffinity(p.pid))})
    finally:
        p.kill()
        p.wait()


# ---------------------------------------------------------------------------- timing

def stats(ts: list, first_pos: int) -> dict:
    srt = sorted(ts)
    med = statistics.median(ts)
    mx = max(ts)
    p999 = srt[min(len(srt) - 1, int(0.999 * len(srt)))]
    return {"n": len(ts), "median": med, "mean": statistics.fmean(ts), "max": mx, "max_pos": first_pos + ts.index(mx),
            "p999": p999, "max_over_median": mx / med, "p999_over_median": p999 / med,
            "top5": [round(x, 6) for x in srt[-5:]]}


def time_steps(sess, ids, start: int, n: int, warmup: int, desc: str) -> dict:
    """Reset, prefill ``start - warmup`` tokens, ``warmup`` untimed steps (the first one's time
    kept: it compiles when compile_step=True), then time each of ``n`` steps from ``start``."""
    warmup = max(0, min(warmup, start - 1))
    sess.reset()
    t0 = time.perf_counter()
    sess.prefill(ids[:, :start - warmup])
    prefill_s = time.perf_counter() - t0
    first = NAN
    for i, t in enumerate(range(start - warmup, start)):
        t0 = time.perf_counter()
        sess.step(ids[:, t:t + 1])
        if i == 0:
            first = time.perf_counter() - t0
    ts = []
    for t in tqdm(range(start, start + n), desc=desc, unit="step", leave=False):
        x = ids[:, t:t + 1]
        t0 = time.perf_counter()
        sess.step(x)
        ts.append(time.perf_counter() - t0)
    out = stats(ts, start)
    out.update(first_pos=start, prefill_s=prefill_s, first_warmup_step_s=first, times=[round(x, 7) for x in ts])
    return out


def make_session(model, ids, max_len: int, threads: int, **opts):
    t0 = time.perf_counter()
    sess = lcsm_compile.session(model, ids[:, :16], max_len=max_len, threads=threads, **opts)
    return sess, time.perf_counter() - t0


# ---------------------------------------------------------------------------- formatting

def _ms(s) -> str:
    return "-" if s is None or s != s else (f"{s * 1e3:.3f}" if s < 0.1 else f"{s * 1e3:.1f}")


def _x(r) -> str:
    return "-" if r is None or r != r else f"{r:.2f}x"


def _s(s) -> str:
    return "-" if s is None or s != s else f"{s:.1f}"


def _speedup_target(batch: int):
    return 10.0 if batch == 1 else (30.0 if batch >= 8 else None)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="hyena,striped", help="comma list of: " + ", ".join(MODELS))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--context", type=int, default=1 << 15, help="the context the timed steps end at")
    ap.add_argument("--steps", type=int, default=256, help="timed lcsm steps (positions context-steps .. context-1)")
    ap.add_argument("--baseline-steps", type=int, default=16, help="timed lazy/eager steps, from position context / 2")
    ap.add_argument("--warmup", type=int, default=8, help="untimed steps before the timed ones")
    ap.add_argument("--batch", default="1,8", help="comma list of batch sizes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads and the sessions' threads=")
    ap.add_argument("--floor-reps", type=int, default=500, help="repetitions of the weight floor (median)")
    ap.add_argument("--stat", choices=("median", "mean"), default="median",
                    help="statistic of the step times the targets table compares (default median: robust "
                         "to a preempted step on a shared machine; the latency columns show the spikes)")
    ap.add_argument("--latency-steps", type=int, default=0,
                    help="also time N consecutive steps from a prefill of --latency-prefill for both lcsm rows "
                         "(the delayed-tile chunks); 0 = skip")
    ap.add_argument("--latency-prefill", type=int, default=None, help="prefill of the latency run (default: P)")
    ap.add_argument("--spin", action="store_true",
                    help="time the lcsm rows again with a spinner process on another core")
    ap.add_argument("--no-compiled", action="store_true", help="skip the compile_step=True rows")
    ap.add_argument("--no-baselines", action="store_true", help="skip the lazy/eager rows")
    ap.add_argument("--python-ops", action="store_true",
                    help="also time the compiled step with the per-step ops' Python bodies instead of the C++ "
                         "step ops (codegen/cpu_ops.py), in the same run")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    ap.add_argument("--out", default="step")
    args = ap.parse_args(argv)
    if args.quick:
        args.layers, args.d_model, args.context, args.steps, args.baseline_steps = 2, 32, 512, 32, 4
        args.warmup, args.floor_reps = 4, 50
        if args.batch == ap.get_default("batch"):
            args.batch = "1"  # each compiled session costs an Inductor compile: one batch keeps it ~1 min
        args.latency_steps = min(args.latency_steps, 128)
        args.out = args.out if args.out != "step" else "step_quick"
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            ap.error(f"unknown model {m!r} (have {', '.join(MODELS)})")
    batches = [int(b) for b in args.batch.split(",")]
    if args.steps < 1 or args.steps >= args.context:
        ap.error("--steps must be in [1, context)")
    torch.set_num_threads(args.threads)
    P = args.context - args.steps
    lat_prefill = P if args.latency_prefill is None else args.latency_prefill
    max_len = max(args.context, lat_prefill + args.latency_steps if args.latency_steps else 0)
    spin_cpu, spin_note, spin_log = None, "", []
    if args.spin:
        _, spin_cpu, spin_note = _other_cpu()
        print("spin: " + spin_note)
    stat = args.stat

    rows, summary, weights_info, latency_runs = [], [], {}, []

    def add_row(model, B, name, st, setup=None, spin=None, **extra):
        row = {"model": MODELS[model], "batch": B, "row": name, "setup_s": setup, **(st or {}), **extra}
        if spin is not None:
            row["spin"] = {k: v for k, v in spin.items() if k != "times"}
            row["spin_times"] = spin["times"]
            row["spin_over_quiet"] = spin[stat] / st[stat]
        rows.append(row)
        return row

    for mname in models:
        model = build_model(mname, args, max_len)
        weights = matmul_weights(model)
        nbytes = sum(W.numel() * W.element_size() for _, W in weights)
        weights_info[MODELS[mname]] = {"count": len(weights), "bytes": nbytes,
                                       "weights": [(n, list(W.shape)) for n, W in weights]}
        print(f"{MODELS[mname]} {args.layers} x {args.d_model}: {len(weights)} matmul weights, "
              f"{nbytes / 1e6:.2f} MB")
        for B in batches:
            g = torch.Generator().manual_seed(B)
            ids = torch.randint(0, VOCAB, (B, max_len), generator=g)
            tag = f"{MODELS[mname]} B={B}"
            # weight floor
            floor = weight_floor(weights, B, args.floor_reps)
            add_row(mname, B, "weight floor", {"n": args.floor_reps, "median": floor, "mean": NAN},
                    gbps=nbytes / floor / 1e9)
            print(f"{tag}: weight floor {floor * 1e3:.3f} ms ({nbytes / floor / 1e9:.1f} GB/s)")
            # lcsm rows, one session at a time (at 2^15 x batch 8 the online state is several GB)
            lcsm = {}
            variants = [("lcsm step (graph)", False, True)] + ([] if args.no_compiled else [
                ("lcsm step (compiled)", True, True)] + ([("lcsm step (compiled, Python ops)", True, False)]
                                                         if args.python_ops else []))
            for name, cs, cpp in variants:
                # cpp=False: the per-step ops through their Python bodies (codegen/cpu_ops.py)
                with contextlib.nullcontext() if cpp else cpu_ops.python_bodies():
                    sess, setup = make_session(model, ids, max_len, args.threads, compile_step=cs)
                    st = time_steps(sess, ids, P, args.steps, args.warmup, f"{tag} {name}")
                    setup_total = setup + st["first_warmup_step_s"]
                    spin = None
                    if spin_cpu is not None:
                        with spinner(spin_cpu, spin_log):
                            spin = time_steps(sess, ids, P, args.steps, args.warmup, f"{tag} {name}, spinning")
                row = add_row(mname, B, name, st, setup=setup_total, spin=spin, compile_step=cs,
                              session_s=setup)
                row["step_ops"] = cpu_ops.status() if cs and cpp else ("Python step ops" if cs else "graph")
                lcsm[name] = (row, cs)
                print(f"{tag}: {name}: median {st['median'] * 1e3:.3f} ms, mean {st['mean'] * 1e3:.3f} ms, "
                      f"longest/median {st['max_over_median']:.1f}x, setup {setup_total:.1f} s"
                      + (f", spinning median {spin['median'] * 1e3:.3f} ms ({row['spin_over_quiet']:.2f}x)"
                         if spin else ""))
                if args.latency_steps:
                    with contextlib.nullcontext() if cpp else cpu_ops.python_bodies():
                        lt = time_steps(sess, ids, lat_prefill, args.latency_steps, args.warmup,
                                        f"{tag} {name}, latency run")
                    lt.pop("times")
                    latency_runs.append({"model": MODELS[mname], "batch": B, "row": name, **lt})
                    print(f"{tag}: {name}: latency run of {args.latency_steps} steps from {lat_prefill}: longest "
                          f"{lt['max'] * 1e3:.2f} ms at {lt['max_pos']}, median {lt['median'] * 1e3:.3f} ms, "
                          f"longest/median {lt['max_over_median']:.1f}x, p99.9/median {lt['p999_over_median']:.1f}x")
                del sess
                gc.collect()
            best_name = min(lcsm, key=lambda k: lcsm[k][0][stat])
            best, best_cs = lcsm[best_name]
            # caching baselines inside the same step program (compile_step of the better lcsm row)
            base = {}
            for kind in (() if args.no_baselines else ("lazy", "eager")):
                sess, setup = make_session(model, ids, max_len, args.threads, engine=kind, compile_step=best_cs)
                # at the midpoint of a generation to the context: for a step costing O(t) (lazy)
                # or O(max_len - t) (eager), the cost there is its average over the generation
                st = time_steps(sess, ids, args.context // 2, args.baseline_steps,
                                min(args.warmup, 2), f"{tag} {kind}")
                name = f"{kind} (compile_step={best_cs})"
                base[name] = add_row(mname, B, name, st, setup=setup + st["first_warmup_step_s"],
                                     compile_step=best_cs, engine=kind)
                print(f"{tag}: {name}: median {st['median'] * 1e3:.2f} ms")
                del sess
                gc.collect()
            bname = min(base, key=lambda k: base[k][stat]) if base else None
            sp_target = _speedup_target(B)
            s = {"model": MODELS[mname], "batch": B, "lcsm_row": best_name, "lcsm": best[stat], "floor": floor,
                 "lcsm_over_floor": best[stat] / floor, "best_baseline": bname,
                 "baseline": base[bname][stat] if bname else NAN,
                 "baseline_over_lcsm": base[bname][stat] / best[stat] if bname else NAN,
                 "speedup_target": sp_target, "max_over_median": best["max_over_median"],
                 "p999_over_median": best["p999_over_median"], "spin_over_quiet": best.get("spin_over_quiet", NAN)}
            missed = []
            if s["lcsm_over_floor"] > 2:
                missed.append("floor")
            if sp_target and s["baseline_over_lcsm"] == s["baseline_over_lcsm"] and s["baseline_over_lcsm"] < sp_target:
                missed.append("baseline")
            if s["max_over_median"] > 4:
                missed.append("latency")
            if s["spin_over_quiet"] == s["spin_over_quiet"] and s["spin_over_quiet"] > 1.3:
                missed.append("spin")
            s["missed"] = missed
            summary.append(s)
        del model
        gc.collect()

    # ------------------------------------------------------------------ tables
    hdr = ["model", "batch", "row", "steps", "median ms", "mean ms", "longest ms (pos)", "longest / median",
           "p99.9 / median", "setup s", *(["spinning median ms", "spinning / quiet"] if spin_cpu is not None else [])]
    lines = ["| " + " | ".join(hdr) + " |", "|---|---:|---|" + "---:|" * (len(hdr) - 3)]
    for r in rows:
        steps_row = r["row"].startswith(("lcsm", "lazy", "eager"))
        cells = [r["model"], str(r["batch"]), r["row"], str(r["n"]), _ms(r["median"]), _ms(r["mean"]),
                 f"{_ms(r['max'])} ({r['max_pos']})" if steps_row else "-",
                 _x(r["max_over_median"]) if steps_row else "-", _x(r["p999_over_median"]) if steps_row else "-",
                 _s(r["setup_s"])]
        if r["row"] == "weight floor":
            cells[4] += f" ({r['gbps']:.1f} GB/s)"
        if spin_cpu is not None:
            cells += [_ms(r["spin"]["median"]), _x(r["spin_over_quiet"])] if "spin" in r else ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    rows_table = "\n".join(lines)

    thdr = ["model", "batch", "lcsm (row)", "floor ms", "lcsm / floor (<= 2)", "best baseline ms",
            "baseline / lcsm (>= 10x at B=1, >= 30x at B=8)", "longest / median (<= 4)", "p99.9 / median",
            "spinning / quiet (<= 1.3)", "missed"]
    tl = ["| " + " | ".join(thdr) + " |", "|---|---:|---|" + "---:|" * (len(thdr) - 4) + "---|"]
    for s in summary:
        tl.append("| " + " | ".join([
            s["model"], str(s["batch"]), f"{_ms(s['lcsm'])} ({s['lcsm_row'].split('(')[1].rstrip(')')})",
            _ms(s["floor"]), _x(s["lcsm_over_floor"]),
            f"{_ms(s['baseline'])} ({s['best_baseline'].split(' ')[0]})" if s["best_baseline"] else "-",
            _x(s["baseline_over_lcsm"]) + ("" if s["speedup_target"] else " (no target)"),
            _x(s["max_over_median"]), _x(s["p999_over_median"]), _x(s["spin_over_quiet"]),
            ", ".join(s["missed"]) or "none"]) + " |")
    targets_table = "\n".join(tl)

    desc = (f"Per-step times (one step = one token for each of the B sequences), fp32, {args.threads} thread(s), "
            f"{args.layers} layers x d={args.d_model}, vocab {VOCAB}; lcsm rows: {args.steps} steps at positions "
            f"{P}..{args.context - 1} after a prefill and {args.warmup} untimed steps; lazy/eager: "
            f"{args.baseline_steps} steps from position {args.context // 2} (the midpoint: their per-token "
            f"average over a generation to {args.context}), with compile_step of the better lcsm row; "
            f"sessions' max_len {max_len}. Setup = session construction + first step (Inductor compile "
            f"for compile_step=True), never in the step times. Weight floor: "
            + "; ".join(f"{k}: {v['count']} matmul weights, {v['bytes'] / 1e6:.2f} MB" for k, v in weights_info.items())
            + f", read once as GEMVs at the batch (median of {args.floor_reps}).")
    table = desc + "\n\n" + rows_table
    table += (f"\n\nTargets (issue 10; ratios of the {stat} step; lcsm = the better lcsm row):\n\n" + targets_table)
    if args.spin:
        table += "\n\nSpin: " + spin_note
        if spin_log:
            busy = [x["busy"] for x in spin_log]
            table += (f"; the spinner was busy {min(busy) * 100:.0f}-{max(busy) * 100:.0f}% of the spinning runs' "
                      f"wall time (CPU time / wall time, {len(busy)} runs).")
    if latency_runs:
        table += f"\n\nLatency runs ({args.latency_steps} consecutive steps from a prefill of {lat_prefill}):\n"
        for lt in latency_runs:
            table += (f"\n* {lt['model']} B={lt['batch']} {lt['row']}: longest {lt['max'] * 1e3:.2f} ms at position "
                      f"{lt['max_pos']}, median {lt['median'] * 1e3:.3f} ms, mean {lt['mean'] * 1e3:.3f} ms, "
                      f"**longest / median = {lt['max_over_median']:.1f}x**, 99.9th percentile / median = "
                      f"{lt['p999_over_median']:.1f}x; five longest: "
                      + ", ".join(f"{x * 1e3:.1f}" for x in lt["top5"]) + " ms")
    print("\n" + table)
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "TORCHINDUCTOR_CACHE_DIR", "LCSM_CACHE_DIR")}
    payload = {"rows": rows, "summary": summary, "weights": weights_info, "latency_runs": latency_runs,
               "spin": {"note": spin_note, "cpu": spin_cpu, "runs": spin_log} if args.spin else None,
               "env": env, "args": vars(args)}
    jp, mp = write_results(args.out, payload, table)
    print(f"\nwrote {jp} and {mp}")
    return payload


if __name__ == "__main__":
    main()
