"""GPU benchmark: the online engine on its emitted Triton kernels against lazy / eager / recompute,
all on the same GPU.

Exits with a message (status 0) when CUDA is not available: no GPU figure is made up.

**Mixer** (``--channels`` C, default 1024 = 4 layers x 256; batch ``--batch``; fp32), generating
L = 2^``min_log2`` .. 2^``max_log2`` positions from an empty prompt, per-token time = the time
of all L steps (one ``torch.cuda.synchronize()`` at the end) / L, the best of ``--reps`` runs
after one warm-up run (Triton compiles its kernels on first use):

* ``online_auto``: ``OnlineConv(kernels="auto")`` (on CUDA: the Triton red step and direct
  tiles, cuFFT tiles; the note is recorded);
* ``online_torch``: ``OnlineConv(kernels="torch")`` (the torch twins on the GPU);
* ``lazy`` / ``eager``: :class:`LazyConv` (O(t) per step) / :class:`EagerConv` (O(L - t)),
  run in full up to ``--full-max``, above it timed at ``--samples`` positions and integrated
  (trapezoid), marked ``*``.

Also the longest single step against the median of the online engine (one run with a
synchronize after every step, ``--latency``).

**Generate**: ``lcsm_compile.models.HyenaLM`` (``--layers`` x ``--d-model``, vocab 256) on the
GPU, prompt of 16 tokens, per-token time of generating up to L: sessions with the online engine
(``kernels="auto"`` = Triton, and ``kernels="torch"``), ``engine="lazy"`` / ``"eager"`` (sampled
context lengths, integrated) and ``recompute`` (the full forward over the prefix per token,
eager, sampled). ``--compile`` also times ``compile_step=True`` (Inductor on the step program).

Writes ``benchmarks/results/<out>.json`` and ``.md`` (machine, GPU, command). Every baseline or
variant that fails on the GPU is recorded with its error instead of stopping the run.

Run: ``python benchmarks/gpu.py`` (L up to 2^16), ``--quick`` (small sizes: a smoke test).
``--device cpu`` runs the same code on the CPU (a dry run of the script; its figures are CPU
figures and go to ``<out>_cpu_dryrun``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import loglog_slope, write_results  # noqa: E402

import lcsm_compile  # noqa: E402
from lcsm_compile import OnlineConv  # noqa: E402
from lcsm_compile.models import HyenaLM  # noqa: E402
from lcsm_compile.runtime.baselines import EagerConv, LazyConv  # noqa: E402


def sync(dev: torch.device) -> None:
    """Wait for the device (CUDA work is asynchronous: time only after it finished)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev: torch.device) -> float:
    """Wall time of ``fn()`` with the device drained before and after."""
    sync(dev)
    t0 = time.perf_counter()
    fn()
    sync(dev)
    return time.perf_counter() - t0


def best(fn, dev: torch.device, reps: int) -> float:
    """Best of ``reps`` timed runs after one warm-up run."""
    fn()
    return min(timed(fn, dev) for _ in range(reps))


def integrate(cost_at, L: int, samples: int) -> float:
    """Average per-step cost over positions 0 .. L-1 from sampled costs (trapezoid rule)."""
    pts = sorted({max(0, min(L - 1, int(round(L * i / (samples - 1))))) for i in range(samples)} | {0, L - 1})
    cs = [cost_at(t) for t in pts]
    if len(pts) == 1:
        return cs[0]
    total = sum((a + b) / 2 * (t1 - t0) for (t0, a), (t1, b) in zip(zip(pts, cs), zip(pts[1:], cs[1:])))
    return total / (pts[-1] - pts[0])


def _guard(name: str, fn, errors: dict):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - a benchmark records what failed and goes on
        errors[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        print(f"  {name} failed: {errors[name]}", file=sys.stderr)
        traceback.print_exc(limit=3)
        return None


# ------------------------------------------------------------------------------ mixer

def mixer_online(C: int, B: int, L: int, kernels: str, dev, reps: int, latency: bool) -> dict:
    k = (torch.randn(C, L) / math.sqrt(L)).to(dev)
    u = torch.randn(L, B, C, device=dev)
    eng = OnlineConv(k, max_len=L, batch_size=B, kernels=kernels)

    def run():
        eng.reset()
        for t in range(L):
            eng.step(u[t])

    out = {"per_token_s": best(run, dev, reps) / L, "note": eng.kernel_note, "block": eng.block,
           "fft_from": eng.fft_from, "delay_from": eng.delay_from}
    if latency:
        eng.reset()
        ts = []
        for t in range(L):
            ts.append(timed(lambda: eng.step(u[t]), dev))
        out.update(max_step_s=max(ts), median_step_s=statistics.median(ts), max_pos=ts.index(max(ts)))
    return out


def mixer_baseline(cls, C: int, B: int, L: int, dev, full_max: int, samples: int) -> dict:
    k = (torch.randn(C, L) / math.sqrt(L)).to(dev)
    eng = cls(k, max_len=L, batch_size=B)
    u = torch.randn(B, C, device=dev)
    if L <= full_max:
        def run():
            eng.position = 0
            for _ in range(L):
                eng.step(u)
        return {"per_token_s": best(run, dev, 2) / L, "sampled": False}

    def cost(t):
        def one():
            eng.position = t
            eng.step(u)
        return best(one, dev, 3)

    return {"per_token_s": integrate(cost, L, samples), "sampled": True}


# ------------------------------------------------------------------------------ generate

def gen_online(model, ids, P: int, L: int, dev, **opts) -> dict:
    sess = lcsm_compile.session(model, ids[:, :P], max_len=L, **opts)
    with torch.no_grad():
        def run():
            sess.reset()
            sess.prefill(ids[:, :P])
            for t in range(P, L):
                sess.step(ids[:, t:t + 1])
        # warm-up: Triton / Inductor compile on first use, CUDA graphs captured (one per
        # red-cell row: the first block of steps); the timed run is a fresh one
        sess.reset()
        sess.prefill(ids[:, :P])
        for t in range(P, min(L, P + 512)):
            sess.step(ids[:, t:t + 1])
        sess.reset()
        sess.prefill(ids[:, :P])
        sync(dev)
        t0 = time.perf_counter()
        for t in range(P, L):
            sess.step(ids[:, t:t + 1])
        sync(dev)
        el = time.perf_counter() - t0
    out = {"per_token_s": el / (L - P), "note": sess.kernel_note}
    setup = getattr(sess.program.step_fn, "setup_s", None)
    if setup is not None:
        out["compile_s"] = setup
    return out


def gen_baseline(model, ids, P: int, L: int, dev, engine: str, samples: int, steps: int) -> dict:
    sess = lcsm_compile.session(model, ids[:, :P], max_len=L, engine=engine, compile_step=False)

    def cost(t):
        start = max(P, min(t, L - steps))
        with torch.no_grad():
            sess.reset()
            sess.prefill(ids[:, :start])
            sess.step(ids[:, start:start + 1])  # warm-up at this context length
            sync(dev)
            t0 = time.perf_counter()
            for s in range(start + 1, min(L, start + 1 + steps)):
                sess.step(ids[:, s:s + 1])
            sync(dev)
            return (time.perf_counter() - t0) / max(1, min(L, start + 1 + steps) - start - 1)

    out = {"per_token_s": integrate(cost, L, samples), "sampled": True}
    return out


def gen_recompute(model, ids, L: int, dev, samples: int) -> dict:
    def cost(t):
        with torch.no_grad():
            return best(lambda: model(ids[:, :t + 1]), dev, 2)

    return {"per_token_s": integrate(cost, L, samples), "sampled": True}


# ------------------------------------------------------------------------------ main

def _ms(x) -> str:
    return "-" if x is None else f"{x * 1e3:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run of the script)")
    ap.add_argument("--channels", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--min-log2", type=int, default=12)
    ap.add_argument("--max-log2", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2, help="timed online runs per size (best)")
    ap.add_argument("--full-max", type=int, default=4096, help="largest L at which mixer baselines run in full")
    ap.add_argument("--samples", type=int, default=6, help="sampled positions per baseline above --full-max")
    ap.add_argument("--steps-per-sample", type=int, default=8)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--latency", action="store_true", help="also one online run with a sync after every step")
    ap.add_argument("--compile", action="store_true", help="also time compile_step=True in generation")
    ap.add_argument("--skip-generate", action="store_true")
    ap.add_argument("--skip-mixer", action="store_true")
    ap.add_argument("--gen-max-log2", type=int, default=None, help="largest generation L (default --max-log2)")
    ap.add_argument("--gen-uncompiled-max-log2", type=int, default=14,
                    help="largest L at which the uncompiled online variants run (each runs every step)")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test of the script")
    ap.add_argument("--out", default="gpu")
    args = ap.parse_args()

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(f"benchmarks/gpu.py: CUDA is not available here (torch {torch.__version__}, "
              f"torch.version.cuda={torch.version.cuda}): nothing measured. Run it on a machine with a GPU.")
        return 0
    if args.quick:
        args.min_log2, args.max_log2, args.channels, args.layers, args.d_model = 8, 10, 64, 2, 32
        args.samples, args.steps_per_sample, args.full_max = 3, 3, 512
        if args.out == "gpu":
            args.out = "gpu_quick"
    out_name = args.out if dev.type == "cuda" else f"{args.out}_cpu_dryrun"
    torch.manual_seed(0)
    Ls = [1 << e for e in range(args.min_log2, args.max_log2 + 1)]
    gpu = {"name": torch.cuda.get_device_name(dev), "capability": list(torch.cuda.get_device_capability(dev))} \
        if dev.type == "cuda" else {"name": "cpu (dry run)"}
    try:
        import triton
        gpu["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        gpu["triton"] = None
    print(f"device {gpu}")
    errors: dict = {}

    # mixer
    mixer: dict = {}
    gen: dict = {}
    for L in [] if args.skip_mixer else Ls:
        row = {}
        for name, kern in (("online_auto", "auto"), ("online_torch", "torch")):
            r = _guard(f"mixer {name} L={L}", lambda kern=kern: mixer_online(
                args.channels, args.batch, L, kern, dev, args.reps, args.latency), errors)
            if r is not None:
                row[name] = r
        for name, cls in (("lazy", LazyConv), ("eager", EagerConv)):
            r = _guard(f"mixer {name} L={L}", lambda cls=cls: mixer_baseline(
                cls, args.channels, args.batch, L, dev, args.full_max, args.samples), errors)
            if r is not None:
                row[name] = r
        mixer[L] = row
        _report(out_name, gpu, args, mixer, gen, errors, final=False)
        print(f"mixer L={L}: " + ", ".join(f"{k} {_ms(v['per_token_s'])} ms/token" for k, v in row.items()))
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    # generate
    if not args.skip_generate:
        gLs = [L for L in Ls if args.gen_max_log2 is None or L <= 1 << args.gen_max_log2]
        Lmax = gLs[-1]
        model = HyenaLM(vocab=256, d_model=args.d_model, n_layers=args.layers, max_len=Lmax).eval().to(dev)
        ids = torch.randint(0, 256, (args.batch, Lmax), device=dev)
        P = 16
        for L in gLs:
            row = {}
            variants = [] if L > 1 << args.gen_uncompiled_max_log2 else [
                ("online_auto", dict(kernels="auto", compile_step=False)),
                ("online_torch", dict(kernels="torch", compile_step=False))]
            if args.compile:
                variants.append(("online_auto_compiled", dict(kernels="auto", compile_step=True)))
            for name, opts in variants:
                r = _guard(f"generate {name} L={L}", lambda opts=opts: gen_online(model, ids, P, L, dev, **opts), errors)
                if r is not None:
                    row[name] = r
            for kind in ("lazy", "eager"):
                r = _guard(f"generate {kind} L={L}", lambda kind=kind: gen_baseline(
                    model, ids, P, L, dev, kind, args.samples, args.steps_per_sample), errors)
                if r is not None:
                    row[kind] = r
            r = _guard(f"generate recompute L={L}", lambda: gen_recompute(model, ids, L, dev, args.samples), errors)
            if r is not None:
                row["recompute"] = r
            gen[L] = row
            _report(out_name, gpu, args, mixer, gen, errors, final=False)
            print(f"generate L={L}: " + ", ".join(f"{k} {_ms(v['per_token_s'])} ms/token" for k, v in row.items()))
            if dev.type == "cuda":
                torch.cuda.empty_cache()

    _report(out_name, gpu, args, mixer, gen, errors, final=True)
    return 0


def _table(res: dict, title: str, base_col: str) -> str:
    """Markdown table of ``res`` (L -> variant -> result), ratios against ``base_col``."""
    cols = sorted({k for row in res.values() for k in row}, key=lambda c: (not c.startswith("online"), c))
    if base_col not in cols:
        base_col = "online_auto"
    others = [c for c in cols if c != base_col]
    lines = [f"### {title} (ms per token; * = sampled and integrated; - = not run at this L)", "",
             "| L | " + " | ".join(cols) + " | " + " | ".join(f"{c} / {base_col}" for c in others) + " |",
             "|---|" + "---:|" * (len(cols) + len(others))]
    for L, row in res.items():
        base = row.get(base_col, {}).get("per_token_s")
        cells = [(_ms(row[c]["per_token_s"]) + ("*" if row[c].get("sampled") else "")) if c in row else "-"
                 for c in cols]
        ratios = [(f"{row[c]['per_token_s'] / base:.1f}x" if c in row and base else "-") for c in others]
        lines.append(f"| 2^{int(math.log2(L))} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    slopes = []
    for c in cols:
        pts = [(L, row[c]["per_token_s"]) for L, row in res.items() if c in row]
        if len(pts) >= 2:
            slopes.append(f"{c} {loglog_slope([p[0] for p in pts], [p[1] * p[0] for p in pts]):.2f}")
    lines += ["", "log-log slope of total time vs L: " + ", ".join(slopes)]
    return "\n".join(lines)


def _report(out_name: str, gpu: dict, args, mixer: dict, gen: dict, errors: dict, final: bool) -> None:
    """Write the results so far (after every row: a run stopped at a time limit keeps them)."""
    rows = list(mixer.values()) + list(gen.values())
    # one line per kernel choice (a compiled session's note also counts its CUDA graphs' replays)
    notes = sorted({v["note"].split("; CUDA graphs")[0] for row in rows for v in row.values() if "note" in v})
    graphs = [f"2^{int(math.log2(L))}: {v['note'].split('; ', 1)[1]}" for L, r in gen.items() for v in r.values()
              if "CUDA graphs" in v.get("note", "")]
    text = [f"Device: {gpu}. Channels {args.channels}, batch {args.batch}, fp32.",
            "Command: `python benchmarks/gpu.py " + " ".join(sys.argv[1:]) + "`",
            "Kernels: " + "; ".join(notes)]
    if mixer:
        text += ["", _table(mixer, "mixer (one group of long convolutions)", "online_auto")]
    lat = [(L, r["online_auto"]) for L, r in mixer.items() if "max_step_s" in r.get("online_auto", {})]
    if lat:
        text += ["", "Longest single step of online_auto (a sync after every step): " + ", ".join(
            f"2^{int(math.log2(L))}: {r['max_step_s'] * 1e3:.3f} ms at t={r['max_pos']} = "
            f"{r['max_step_s'] / r['median_step_s']:.1f}x the median {r['median_step_s'] * 1e3:.3f} ms" for L, r in lat)]
    if gen:
        text += ["", _table(gen, f"generate (HyenaLM {args.layers} x {args.d_model}, prompt 16)", "online_auto_compiled")]
        comp = [f"2^{int(math.log2(L))}: {r['online_auto_compiled']['compile_s']:.1f} s" for L, r in gen.items()
                if "compile_s" in r.get("online_auto_compiled", {})]
        if comp:
            text += ["", "compile_step setup (Inductor compile + first step): " + ", ".join(comp)]
        if graphs:
            text += ["", "Compiled step on CUDA: " + "; ".join(graphs)]
    if errors:
        text += ["", "Failed (recorded, not measured):"] + [f"- {k}: {v}" for k, v in errors.items()]
    if not final:
        text += ["", "(partial: the run had not finished when this was written)"]
    payload = {"device": gpu, "args": vars(args), "mixer": mixer, "generate": gen, "errors": errors}
    jp, mp = write_results(out_name, payload, "\n".join(text))
    if final:
        print("\n".join(text))
        print(f"wrote {jp} and {mp}")


if __name__ == "__main__":
    sys.exit(main())
