"""Hybrid benchmark (issue 14 target): a 4 x 256 StripedHyena-style hybrid streamed exactly,
3 Hyena blocks and 1 causal attention block with a KV cache.

Model (fp32, vocab 256, d 256, ``examples/idioms/attention.py``): ``HybridLM`` with blocks
[Hyena order 2, Hyena order 2, attention, Hyena order 2]; the attention block is
``RoPEAttention`` (rotary embeddings over ``arange(L)``, 4 heads x 64, SDPA ``is_causal``); each
Hyena block one FFT long convolution (implicit filter) and one short depthwise conv; pre-norm
residual blocks with a GELU MLP.

1. **Exact**: a session (max_len 512) teacher-forced from a prompt of 100 tokens to 300
   positions against the model's full forward (max relative error; the fp64 golden too).
2. **Per-token time at context 2k, 4k, 8k, 16k** (``--contexts``): two sessions (max_len =
   the largest context) generate side by side from a prompt of ``--prompt`` tokens, one step
   each in turn, fed the same random tokens (teacher forcing, so both stay at the same
   position and see the same machine): **A** the model as compiled, the time its attention
   (``kv_attend``'s scores over the cache, softmax, weighted sum of the values) takes inside
   each of its steps measured as it runs (**A: attention in the step**); **B** the same model
   with its attention op stubbed (``lcsm::kv_attend`` still writes the KV cache, then returns
   zeros instead of attending: everything but the attention's own O(t) work). Per-token times
   are the median (and mean) over the ``--window`` steps ending at each context.
   **attention op alone**: the same attention on A's cache at that position, called in a loop
   (median of ``--op-reps`` calls).
3. **Growth**: per context, ``A - B`` (what the attention adds to a step, both measured in the
   same steps) against A's attention in the step and the op alone, ``(A - attention) - B`` (what
   streaming the KV cache, ``2 x 4 x 64 x t`` floats per step, costs the rest of the step), and
   the ratios of each to the smallest context: O(t) attention doubles with the context, the
   rest of the model (B) stays flat (up to the machine's load).

Both sessions use the defaults of ``lcsm_compile.session`` (``compile_step="auto"``: the step
program is compiled by Inductor for max_len >= 16384; its first step, which compiles, is not
timed) and ``threads=1``.

Run: ``taskset -c 1 python benchmarks/hybrid.py`` (about 10 minutes on a quiet core;
``--quick``: contexts 256 and 512, a smoke test). Writes ``benchmarks/results/hybrid.json`` and
``hybrid.md`` (``--quick``: ``hybrid_quick``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lcsm_compile  # noqa: E402
from examples.idioms import attention as A  # noqa: E402
from lcsm_compile.runtime import kv_cache as KV  # noqa: E402

from _util import write_results  # noqa: E402

VOCAB = 256


def build(d: int = 256) -> torch.nn.Module:
    """The 4 x 256 hybrid: Hyena, Hyena, attention, Hyena."""
    torch.manual_seed(0)
    mixers = [A.HyenaOperator(d, order=2), A.HyenaOperator(d, order=2),
              A.RoPEAttention(d, heads=4, kv_heads=4, cached=False, mask="sdpa"), A.HyenaOperator(d, order=2)]
    return A.HybridLM(mixers, vocab=VOCAB, d=d).eval()


def _tensors(out):
    return [out] if isinstance(out, torch.Tensor) else list(out)


def check_exact(model, P: int = 100, L: int = 300) -> dict:
    """Teacher forcing against the full forward (and the fp64 golden)."""
    x = torch.randint(0, VOCAB, (1, L), generator=torch.Generator().manual_seed(1))
    sess = lcsm_compile.session(model, x[:, :P], max_len=512)
    outs = [sess.prefill(x[:, :P])] + [sess.step(x[:, t:t + 1]) for t in range(P, L)]
    got = torch.cat(outs, 1)
    with torch.no_grad():
        ref = model(x)
        gold = __import__("copy").deepcopy(model).double()
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            g = gold(x)
        finally:
            torch.set_default_dtype(old)
    rel = lambda a, b: float((a.double() - b.double()).abs().max() / b.double().abs().max())  # noqa: E731
    return {"P": P, "L": L, "rel_err_vs_eager": rel(got, ref), "rel_err_vs_fp64": rel(got, g),
            "eager_rel_err_vs_fp64": rel(ref, g), "attention_layers": len(sess.program.attention),
            "spec": [(r.scale, r.window, r.slopes) for r in sess.program.lowered.attention]}


def op_alone(cache, t: int, reps: int) -> float:
    """Median seconds of the attention of position ``t`` over ``cache`` (kv_attend minus its write)."""
    c = cache
    s = c.slot
    q = torch.randn(s.n, 1, s.d)
    KV.kv_attend_reference(q, c.k, c.v, t, s.scale, s.window, s.slopes, s.group)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        KV.kv_attend_reference(q, c.k, c.v, t, s.scale, s.window, s.slopes, s.group)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def run(model, contexts, prompt: int, window: int, op_reps: int) -> dict:
    max_len = max(contexts)
    ids = torch.randint(0, VOCAB, (1, max_len), generator=torch.Generator().manual_seed(2))
    t0 = time.perf_counter()
    a = lcsm_compile.session(model, ids[:, :prompt], max_len=max_len)
    b = lcsm_compile.session(model, ids[:, :prompt], max_len=max_len)
    stubbed = {c.k.data_ptr() for c in b.program.attention.values()}
    real = KV.kv_attend_reference
    spent = [0.0]

    def patched(q, kcache, vcache, t, scale, window, slopes, kv_group=1):
        if kcache.data_ptr() in stubbed:
            return q.new_zeros(q.shape[0], 1, vcache.shape[-1])
        s0 = time.perf_counter()
        y = real(q, kcache, vcache, t, scale, window, slopes, kv_group)
        spent[0] += time.perf_counter() - s0
        return y

    KV.kv_attend_reference = patched
    try:
        with torch.no_grad():
            a.prefill(ids[:, :prompt])
            b.prefill(ids[:, :prompt])
            a.step(ids[:, prompt:prompt + 1])  # the first steps compile (compile_step "auto")
            b.step(ids[:, prompt:prompt + 1])
        setup = time.perf_counter() - t0
        ta, tb, tin = {}, {}, {}
        ops = {}
        with torch.no_grad():
            for t in range(prompt + 1, max_len):
                x = ids[:, t:t + 1]
                spent[0] = 0.0
                s0 = time.perf_counter()
                a.step(x)
                s1 = time.perf_counter()
                b.step(x)
                s2 = time.perf_counter()
                ta[t], tb[t], tin[t] = s1 - s0, s2 - s1, spent[0]
                if t + 1 in contexts:
                    (cache,) = a.program.attention.values()
                    ops[t + 1] = op_alone(cache, t, op_reps)
                    win = range(t + 1 - window, t + 1)
                    print(f"context {t + 1}: A {statistics.median([ta[s] for s in win]) * 1e3:.2f} ms "
                          f"(attention {statistics.median([tin[s] for s in win]) * 1e3:.2f}), "
                          f"B {statistics.median([tb[s] for s in win]) * 1e3:.2f} ms, "
                          f"op alone {ops[t + 1] * 1e3:.3f} ms; {os.getloadavg()[0]:.1f} load", flush=True)
    finally:
        KV.kv_attend_reference = real
    rows = []
    for c in contexts:
        win = range(c - window, c)
        wa, wb, wi = [ta[s] for s in win], [tb[s] for s in win], [tin[s] for s in win]
        p10 = lambda v: sorted(v)[len(v) // 10] * 1e3  # noqa: E731
        rows.append({"context": c, "A_median_ms": statistics.median(wa) * 1e3, "A_mean_ms": statistics.mean(wa) * 1e3,
                     "A_p10_ms": p10(wa), "A_attention_ms": statistics.median(wi) * 1e3,
                     "A_rest_ms": statistics.median([x - y for x, y in zip(wa, wi)]) * 1e3,
                     "A_minus_B_ms": statistics.median([x - y for x, y in zip(wa, wb)]) * 1e3,
                     "B_median_ms": statistics.median(wb) * 1e3, "B_mean_ms": statistics.mean(wb) * 1e3,
                     "B_p10_ms": p10(wb), "op_ms": ops[c] * 1e3})
    (cache,) = a.program.attention.values()
    return {"rows": rows, "setup_s": setup, "kv_cache_bytes": cache.nbytes, "max_len": max_len,
            "loadavg_end": os.getloadavg(),
            "compiled_step": type(a.program.step_fn).__name__ == "CompiledStep", "prompt": prompt, "window": window}


def table(exact: dict, res: dict) -> str:
    lines = [f"Exact: teacher forcing from a {exact['P']}-token prompt to {exact['L']} positions: max rel err "
             f"{exact['rel_err_vs_eager']:.1e} vs eager fp32, {exact['rel_err_vs_fp64']:.1e} vs the fp64 golden "
             f"(eager's own: {exact['eager_rel_err_vs_fp64']:.1e}); {exact['attention_layers']} attention layer "
             f"(spec scale, window, slopes: {exact['spec']}).",
             "",
             f"Per-token time (ms, one step, batch 1, fp32, one thread; {'compiled step (Inductor)' if res['compiled_step'] else 'step graph'}; "
             f"over the {res['window']} steps before each context, A and B stepped in turn; KV cache "
             f"{res['kv_cache_bytes'] / 2**20:.1f} MiB at max_len {res['max_len']}). Medians, 10th percentiles in "
             f"brackets (interference only adds time):",
             "",
             "| context | A: model | B: attention stubbed | A - B | A: attention in the step | (A - attention) - B | attention op alone |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['context']} | {r['A_median_ms']:.2f} [{r['A_p10_ms']:.2f}] | {r['B_median_ms']:.2f} "
                     f"[{r['B_p10_ms']:.2f}] | {r['A_minus_B_ms']:.2f} | {r['A_attention_ms']:.2f} | "
                     f"{r['A_rest_ms'] - r['B_median_ms']:+.2f} | {r['op_ms']:.2f} |")
    base = res["rows"][0]
    lines += ["", f"Scaling from context {base['context']} (ratios; O(t) attention doubles with the context):", "",
              "| context | context ratio | A's attention in the step | A - B | attention op alone | B (the rest of the model) |",
              "|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"][1:]:
        lines.append(f"| {r['context']} | {r['context'] / base['context']:.0f}x | "
                     f"{r['A_attention_ms'] / base['A_attention_ms']:.2f}x | {r['A_minus_B_ms'] / max(base['A_minus_B_ms'], 1e-9):.2f}x | "
                     f"{r['op_ms'] / base['op_ms']:.2f}x | {r['B_median_ms'] / base['B_median_ms']:.2f}x |")
    la = res.get("loadavg_end")
    if la:
        lines += ["", f"Load average of the machine at the end of the run (other jobs shared it): "
                      f"{la[0]:.1f} / {la[1]:.1f} / {la[2]:.1f} (1 / 5 / 15 min)."]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--op-reps", type=int, default=51)
    ap.add_argument("--quick", action="store_true", help="contexts 256 and 512 (a smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.contexts, args.window, args.op_reps = [256, 512], 64, 11
    torch.set_num_threads(1)
    try:
        if len(os.sched_getaffinity(0)) > 1:
            print("note: not pinned to one core (run under `taskset -c N`)", flush=True)
    except AttributeError:
        pass
    model = build()
    exact = check_exact(model)
    print(f"exact: {exact}", flush=True)
    res = run(model, sorted(args.contexts), args.prompt, args.window, args.op_reps)
    md = table(exact, res)
    print(md)
    write_results("hybrid_quick" if args.quick else "hybrid", {"exact": exact, **res, "args": vars(args)}, md)


if __name__ == "__main__":
    main()
