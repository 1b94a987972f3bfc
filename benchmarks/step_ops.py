"""The per-step ops as C++ kernels against their Python bodies, interleaved in one session.

``lcsm_compile.codegen.cpu_ops`` registers C++ CPU kernels for the step's stateful ops (ring
steps, red cells, the advance of steps without tile work, modal steps); the Python bodies are
what ran before. Timed one after the other, two rows see different spells of this shared
machine (docs/benchmarks.md section 6), so here one compiled session (``compile_step=True``)
alternates between them: blocks of ``--block`` steps with the C++ kernels, then the same number
with the Python bodies (``cpu_ops.python_bodies()``), ``--blocks`` blocks in all, so slow spells
hit both alike. Reports each side's median and 10th percentile step and the ratio of medians.
The two sides compute the same bits (tests/test_cpu_ops.py).

``--compare wrapper`` measures the other per-call cost the same way: two compiled sessions of
the model, one compiled with Inductor's C++ wrapper (``LCSM_CPP_WRAPPER=1``, the default) and
one with its Python wrapper (``LCSM_CPP_WRAPPER=0``), both with the C++ step ops, stepped in
alternating blocks over the same positions (their outputs compared: the same bits expected).

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


def _model(name: str, args):
    torch.manual_seed(0)
    if name == "hyena":
        return HyenaLM(vocab=256, d_model=args.d_model, n_layers=args.layers, max_len=args.context).eval()
    return StripedHyenaLM(vocab=256, d_model=args.d_model, n_layers=args.layers).eval()


def _summary(out: dict, times: dict) -> dict:
    for side, ts in times.items():
        s = sorted(ts)
        out[side] = {"median_ms": statistics.median(ts) * 1e3, "p10_ms": s[len(s) // 10] * 1e3,
                     "mean_ms": statistics.fmean(ts) * 1e3}
    a, b = list(times)
    out["ratio"] = out[a]["median_ms"] / out[b]["median_ms"]
    return out


def run_wrapper(name: str, B: int, args) -> dict:
    """Inductor's C++ wrapper against its Python wrapper: two sessions, alternating blocks."""
    L = args.context
    model = _model(name, args)
    n = args.block * args.blocks // 2
    ids = torch.randint(0, 256, (B, L), generator=torch.Generator().manual_seed(B))
    P = L - n - args.warmup
    sess, pos, setup = {}, {}, {}
    for side, flag in (("cpp", "1"), ("python", "0")):
        os.environ["LCSM_CPP_WRAPPER"] = flag  # read when the step program compiles (its first step)
        s = lcsm_compile.session(model, ids[:, :16], max_len=L, compile_step=True, threads=1)
        s.prefill(ids[:, :P])
        t0 = time.perf_counter()
        for t in range(P, P + args.warmup):
            s.step(ids[:, t:t + 1])
        setup[side] = time.perf_counter() - t0
        want = "C++" if flag == "1" else "Python"
        if s.program.step_fn.fn.wrapper != want:
            raise SystemExit(f"{name}: the {want} wrapper did not compile: {s.kernel_note}")
        sess[side], pos[side] = s, P + args.warmup
    os.environ.pop("LCSM_CPP_WRAPPER", None)
    times, outs = {"cpp": [], "python": []}, {"cpp": [], "python": []}
    for b in range(args.blocks):
        side = "cpp" if b % 2 == 0 else "python"
        for _ in range(args.block):
            t = pos[side]
            t0 = time.perf_counter()
            y = sess[side].step(ids[:, t:t + 1])
            times[side].append(time.perf_counter() - t0)
            outs[side].append((y[0] if isinstance(y, (tuple, list)) else y).clone())
            pos[side] += 1
    diff = max((a - b).abs().max().item() for a, b in zip(outs["cpp"], outs["python"]))
    out = {"model": MODELS[name], "batch": B, "steps_each": len(times["cpp"]), "max_abs_diff": diff,
           "warmup_s": setup}
    return _summary(out, times)


def run(name: str, B: int, args) -> dict:
    L = args.context
    model = _model(name, args)
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
    return _summary(out, times)


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
    ap.add_argument("--compare", choices=("ops", "wrapper"), default="ops",
                    help="ops: C++ step ops vs their Python bodies; wrapper: Inductor's C++ vs Python wrapper")
    ap.add_argument("--out", default=None, help="results name (default step_ops / step_wrapper)")
    args = ap.parse_args(argv)
    args.out = args.out or ("step_ops" if args.compare == "ops" else "step_wrapper") + ("_quick" if args.quick else "")
    if args.quick:
        args.layers, args.d_model, args.context, args.block, args.blocks, args.warmup = 2, 32, 512, 10, 4, 4
        args.batch = "1"
    a_name, b_name = ("C++ step ops", "Python bodies") if args.compare == "ops" else ("C++ wrapper", "Python wrapper")
    torch.set_num_threads(1)
    rows = []
    for m in (s.strip() for s in args.models.split(",") if s.strip()):
        if m not in MODELS:
            ap.error(f"unknown model {m!r} (have {', '.join(MODELS)})")
        for B in (int(b) for b in args.batch.split(",")):
            r = run(m, B, args) if args.compare == "ops" else run_wrapper(m, B, args)
            rows.append(r)
            print(f"{r['model']} B={B}: {a_name} {r['cpp']['median_ms']:.3f} ms, {b_name} "
                  f"{r['python']['median_ms']:.3f} ms (medians): {r['ratio']:.3f}x"
                  + (f", outputs differ by {r['max_abs_diff']:.1e}" if "max_abs_diff" in r else ""))
    how = ("one session, blocks alternating C++ step ops / Python bodies" if args.compare == "ops" else
           "two sessions (C++ / Python wrapper, both with the C++ step ops) stepped in alternating blocks")
    lines = [f"{args.layers} x {args.d_model} models, compile_step=True, 1 thread, context {args.context}; "
             f"{how}, blocks of {args.block} steps, {args.blocks} blocks.\n",
             f"| model | batch | steps each | {a_name} median ms | {a_name} p10 ms | {b_name} median ms | "
             f"{b_name} p10 ms | ratio of medians |" + (" max abs diff |" if args.compare == "wrapper" else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.compare == "wrapper" else "")]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['steps_each']} | {r['cpp']['median_ms']:.3f} | "
                     f"{r['cpp']['p10_ms']:.3f} | {r['python']['median_ms']:.3f} | {r['python']['p10_ms']:.3f} | "
                     f"**{r['ratio']:.2f}x** |" + (f" {r['max_abs_diff']:.1e} |" if "max_abs_diff" in r else ""))
    table = "\n".join(lines)
    print(table)
    jp, mp = write_results(args.out, {"rows": rows, "args": vars(args)}, table)
    print(f"wrote {jp} and {mp}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
