"""A long run: generate 2^20 positions from a 2^10 prompt, with the memory model checked.

Model: ``lcsm_compile.models.HyenaLM``, ``--model 2x128`` (2 layers, d = 128: 256 long-conv
channels, the default) or ``--model 4x256`` (4 layers, d = 256: 1024 channels), vocab 256,
batch 1, fp32, greedy decoding. Records:

* **memory**: the session's memory model (``sess.memory``: bytes by part, predicted before
  allocation; the peak = base + max(fold, state + prefill)) against the process' measured peak
  resident memory (``ru_maxrss``, read before anything else is allocated) and the resident
  memory after the run; bytes per channel-position;
* **time**: every step timed (wall, and the thread's CPU time: a step whose wall time is much
  more than its CPU time was preempted); percentiles, the longest steps with the tile work the
  schedule did there; the total against the lazy baseline (each output a dot product over the
  history, O(t) per step) extrapolated from sampled steps: the model's step without long-conv
  work (``engine="none"``, measured) plus the lazy mixer's step at sampled t (measured at
  ``--lazy-samples`` positions up to L, trapezoid rule);
* **precision**: the streamed long-conv outputs at ``--samples`` sampled positions (every
  channel) against an fp64 reference: the FFT convolution in fp64, in channel chunks, of the
  inputs the engine received (its history at the end of the run) with its filters;
  ``--mixer-precision`` also runs the engine alone on random inputs in fp32 and in bf16 (fp32
  accumulation), against fp64, and measures accumulators stored in bf16/fp16 (simulated: each
  tile's output rounded), the "state in the model's dtype" question;
* **checkpoint / resume** (``--checkpoint-at T``): ``sess.state_dict(copy=False)`` written with
  ``torch.save`` at position T, then a new process (this script, ``--resume``) loads it into a
  new session and steps on; its logits must equal this run's bitwise (``--resume-steps`` of them).

Smaller runs by flags (``--log2-len 14`` / ``17``: the memory model's checks at 2^14 and 2^17
take minutes). Results: ``benchmarks/results/long_run[_<suffix>].{md,json}``; docs/benchmarks.md
quotes them. Run it pinned (``taskset -c 1``) on a machine others share.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import write_results  # noqa: E402

import lcsm_compile  # noqa: E402
from lcsm_compile import OnlineConv  # noqa: E402
from lcsm_compile.models import HyenaLM  # noqa: E402
from lcsm_compile.runtime import memory, schedule, state_ops  # noqa: E402
from lcsm_compile.runtime.baselines import LazyConv  # noqa: E402

MODELS = {"2x128": (2, 128), "4x256": (4, 256)}
GiB = 2 ** 30


def log(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def build(name: str, L: int) -> HyenaLM:
    layers, d = MODELS[name]
    torch.manual_seed(0)
    return HyenaLM(vocab=256, d_model=d, n_layers=layers, max_len=L).eval()


class Recorder:
    """Records the long-conv outputs (``online_diag``'s, every member) at sampled positions:
    wraps ``state_ops.red_step``, which the op calls (also from an Inductor-compiled step)."""

    def __init__(self, samples):
        self.samples = set(int(t) for t in samples)
        self.pos = -1
        self.out: dict = {}
        self._orig = state_ops.red_step

    def __enter__(self):
        rec = self

        def red_step(u, blk_hist, blk_acc, kb, r, c0, nk=None):
            y = rec._orig(u, blk_hist, blk_acc, kb, r, c0, nk)
            if rec.pos in rec.samples:
                rec.out.setdefault(rec.pos, {})[int(c0)] = y.detach().to(torch.float64).clone()
            return y

        state_ops.red_step = red_step
        return self

    def __exit__(self, *exc):
        state_ops.red_step = self._orig

    def rows(self, t: int, C: int) -> torch.Tensor:
        """The outputs of position ``t``, ``[B, C]`` (the members' channel slices together)."""
        parts = self.out[t]
        ys = [parts[c0] for c0 in sorted(parts)]
        y = torch.cat(ys, -1)
        assert y.shape[-1] == C, (y.shape, C)
        return y


def fp64_reference(u: torch.Tensor, k: torch.Tensor, positions, chunk: int = 8) -> torch.Tensor:
    """``y[b, c, t] = sum_{s <= t} u[b, c, s] k[c, t - s]`` in fp64 at ``positions``: FFT
    convolutions of the whole length in fp64, ``chunk`` channels at a time. ``[B, C, n]``."""
    B, C, L = u.shape
    n = 1 << (2 * L - 1).bit_length()
    idx = torch.tensor(sorted(positions), dtype=torch.long)
    out = torch.empty(B, C, len(idx), dtype=torch.float64)
    for c0 in range(0, C, chunk):
        uc = u[:, c0:c0 + chunk].to(torch.float64)
        kc = k[c0:c0 + chunk].to(torch.float64)
        y = torch.fft.irfft(torch.fft.rfft(uc, n=n) * torch.fft.rfft(kc, n=n), n=n)
        out[:, c0:c0 + chunk] = y[..., idx]
        del uc, kc, y
    return out


def rel_errors(got: torch.Tensor, ref: torch.Tensor) -> dict:
    """Per position (last dim): max-abs error / max |ref| over the channels, and the 2-norm
    ratio; their worst and median over the positions."""
    d = (got - ref).abs()
    maxrel = (d.amax(dim=(0, 1)) / ref.abs().amax(dim=(0, 1)).clamp_min(1e-300))
    normrel = ((got - ref).pow(2).sum((0, 1)).sqrt() / ref.pow(2).sum((0, 1)).sqrt().clamp_min(1e-300))
    return {"max_rel_worst": float(maxrel.max()), "max_rel_median": float(maxrel.median()),
            "norm_rel_worst": float(normrel.max()), "norm_rel_median": float(normrel.median()),
            "worst_position_index": int(maxrel.argmax())}


def sample_positions(P: int, L: int, n: int) -> list:
    """``n`` positions in [P, L): log-spaced, uniform, and the first and last few, plus the
    positions right after the largest tiles' outputs begin (L/2, 3L/4)."""
    pts = set()
    for i in range(n // 2):
        pts.add(int(P + (L - P - 1) * (i / max(1, n // 2 - 1))))
        pts.add(int(round(P * (L / max(P, 1)) ** (i / max(1, n // 2 - 1)))) if P else i)
    pts |= {P, P + 1, L - 1, L - 2, L // 2, L // 2 + 1, 3 * L // 4}
    return sorted(t for t in pts if P <= t < L)


def percentiles(ts: np.ndarray) -> dict:
    q = [50, 90, 99, 99.9, 99.99]
    v = np.percentile(ts, q)
    return {**{f"p{k}": float(x) for k, x in zip(q, v)}, "max": float(ts.max()), "mean": float(ts.mean()),
            "argmax": int(ts.argmax())}


def work_at(eng, t: int) -> str:
    """What the schedule does at step ``t`` (a description of the tile work)."""
    ws = schedule.step_work(t, eng.prefill_len, eng.max_len, eng.block, eng.delay_from, eng._rows,
                            eng.chunk_flops, eng.fft_from, eng.split_from)
    if not ws:
        red = "block end" if schedule.is_boundary(t, eng.prefill_len, eng.max_len, eng.block) else "red cells only"
        return red
    parts = []
    for w in ws:
        if w.units:
            parts.append(f"split U={w.level} units {w.units[0]}..{w.units[1]}")
        elif w.delayed:
            parts.append(f"delayed U={w.level} rows {w.r0}..{w.r1}")
        else:
            parts.append(f"immediate U={w.level}")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- the pieces
def lazy_extrapolation(model, eng, ids, P: int, L: int, n_samples: int, compile_step, floor_steps: int = 300) -> dict:
    """Per-step time of the lazy baseline: the step program without long-conv work
    (``engine="none"``, measured) + the lazy mixer's step at sampled positions t (a dot product
    over the t inputs of the history, every channel; LazyConv itself), integrated over [P, L)."""
    fl = lcsm_compile.session(model, ids[:, :P], max_len=min(L, P + floor_steps + 8), engine="none",
                              compile_step=compile_step)
    fl.prefill(ids[:, :P])
    ts = []
    x = ids[:, P:P + 1]
    for i in range(floor_steps):
        t0 = time.perf_counter()
        fl.step(x)
        ts.append(time.perf_counter() - t0)
    floor = statistics.median(ts[20:])
    del fl
    gc.collect()
    lz = LazyConv(eng.k, max_len=L, batch_size=eng.batch_size, dtype=eng.dtype)
    lz.hist.normal_()
    pts = sorted({P} | {int(P + (L - P - 1) * (i / (n_samples - 1)) ** 2) for i in range(n_samples)} | {L - 1})
    mix = {}
    u = torch.randn(eng.batch_size, eng.channels, dtype=eng.dtype)
    for t in pts:
        lz.position = t
        reps = []
        for _ in range(5 if t < L // 4 else 3):
            lz.position = t
            t0 = time.perf_counter()
            lz.diag(u)
            reps.append(time.perf_counter() - t0)
        mix[t] = min(reps)
    del lz
    gc.collect()
    xs = sorted(mix)
    total = 0.0
    for a, b in zip(xs, xs[1:]):
        total += (mix[a] + mix[b]) / 2 * (b - a)
    return {"floor_step_s": floor, "lazy_mixer_step_s": {str(k): v for k, v in mix.items()},
            "lazy_total_s": total + floor * (L - P), "samples": len(xs)}


def mixer_precision(k: torch.Tensor, L: int, P: int, samples, acc_round=None, dtype=torch.float32,
                    seed: int = 1) -> dict:
    """The engine alone on random inputs (``dtype``: fp32, or bf16 with fp32 accumulation) with
    filters ``k``, against fp64 at ``samples``. ``acc_round``: a dtype the accumulators are
    rounded to after every tile (a simulation of accumulators stored in that dtype)."""
    gen = torch.Generator().manual_seed(seed)
    C = k.shape[0]
    eng = OnlineConv(k, max_len=L, dtype=dtype)
    if acc_round is not None:
        run = eng._run_work

        def rounded(w):  # the outputs this work wrote, rounded (split levels: every row)
            run(w)
            t0, t1 = w.outs[0][1], w.outs[-1][2]
            rects = [(0, eng.batch_size, 0, C)] if w.units or not w.delayed else eng._rects(w.r0, w.r1)
            for b0, b1, c0, c1 in rects:
                a = eng.acc[b0:b1, c0:c1, t0:t1]
                a.copy_(a.to(acc_round))
        eng._run_work = rounded
    u = torch.randn(1, C, L, generator=gen).to(dtype)
    want = set(samples)
    got = {}
    eng.prefill(u[..., :P])
    if acc_round is not None:
        eng.acc[..., P:].copy_(eng.acc[..., P:].to(acc_round))
    for t in range(P, L):
        y = eng.step(u[..., t])
        if t in want:
            got[t] = y.to(torch.float64)
    pos = sorted(got)
    ref = fp64_reference(u, k, pos)
    res = rel_errors(torch.stack([got[t] for t in pos], -1), ref)
    if dtype != torch.float32:  # the floor: the fp64 reference rounded to the output dtype
        res["rounding_floor"] = rel_errors(ref.to(dtype).to(torch.float64), ref)
    return res


# ----------------------------------------------------------------------------- resume
def resume(args) -> None:
    """``--resume``: load the checkpoint into a new session (same model, max_len, options) and
    step on; write the logits of the next steps."""
    torch.set_num_threads(1)
    ck = torch.load(args.resume, weights_only=False)
    L = 1 << args.log2_len
    model = build(args.model, L)
    sess = lcsm_compile.session(model, ck["example"], max_len=L, engine_options=ck["engine_options"],
                                compile_step=ck["compile_step"])
    sess.load_state_dict(ck["state"])
    x = ck["next"]
    with torch.no_grad():
        steps = _resume_steps(sess, x, args.resume_steps)
    torch.save(steps, args.resume + ".out")


def _resume_steps(sess, x, n: int) -> torch.Tensor:
    outs = []
    for i in range(n):
        lg = sess.step(x)
        outs.append(lg[:, -1].clone())
        x = lg[:, -1:].argmax(-1)
    return torch.stack(outs, 1)


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log2-len", type=int, default=20)
    ap.add_argument("--log2-prompt", type=int, default=10)
    ap.add_argument("--model", choices=sorted(MODELS), default="2x128")
    ap.add_argument("--steps", type=int, default=None, help="steps to run (default: to max_len)")
    ap.add_argument("--samples", type=int, default=64, help="sampled positions for the fp64 comparison")
    ap.add_argument("--lazy-samples", type=int, default=10)
    ap.add_argument("--no-lazy", action="store_true")
    ap.add_argument("--mixer-precision", action="store_true")
    ap.add_argument("--checkpoint-at", type=int, default=None)
    ap.add_argument("--resume-steps", type=int, default=256)
    ap.add_argument("--resume", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--compile-step", default="auto")
    ap.add_argument("--chunk-flops", type=float, default=None,
                    help="the engine's chunk budget (engine_options; default: schedule.CHUNK_FLOPS)")
    ap.add_argument("--split-from", type=int, default=None,
                    help="the engine's first split level (engine_options; default: the engine's)")
    ap.add_argument("--gc-freeze", action="store_true",
                    help="gc.freeze() after the first step (the collector then scans only objects made during the run)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.resume:
        return resume(args)
    L, P = 1 << args.log2_len, 1 << args.log2_prompt
    steps = (L - P) if args.steps is None else min(args.steps, L - P)
    cs = {"auto": "auto", "true": True, "false": False}[str(args.compile_step).lower()]
    name = args.out or ("long_run" if args.log2_len == 20 and args.model == "2x128" and args.steps is None
                        and not args.chunk_flops else f"long_run_{args.model}_2e{args.log2_len}"
                        + (f"_chunk{args.chunk_flops:.0e}" if args.chunk_flops else ""))
    model = build(args.model, L)
    layers, d = MODELS[args.model]
    C = layers * d
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (1, P), generator=gen)

    # warm-up: imports, kernels, Inductor (a step program compiled once) at a tiny length
    w = lcsm_compile.session(build(args.model, 64), ids[:, :8], max_len=64, compile_step=cs is not False)
    w.prefill(ids[:, :8])
    w.step(ids[:, 8:9])
    del w
    gc.collect()
    base = memory.resident_bytes()
    log(f"base resident {base / GiB:.3f} GiB; available {memory.available_bytes() / GiB:.1f} GiB")

    t0 = time.perf_counter()
    eopts = {k: v for k, v in (("chunk_flops", args.chunk_flops), ("split_from", args.split_from)) if v} or None
    sess = lcsm_compile.session(model, ids, max_len=L, compile_step=cs, engine_options=eopts)
    setup_s = time.perf_counter() - t0
    mem = sess.memory
    eng = sess.program.engines[0]
    log(f"session in {setup_s:.1f} s; {eng!r}; split levels {eng._split_levels}")
    log(str(mem))
    log(str(mem.measured))
    sched = {"block": eng.block, "fft_from": eng.fft_from, "delay_from": eng.delay_from,
             "split_from": eng.split_from, "chunk_flops": eng.chunk_flops}

    samples = sample_positions(P, P + steps, args.samples)
    rec = Recorder(samples)
    wall = np.zeros(steps, dtype=np.float64)  # wall[0], cpu[0]: the first step, timed apart
    cpu = np.zeros(steps, dtype=np.float64)
    resume_ref = []
    ck_path = None
    with rec, torch.no_grad():
        t0 = time.perf_counter()
        logits = sess.prefill(ids)
        prefill_s = time.perf_counter() - t0
        x = logits[:, -1:].argmax(-1)
        rec.pos = P  # the first step compiles the step program (compile_step): timed apart
        t0 = time.perf_counter()
        lg = sess.step(x)
        first_step_s = time.perf_counter() - t0
        x = lg[:, -1:].argmax(-1)
        if args.gc_freeze:  # everything made so far (torch, Inductor, the session) out of the collector's scans
            gc.freeze()
        gc_events: list = []  # (generation, seconds, position) of each collection during the steps
        gc_start: list = [0.0]

        def on_gc(phase, info):
            if phase == "start":
                gc_start[0] = time.perf_counter()
            else:
                gc_events.append((info["generation"], time.perf_counter() - gc_start[0], rec.pos))

        gc.callbacks.append(on_gc)
        t_run = time.perf_counter()
        last = t_run
        for i in range(1, steps):
            t = P + i
            rec.pos = t
            if args.checkpoint_at is not None and t == args.checkpoint_at:
                ck_path = f"/tmp/lcsm_long_run_ck_{os.getpid()}.pt"
                c0 = time.perf_counter()
                torch.save({"state": sess.state_dict(copy=False), "next": x.clone(), "example": ids[:, :8],
                            "engine_options": dict(sched), "compile_step": cs}, ck_path)
                log(f"checkpoint at {t}: {os.path.getsize(ck_path) / GiB:.2f} GiB in {time.perf_counter() - c0:.1f} s")
            a, b = time.perf_counter(), time.thread_time()
            lg = sess.step(x)
            cpu[i] = time.thread_time() - b
            wall[i] = time.perf_counter() - a
            x = lg[:, -1:].argmax(-1)
            if args.checkpoint_at is not None and args.checkpoint_at <= t < args.checkpoint_at + args.resume_steps:
                resume_ref.append(lg[:, -1].clone())
            if time.perf_counter() - last > 60 or i == steps - 1:
                last = time.perf_counter()
                done = i + 1
                log(f"position {t + 1}/{P + steps}: {done / (last - t_run):,.0f} tok/s, RSS "
                    f"{memory.resident_bytes() / GiB:.3f} GiB (peak {memory.peak_resident_bytes() / GiB:.3f}), "
                    f"longest step so far {wall[:done].max() * 1e3:.1f} ms at {P + int(wall[:done].argmax())}")
        run_s = time.perf_counter() - t_run
        gc.callbacks.remove(on_gc)
        if args.gc_freeze:
            gc.unfreeze()
    peak = memory.peak_resident_bytes()
    end_rss = memory.resident_bytes()
    log(f"done: {steps} steps in {run_s:.0f} s; peak resident {peak / GiB:.3f} GiB, now {end_rss / GiB:.3f} GiB")

    # precision: the streamed outputs at the samples against fp64 (inputs: the engine's history)
    ok = [t for t in samples if t in rec.out]
    got = torch.stack([rec.rows(t, eng.channels) for t in ok], -1)
    u = eng.hist[..., :P + steps]
    t0 = time.perf_counter()
    ref = fp64_reference(u, eng.k[:, :P + steps], ok)
    prec = rel_errors(got, ref)
    prec["positions"] = len(ok)
    prec["reference_s"] = time.perf_counter() - t0
    log(f"precision vs fp64 at {len(ok)} positions: {prec}")
    del got, ref, u
    gc.collect()

    # the memory model against the measurement
    pred_peak = mem.peak_rss
    per_cp = peak / (C * L)
    res = {
        "model": args.model, "channels": C, "max_len": L, "prompt": P, "steps": steps, "schedule": sched,
        "setup_s": setup_s, "prefill_s": prefill_s, "run_s": run_s,
        "memory": {"base_rss": base, "peak_rss": peak, "end_rss": end_rss, "predicted_peak_rss": pred_peak,
                   "peak_error": (pred_peak - peak) / peak if pred_peak else None,
                   "state_bytes_predicted": mem.state_bytes - mem.objects_bytes,
                   "state_bytes_measured": mem.measured.state_bytes, "objects_bytes": mem.objects_bytes,
                   "peak_bytes_per_channel_position": per_cp,
                   "parts": {p.name + (f" ({p.owner})" if p.owner else ""): p.bytes for p in mem.parts},
                   "transients": {p.name: p.bytes for p in mem.transients}, "report": str(mem)},
        "first_step_s": first_step_s, "steps_wall": percentiles(wall[1:]), "steps_cpu": percentiles(cpu[1:]),
        "precision": prec,
    }
    med = res["steps_wall"]["p50"]
    res["longest_over_median"] = res["steps_wall"]["max"] / med
    res["cpu_longest_over_median"] = res["steps_cpu"]["max"] / res["steps_cpu"]["p50"]
    wall[0] = cpu[0] = 0.0  # the first step (compile) is reported apart
    top = np.argsort(wall)[-8:][::-1]
    res["longest_steps"] = [{"position": P + int(i), "wall_ms": wall[i] * 1e3, "cpu_ms": cpu[i] * 1e3,
                             "work": work_at(eng, P + int(i))} for i in top]
    topc = np.argsort(cpu)[-8:][::-1]
    res["longest_cpu_steps"] = [{"position": P + int(i), "wall_ms": wall[i] * 1e3, "cpu_ms": cpu[i] * 1e3,
                                 "work": work_at(eng, P + int(i))} for i in topc]
    gc_at: dict = {}
    for g, sec, pos in gc_events:
        gc_at.setdefault(pos, []).append((g, sec))
    res["gc"] = {"freeze": bool(args.gc_freeze),
                 "collections": {str(g): {"n": sum(1 for e in gc_events if e[0] == g),
                                          "longest_ms": max([e[1] for e in gc_events if e[0] == g], default=0) * 1e3}
                                 for g in (0, 1, 2)}}
    for lst in (res["longest_steps"], res["longest_cpu_steps"]):
        for st in lst:
            hits = gc_at.get(st["position"], [])
            if hits:
                st["work"] += "; " + ", ".join(f"gen{g} GC {sec * 1e3:.1f} ms" for g, sec in hits)
    for r in res["longest_steps"]:
        log(f"long step at {r['position']}: wall {r['wall_ms']:.2f} ms, cpu {r['cpu_ms']:.2f} ms: {r['work']}")

    if ck_path is not None:  # resume in another process and compare
        cmd = [sys.executable, __file__, "--resume", ck_path, "--log2-len", str(args.log2_len), "--model", args.model,
               "--resume-steps", str(len(resume_ref))]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        other = torch.load(ck_path + ".out")
        mine = torch.stack(resume_ref, 1)
        res["resume"] = {"at": args.checkpoint_at, "steps": len(resume_ref), "bitwise_equal": bool(torch.equal(other, mine)),
                         "max_abs_diff": float((other - mine).abs().max()), "seconds": time.perf_counter() - t0,
                         "checkpoint_bytes": os.path.getsize(ck_path)}
        log(f"resume in another process: {res['resume']}")
        os.remove(ck_path)
        os.remove(ck_path + ".out")

    del sess
    gc.collect()
    if not args.no_lazy:
        lz = lazy_extrapolation(model, eng, torch.cat([ids, torch.zeros(1, 512, dtype=torch.long)], 1), P, P + steps,
                                args.lazy_samples, (L >= lcsm_compile.api.AUTO_COMPILE_MIN_LEN) if cs == "auto" else cs)
        res["lazy"] = lz
        res["online_total_s"] = prefill_s + first_step_s + run_s
        res["speedup_vs_lazy"] = lz["lazy_total_s"] / res["online_total_s"]
        log(f"lazy baseline (extrapolated): {lz['lazy_total_s']:.0f} s vs online {res['online_total_s']:.0f} s")
    k_model = eng.k[:, :P + steps].clone()
    del eng
    gc.collect()
    if args.mixer_precision:
        Lm = P + steps
        mp = {}
        for key, dt, rnd in (("fp32", torch.float32, None), ("bf16_inputs_fp32_acc", torch.bfloat16, None),
                             ("fp32_acc_stored_bf16", torch.float32, torch.bfloat16),
                             ("fp32_acc_stored_fp16", torch.float32, torch.float16)):
            if rnd is not None and args.log2_len > 17:
                continue  # the simulation rounds every tile's outputs: run it at 2^17 or less
            t0 = time.perf_counter()
            mp[key] = mixer_precision(k_model, Lm, P, sample_positions(P, Lm, args.samples), rnd, dt)
            mp[key]["seconds"] = time.perf_counter() - t0
            log(f"mixer precision {key}: {mp[key]}")
        res["mixer_precision"] = mp

    write_results(name, res, table(res))
    log(f"wrote benchmarks/results/{name}.md")


def table(r: dict) -> str:
    m = r["memory"]
    w, c = r["steps_wall"], r["steps_cpu"]
    GB = 1e9
    lines = [
        f"HyenaLM {r['model']} ({r['channels']} long-conv channels), batch 1, fp32: {r['steps']} steps after a "
        f"{r['prompt']}-token prompt, max_len {r['max_len']}; schedule {r['schedule']}.",
        "",
        "| memory | value |", "|---|---:|",
        f"| process before the session (base) | {m['base_rss'] / GiB:.3f} GiB |",
        f"| predicted peak resident (base + model's peak) | {m['predicted_peak_rss'] / GiB:.3f} GiB |",
        f"| measured peak resident (ru_maxrss) | {m['peak_rss'] / GiB:.3f} GiB ({m['peak_rss'] / GB:.2f} GB) |",
        f"| model error (predicted - measured) / measured | {100 * m['peak_error']:+.1f}% |",
        f"| peak bytes per channel-position | {m['peak_bytes_per_channel_position']:.2f} |",
        f"| state: predicted / allocated tensors | {m['state_bytes_predicted'] / GiB:.3f} / "
        f"{m['state_bytes_measured'] / GiB:.3f} GiB |",
        f"| graphs and objects (measured when predicted) | {m.get('objects_bytes', 0) / GiB:.3f} GiB |",
        f"| resident after the run | {m['end_rss'] / GiB:.3f} GiB |",
        "",
        "| step time | median | p99 | p99.9 | p99.99 | longest | longest / median |", "|---|---:|---:|---:|---:|---:|---:|",
        f"| wall | {w['p50'] * 1e3:.3f} ms | {w['p99'] * 1e3:.3f} | {w['p99.9'] * 1e3:.3f} | {w['p99.99'] * 1e3:.3f} | "
        f"{w['max'] * 1e3:.2f} (at {r['prompt'] + 1 + w['argmax']}) | {r['longest_over_median']:.1f}x |",
        f"| thread CPU | {c['p50'] * 1e3:.3f} ms | {c['p99'] * 1e3:.3f} | {c['p99.9'] * 1e3:.3f} | {c['p99.99'] * 1e3:.3f} | "
        f"{c['max'] * 1e3:.2f} (at {r['prompt'] + 1 + c['argmax']}) | {r['cpu_longest_over_median']:.1f}x |",
        "",
        "Longest steps (wall), with the tile work the schedule does there: " +
        "; ".join(f"{s['position']}: {s['wall_ms']:.1f} ms wall / {s['cpu_ms']:.1f} ms CPU ({s['work']})"
                  for s in r["longest_steps"][:5]) + ".",
        "",
        "Longest steps (thread CPU time): " +
        "; ".join(f"{s['position']}: {s['cpu_ms']:.1f} ms CPU / {s['wall_ms']:.1f} ms wall ({s['work']})"
                  for s in r["longest_cpu_steps"][:5]) + ".",
        "",
        "Garbage collections during the steps" + (" (after gc.freeze())" if r.get("gc", {}).get("freeze") else "")
        + ": " + ", ".join(f"gen{g} {v['n']} (longest {v['longest_ms']:.1f} ms)"
                          for g, v in r.get("gc", {}).get("collections", {}).items()) + ".",
        "",
        f"Setup {r['setup_s']:.0f} s, prefill {r['prefill_s']:.1f} s, first step (compiles the step program) "
        f"{r['first_step_s']:.1f} s, the other steps {r['run_s']:.0f} s "
        f"({r['steps'] / r['run_s']:,.0f} tok/s).",
    ]
    p = r["precision"]
    lines += ["", f"Precision of the streamed long-conv outputs vs fp64 (FFT convolution of the engine's own inputs, "
                  f"channel chunks) at {p['positions']} sampled positions, every channel: worst max-abs/max|ref| "
                  f"**{p['max_rel_worst']:.2e}** (median {p['max_rel_median']:.2e}); worst 2-norm ratio "
                  f"{p['norm_rel_worst']:.2e}."]
    if "lazy" in r:
        z = r["lazy"]
        lines += ["", f"Total time against the lazy baseline (extrapolated: model step without long-conv work "
                      f"{z['floor_step_s'] * 1e3:.3f} ms measured + the lazy mixer's step measured at {z['samples']} "
                      f"positions, trapezoid): lazy **{z['lazy_total_s']:.0f} s** vs online {r['online_total_s']:.0f} s "
                      f"(prefill + every step, the first one's compile included): **{r['speedup_vs_lazy']:.1f}x**."]
    if "resume" in r:
        s = r["resume"]
        lines += ["", f"Checkpoint at position {s['at']} (`torch.save(sess.state_dict(copy=False))`, "
                      f"{s['checkpoint_bytes'] / GiB:.2f} GiB) resumed in another process: {s['steps']} logits "
                      f"bitwise equal: **{s['bitwise_equal']}** (max abs diff {s['max_abs_diff']:.1e})."]
    if "mixer_precision" in r:
        lines += ["", "| engine alone, random inputs, vs fp64 | worst max-abs/max\\|ref\\| | median | rounding floor |",
                  "|---|---:|---:|---:|"]
        for key, v in r["mixer_precision"].items():
            fl = v.get("rounding_floor", {}).get("max_rel_worst")
            lines.append(f"| {key} | {v['max_rel_worst']:.2e} | {v['max_rel_median']:.2e} | "
                         f"{'-' if fl is None else f'{fl:.2e}'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
