"""Modal filters as exact recurrences (tracker issue 14, item 3): session memory flat in
``max_len``, and per-token time against the model's own hand-written modal recurrence.

Model: ``lcsm_compile.models.StripedHyenaLM`` (``--layers`` x ``--d-model``, default 4 x 256,
``--state`` modes per channel, vocab 256, fp32): RMSNorm, a short featurizer convolution (k = 3),
a modal long filter ``h[c, t] = exp(-a t) (re cos(w t) - im sin(w t))`` summed over the modes
(poles ``exp(-a + i w)``, residues ``re + i im``), gating, a gated MLP. Seed 0.

**Baseline**: the same model decoded the way StripedHyena's own engine decodes
(``stripedhyena/engine.py``: ``step_fir`` and ``step_iir``), written here in plain torch:
per layer a ring of the last ``k - 1`` featurizer inputs (``torch.roll`` + assignment), the
complex64 modal state ``x = poles * x + u``, ``y = Re(sum residues * x)``, the model's own
``nn.Linear`` / norm / MLP modules for the rest; prefill by running the same step over the
prompt (the recurrent prefill mode), not timed.

**Ours**: ``lcsm_compile.session(model, prompt, max_len=L, threads=1)``: the four long
convolutions are recognised as modal and verified (``explain`` says so), the step program runs
``lcsm::modal_step`` per layer; rows with ``compile_step=True`` (Inductor on the step program,
the default for ``max_len >= 16384``) and ``False`` (the FX graph op by op).

Per-token time: after a prefill of ``--prompt`` tokens and ``--warmup`` untimed steps,
``--steps`` x ``--reps`` teacher-forced positions (the same token sequence for every row), each
position timed on every row in turn (round robin: on this shared machine a slow spell hits all
rows alike); reported per row: median, 10th percentile and mean, and ours / baseline as the
ratio of the medians, the median of the per-position ratios and the ratio of the 10th
percentiles. The logits of every row are compared with the baseline's (relative error). A step
is one token for each of the ``--batch`` sequences.

Memory: each configuration in a fresh process (``--child``): the process's RSS before the
session (model built), after the session is made, and after prefill + steps; the peak RSS
(``ru_maxrss``); the bytes of the session's state tensors (modal states, ring buffers, the
online engine's buffers) and of every tensor its programs hold apart from the model's
parameters. Modal at ``--max-lens`` (default 2^12 and 2^20) and, for comparison, the forced
online engine (``modal=False``) at ``--online-max-lens`` (default 2^12 and 2^16; at 2^20 it does
not fit: the row records the session's refusal).

Run: ``taskset -c 1 python benchmarks/modal.py`` (full, ~15 minutes on this project's machine),
``--quick`` (a smoke test: 2 x 64 model, small lengths, about a minute). Writes
``benchmarks/results/modal.json`` and ``modal.md`` (``--quick``: ``modal_quick``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import write_results  # noqa: E402

import lcsm_compile  # noqa: E402
from lcsm_compile.models import StripedHyenaLM  # noqa: E402

VOCAB = 256


def build(args) -> torch.nn.Module:
    torch.manual_seed(0)
    return StripedHyenaLM(vocab=VOCAB, d_model=args.d_model, n_layers=args.layers, state=args.state).eval()


# ----------------------------------------------------------------------------- the baseline
class HandWrittenDecoder:
    """StripedHyenaLM decoded by a hand-written recurrence, the way StripedHyena's engine does it
    (``step_fir``: the short filter over a state of the last ``k - 1`` inputs, rolled; ``step_iir``:
    the modal state ``x = poles * x + u`` in complex64, ``y = Re(sum_n residues * x)``); the
    rest through the model's own modules."""

    def __init__(self, model: StripedHyenaLM, batch: int):
        self.model = model
        self.layers = []
        with torch.no_grad():
            for blk in model.blocks:
                mx = blk.mixer
                f = mx.filt
                poles = torch.exp(-torch.exp(f.log_decay)) * torch.exp(1j * f.freq)      # [d, N] complex64
                residues = torch.complex(f.residue_re, f.residue_im)                      # [d, N]
                w = mx.short_w.detach()                                                   # [3d, 1, k]
                self.layers.append({
                    "blk": blk, "poles": poles[None], "residues": residues[None],
                    "h0": w[:, 0, -1][None], "h": w[:, 0, :-1][None], "D": mx.D.detach()[None],
                    "fir": torch.zeros(batch, w.shape[0], w.shape[-1] - 1),
                    "iir": torch.zeros(batch, poles.shape[0], poles.shape[1], dtype=torch.complex64)})

    def reset(self) -> None:
        for s in self.layers:
            s["fir"].zero_()
            s["iir"].zero_()

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """One token per sequence: ``ids [B]`` -> logits ``[B, vocab]``."""
        m = self.model
        x = m.emb(ids)                                                   # [B, d]
        for s in self.layers:
            blk = s["blk"]
            mx = blk.mixer
            z = mx.in_proj(blk.n1(x))                                    # [B, 3d]
            # step_fir: h0 * u + sum(state * h), then roll the state and append u
            y = s["h0"] * z + torch.sum(s["fir"] * s["h"], dim=-1)
            s["fir"] = torch.roll(s["fir"], -1, dims=2)
            s["fir"][..., -1] = z
            q, k, v = y.chunk(3, dim=-1)
            u = k * v
            # step_iir: the modal state update and its readout
            s["iir"] = s["poles"] * s["iir"] + u[..., None]
            res = torch.sum(s["residues"] * s["iir"], dim=-1).real
            x = x + mx.out_proj((res + u * s["D"]) * q)
            x = x + blk.mlp(blk.n2(x))
        return m.head(m.norm(x))


# ----------------------------------------------------------------------------- memory (child)
def _rss(field: str = "VmRSS") -> int:
    """The process's resident set (``VmHWM``: its peak; both reset by ``exec``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _state_bytes(prog) -> dict:
    """Bytes of the session's state tensors and of all tensors its programs hold (unique
    storages, the model's parameters and buffers excluded)."""
    state = 0
    for m in prog.modal.values():
        state += m.state.nbytes
    for r in prog.shorts.values():
        state += r.buf.nbytes
    for e in prog.engines:
        for t in (e.state_tensors() if hasattr(e, "state_tensors") else {}).values():
            state += t.untyped_storage().nbytes()
    own = {t.untyped_storage().data_ptr() for t in list(prog.lowered.gm.parameters()) + list(prog.lowered.gm.buffers())}
    seen, held = set(own), 0
    tensors = [t for gm in (prog.step_gm, prog.prefill_gm) for t in list(gm.buffers()) + list(gm.parameters())]
    for e in prog.engines:
        tensors += [v for v in vars(e).values() if isinstance(v, torch.Tensor)]
        tensors += [t for t in (e.state_tensors() if hasattr(e, "state_tensors") else {}).values()]
    for t in tensors:
        st = t.untyped_storage()
        if st.data_ptr() in seen or st.nbytes() == 0:
            continue
        seen.add(st.data_ptr())
        held += st.nbytes()
    return {"state_bytes": state, "program_bytes": held}


def child(args) -> None:
    torch.set_num_threads(1)
    model = build(args)
    prompt = torch.randint(0, VOCAB, (args.batch, args.prompt), generator=torch.Generator().manual_seed(1))
    gc.collect()
    out = {"max_len": args.max_len, "modal": args.modal}
    out["rss_base"] = _rss()
    t0 = time.perf_counter()
    try:
        modal = "auto" if args.modal == "auto" else False
        sess = lcsm_compile.session(model, prompt, max_len=args.max_len, modal=modal, compile_step=False, threads=1)
    except lcsm_compile.SessionError as e:
        out["refused"] = str(e)
        print(json.dumps(out))
        return
    out["setup_s"] = time.perf_counter() - t0
    mp = sess.program.plan.modal
    out["modal_s"] = mp.seconds if mp is not None else None
    out["paths"] = sorted({c.path for c in mp.paths.values()}) if mp is not None else []
    out["reason"] = next(iter(mp.paths.values())).reason if mp is not None and mp.paths else ""
    out["rss_session"] = _rss()
    with torch.no_grad():
        sess.prefill(prompt)
        for t in range(args.steps):
            sess.step(prompt[:, t % args.prompt:t % args.prompt + 1])
    out["rss_after_steps"] = _rss()
    out["peak_rss"] = _rss("VmHWM")
    out.update(_state_bytes(sess.program))
    print(json.dumps(out))


def memory_rows(args) -> list:
    rows = []
    configs = [(L, "auto") for L in args.max_lens] + [(L, "false") for L in args.online_max_lens]
    for L, modal in configs:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--max-len", str(L), "--modal", modal,
               "--d-model", str(args.d_model), "--layers", str(args.layers), "--state", str(args.state),
               "--batch", str(args.batch), "--prompt", str(args.prompt), "--steps", "64"]
        print(f"memory: max_len={L} modal={modal} ...", flush=True)
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        if p.returncode != 0 or not line:
            rows.append({"max_len": L, "modal": modal, "error": (p.stderr or p.stdout)[-2000:]})
            print(rows[-1]["error"], flush=True)
            continue
        rows.append(json.loads(line[-1]))
        print("  ", rows[-1], flush=True)
    return rows


# ----------------------------------------------------------------------------- per-token time
def per_token(args, max_len: int) -> dict:
    torch.set_num_threads(1)
    model = build(args)
    g = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, VOCAB, (args.batch, args.prompt), generator=g)
    total = args.warmup + args.steps * args.reps
    toks = torch.randint(0, VOCAB, (args.batch, total), generator=g)
    rows = {}
    t0 = time.perf_counter()
    sess_c = lcsm_compile.session(model, prompt, max_len=max_len, compile_step=True, threads=1)
    setup_c = time.perf_counter() - t0
    t0 = time.perf_counter()
    sess_g = lcsm_compile.session(model, prompt, max_len=max_len, compile_step=False, threads=1)
    setup_g = time.perf_counter() - t0
    paths = [c.path for c in sess_g.program.plan.modal.paths.values()]
    base = HandWrittenDecoder(model, args.batch)
    runners = {
        "lcsm step (compiled)": lambda tok: sess_c.step(tok[:, None]),
        "lcsm step (graph)": lambda tok: sess_g.step(tok[:, None]),
        "baseline: hand-written recurrence": lambda tok: base.step(tok),
    }
    logits = {k: [] for k in runners}
    times = {k: [] for k in runners}
    with torch.no_grad():
        t0 = time.perf_counter()
        sess_c.prefill(prompt)
        first = time.perf_counter()
        sess_c.step(toks[:, :1])  # compiles the step program (Inductor)
        compile_s = time.perf_counter() - first
        sess_g.prefill(prompt)
        for t in range(prompt.shape[1]):
            base.step(prompt[:, t])
        logits["baseline: hand-written recurrence"].append(base.step(toks[:, 0]))
        logits["lcsm step (graph)"].append(sess_g.step(toks[:, :1])[:, -1])
        for i in range(1, args.warmup):
            for name, fn in runners.items():
                out = fn(toks[:, i])
                logits[name].append(out[:, -1] if out.dim() == 3 else out)
        logits["lcsm step (compiled)"].insert(0, logits["lcsm step (graph)"][0])
        # round robin: every position is timed on each row in turn, so that the rows see the same
        # machine (this 2-core machine is shared: slow spells hit all rows alike)
        for j in range(args.steps * args.reps):
            tok = toks[:, args.warmup + j]
            for name, fn in runners.items():
                a = time.perf_counter()
                out = fn(tok)
                times[name].append(time.perf_counter() - a)
                logits[name].append(out[:, -1] if out.dim() == 3 else out)
    ref = torch.stack(logits["baseline: hand-written recurrence"]).double()
    for name in runners:
        got = torch.stack(logits[name]).double()
        err = ((got - ref).abs().max() / ref.abs().max()).item()
        paired = [a / b for a, b in zip(times[name], times["baseline: hand-written recurrence"])]
        rows[name] = {"median_ms": statistics.median(times[name]) * 1e3,
                      "median_paired_ratio": statistics.median(paired),
                      "mean_ms": statistics.fmean(times[name]) * 1e3,
                      "p10_ms": sorted(times[name])[len(times[name]) // 10] * 1e3,
                      "steps": len(times[name]), "logits_rel_err_vs_baseline": err}
    rows["lcsm step (compiled)"]["setup_s"] = setup_c + compile_s
    rows["lcsm step (graph)"]["setup_s"] = setup_g
    return {"max_len": max_len, "paths": paths, "rows": rows,
            "modal_reason": next(iter(sess_g.program.plan.modal.paths.values())).reason}


# ----------------------------------------------------------------------------- state precision
def precision(lengths, channels: int = 64, modes: int = 8) -> list:
    """The recurrence ``x_t = p x_{t-1} + u_t`` run in complex64 (an fp32 state) and complex128
    (fp64, what the ops use) against the fp64 FFT convolution with the realised filter, over
    ``L`` positions: max |error| / max |exact| of the outputs. Poles ``|p|`` in [0.95, 0.9999]
    (slow decays: the hard case), random phases and residues, inputs N(0, 1) in fp32."""
    from lcsm_compile.passes.modal import realize

    g = torch.Generator().manual_seed(0)
    p = torch.polar(0.95 + 0.0499 * torch.rand(channels, modes, generator=g, dtype=torch.float64),
                    torch.rand(channels, modes, generator=g, dtype=torch.float64) * 3.14)
    r = torch.randn(channels, modes, generator=g, dtype=torch.complex128)
    out = []
    for L in lengths:
        u = torch.randn(1, channels, L, generator=g)
        h = realize(p, r, 0, L)
        n = 1 << (2 * L - 1).bit_length()
        exact = torch.fft.irfft(torch.fft.rfft(u.double(), n=n) * torch.fft.rfft(h, n=n), n=n)[..., :L]
        row = {"L": L}
        for name, cd in (("fp32 state (complex64)", torch.complex64), ("fp64 state (complex128)", torch.complex128)):
            pp, rr = p.to(cd), r.to(cd)
            x = torch.zeros(1, channels, modes, dtype=cd)
            ys = torch.empty(1, channels, L, dtype=torch.float64)
            uu = u.to(cd)
            for t in range(L):
                x = pp * x + uu[..., t, None]
                ys[..., t] = (rr * x).sum(-1).real.double()
            row[name] = ((ys - exact).abs().max() / exact.abs().max()).item()
        out.append(row)
        print("  ", row, flush=True)
    return out


def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    for unit, s in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= s:
            return f"{n / s:,.2f} {unit}"
    return f"{n} B"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--state", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=16)
    ap.add_argument("--reps", type=int, default=16)
    ap.add_argument("--max-lens", type=lambda s: [1 << int(x) for x in s.split(",")], default=[1 << 12, 1 << 20])
    ap.add_argument("--online-max-lens", type=lambda s: [1 << int(x) for x in s.split(",")],
                    default=[1 << 12, 1 << 16, 1 << 20])
    ap.add_argument("--time-max-lens", type=lambda s: [1 << int(x) for x in s.split(",")], default=[1 << 12, 1 << 20])
    ap.add_argument("--precision-log2", type=lambda s: [1 << int(x) for x in s.split(",")], default=[1 << 14, 1 << 16])
    ap.add_argument("--skip-memory", action="store_true", help="only the per-token timing and the precision")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--max-len", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--modal", default="auto", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.d_model, args.layers, args.prompt, args.steps, args.reps, args.warmup = 64, 2, 32, 32, 2, 4
        args.max_lens, args.online_max_lens, args.time_max_lens = [1 << 10, 1 << 14], [1 << 10, 1 << 12], [1 << 10]
        args.precision_log2 = [1 << 12]
    name = args.out or ("modal_quick" if args.quick else "modal")
    print("state precision ...", flush=True)
    prec = precision(args.precision_log2)
    mem = [] if args.skip_memory else memory_rows(args)
    timing = []
    for L in args.time_max_lens:
        print(f"per-token: max_len={L} ...", flush=True)
        timing.append(per_token(args, L))
        print("  ", json.dumps(timing[-1]["rows"]), flush=True)
        gc.collect()

    lines = [f"StripedHyenaLM {args.layers} x {args.d_model}, {args.state} modes per channel, vocab {VOCAB}, fp32, "
             f"batch {args.batch}, one thread; prompt {args.prompt} tokens.", "",
             "**Session memory** (each row a fresh process; state = modal states + ring buffers + online engine "
             "buffers; held = every tensor the programs hold but the model's parameters):", "",
             "| path | max_len | setup s (of it: modal verification) | state | held by the programs | RSS: base -> "
             "session -> after 64 steps | peak RSS |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in mem:
        path = "modal" if r.get("modal") == "auto" else "online (modal=False)"
        if "error" in r or "refused" in r:
            why = r.get("refused") or r.get("error", "")
            lines.append(f"| {path} | 2^{r['max_len'].bit_length() - 1} | refused: {why[:160]} | | | | |")
            continue
        ms = f" ({r['modal_s']:.1f})" if r.get("modal_s") is not None and r.get("modal") == "auto" else ""
        lines.append(f"| {path} | 2^{r['max_len'].bit_length() - 1} | {r['setup_s']:.1f}{ms} | "
                     f"{_fmt_bytes(r['state_bytes'])} | {_fmt_bytes(r['program_bytes'])} | "
                     f"{_fmt_bytes(r['rss_base'])} -> {_fmt_bytes(r['rss_session'])} -> "
                     f"{_fmt_bytes(r['rss_after_steps'])} | {_fmt_bytes(r['peak_rss'])} |")
    lines += ["", f"**Per-token time** (ms per step over {args.steps * args.reps} teacher-forced positions after "
              f"{args.warmup} untimed ones; each position is timed on every row in turn):", "",
              "| max_len | row | median ms | 10th percentile ms | mean ms | ours / baseline (medians) | "
              "ours / baseline (median of per-position ratios) | ours / baseline (10th pct.) | "
              "logits rel. err vs baseline | setup s |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for tm in timing:
        b = tm["rows"]["baseline: hand-written recurrence"]
        for rn, r in tm["rows"].items():
            base = rn.startswith("baseline")
            ratio = "-" if base else f"**{r['median_ms'] / b['median_ms']:.2f}x**"
            ratio10 = "-" if base else f"{r['p10_ms'] / b['p10_ms']:.2f}x"
            paired = "-" if base else f"**{r['median_paired_ratio']:.2f}x**"
            lines.append(f"| 2^{tm['max_len'].bit_length() - 1} | {rn} | {r['median_ms']:.3f} | {r['p10_ms']:.3f} | "
                         f"{r['mean_ms']:.3f} | {ratio} | {paired} | {ratio10} | {r['logits_rel_err_vs_baseline']:.1e} | "
                         f"{r.get('setup_s', float('nan')):.1f} |")
    if timing:
        lines += ["", f"Paths: {timing[0]['paths']}; {timing[0]['modal_reason']}"]
    lines += ["", "**State precision** (64 channels x 8 modes, |p| in [0.95, 0.9999]; outputs of the recurrence "
              "against the fp64 FFT convolution, max |error| / max |exact|):", "",
              "| L | fp32 state (complex64) | fp64 state (complex128, used) |", "|---:|---:|---:|"]
    for r in prec:
        lines.append(f"| 2^{r['L'].bit_length() - 1} | {r['fp32 state (complex64)']:.1e} | "
                     f"{r['fp64 state (complex128)']:.1e} |")
    table = "\n".join(lines)
    print(table)
    write_results(name, {"args": {k: v for k, v in vars(args).items()}, "memory": mem, "timing": timing,
                         "precision": prec}, table)


if __name__ == "__main__":
    main()
