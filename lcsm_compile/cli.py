"""The ``lcsm`` command line tool.

``lcsm demo``          exact generation with a Hyena LM: progress bar, exactness check, speed
                       side by side with recomputing the forward per token.
``lcsm demo --mixer``  exactness and speed of the online engine alone against the lazy baseline.
``lcsm explain``       what the compiler finds in the demo model (long/short convs, groups).
``lcsm bench``         a short mixer benchmark table (the full ones are in ``benchmarks/``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch


def _demo(args: argparse.Namespace) -> int:
    """Generate with a Hyena LM on a streaming session; check it and compare speeds."""
    if args.mixer:
        return _demo_mixer(args)
    from .api import generate, session
    from .capture import find_logits as logits_of
    from .models import HyenaLM

    torch.manual_seed(0)
    P, N = args.prompt, args.new_tokens
    L = P + N
    model = HyenaLM(vocab=256, d_model=args.d_model, n_layers=args.layers, max_len=L).eval()
    prompt = torch.randint(0, 256, (args.batch, P))
    print(f"lcsm demo: HyenaLM ({args.layers} layers, d={args.d_model}, vocab 256), batch {args.batch}, "
          f"prompt {P} tokens, {N} new tokens, {torch.get_num_threads()} threads")
    t0 = time.perf_counter()
    sess = session(model, prompt, max_len=L)
    print(f"compiled to a streaming program in {time.perf_counter() - t0:.1f} s: {sess}")
    t0 = time.perf_counter()
    out = generate(model, prompt, max_new_tokens=N, do_sample=True, temperature=0.8, top_k=50,
                   generator=torch.Generator().manual_seed(0), progress=args.progress, max_len=L)
    dt = time.perf_counter() - t0
    # exactness: teacher-force the generated sequence and compare with one full forward
    with torch.no_grad():
        ref = logits_of(model(out))
    sess.reset()
    got = [logits_of(sess.prefill(out[:, :P]))]
    for t in range(P, out.shape[1]):
        got.append(logits_of(sess.step(out[:, t:t + 1])))
    got = torch.cat(got, 1)
    err = ((got - ref).abs().max() / ref.abs().max()).item()
    print(f"exactness: max |streamed - full forward| / max |logits| over all {out.shape[1]} positions = {err:.1e}")
    with torch.no_grad():
        t_re = min(_timeit(lambda: model(out[:, :L])) for _ in range(2))
    ours = dt / N
    print(f"speed: lcsm {N * args.batch / dt:,.0f} tok/s ({ours * 1e3:.2f} ms/token, whole run incl. prefill); "
          f"recomputing the forward at context {L} costs {t_re * 1e3:.1f} ms/token: {t_re / ours:.0f}x")
    ok = err < 1e-4
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


def _timeit(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _explain(args: argparse.Namespace) -> int:
    """Print what the compiler finds in the demo model."""
    from .api import explain
    from .models import HyenaLM

    torch.manual_seed(0)
    model = HyenaLM(vocab=256, d_model=args.d_model, n_layers=args.layers, max_len=1024).eval()
    print(explain(model, torch.randint(0, 256, (1, 16))))
    return 0


def _demo_mixer(args: argparse.Namespace) -> int:
    """Stream a random group of long convolutions with the engine and the lazy baseline."""
    from tqdm import tqdm

    from .runtime.engine import OnlineConv
    from .ops import causal_conv_fft
    from .runtime.baselines import LazyConv

    torch.manual_seed(0)
    C, L, P = args.channels, args.length, args.prompt
    print(f"lcsm demo: {C} causal long-conv channels, prompt {P}, {L - P} generated positions, fp32, "
          f"{torch.get_num_threads()} threads")
    k = torch.randn(C, L) * torch.exp(-torch.arange(L) / (L / 8)) / math.sqrt(L / 8)
    u = torch.randn(1, C, L)
    ref = causal_conv_fft(u.double(), k.double())

    def run(eng, name):
        ys = [eng.prefill(u[..., :P])]
        t0 = time.perf_counter()
        for t in tqdm(range(P, L), desc=f"{name:>6}", unit="tok", leave=True, disable=not args.progress):
            ys.append(eng.step(u[..., t])[..., None])
        return torch.cat(ys, -1), time.perf_counter() - t0

    online = OnlineConv(k, max_len=L)
    y_on, t_on = run(online, "online")
    y_lz, t_lz = run(LazyConv(k, max_len=L), "lazy")
    scale = ref.abs().max().item()
    err_on = (y_on.double() - ref).abs().max().item() / scale
    err_lz = (y_lz.double() - ref).abs().max().item() / scale
    print(f"exactness (max error / max |y| vs fp64 FFT conv): online {err_on:.1e}, lazy {err_lz:.1e}")
    n = L - P
    print(f"speed: online {n / t_on:,.0f} positions/s ({t_on / n * 1e6:.1f} us/step), "
          f"lazy {n / t_lz:,.0f} positions/s ({t_lz / n * 1e6:.1f} us/step): {t_lz / t_on:.1f}x faster "
          f"(plan: block={online.block}, fft_from={online.fft_from})")
    ok = err_on < 1e-4
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


def _bench(args: argparse.Namespace) -> int:
    """A short mixer benchmark printed as a table."""
    from .runtime.engine import OnlineConv
    from .runtime.baselines import EagerConv, LazyConv

    torch.manual_seed(0)
    print("| C | L | online us/step | lazy us/step | eager us/step | speedup vs best |")
    print("|---:|---:|---:|---:|---:|---:|")
    for L in (1 << e for e in range(args.min_log2, args.max_log2 + 1)):
        k = torch.randn(args.channels, L) / math.sqrt(L)
        u = torch.randn(args.channels)[None]
        res = {}
        for name, cls in (("online", OnlineConv), ("lazy", LazyConv), ("eager", EagerConv)):
            eng = cls(k, max_len=L)
            t0 = time.perf_counter()
            for _ in range(L):
                eng.step(u)
            res[name] = (time.perf_counter() - t0) / L * 1e6
        best = min(res["lazy"], res["eager"])
        print(f"| {args.channels} | {L} | {res['online']:.1f} | {res['lazy']:.1f} | {res['eager']:.1f} | "
              f"{best / res['online']:.1f}x |")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lcsm`` command."""
    ap = argparse.ArgumentParser(prog="lcsm", description="lcsm-compile: exact near-linear LCSM inference")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="exact generation with a Hyena LM, checked, with a speed comparison")
    d.add_argument("--mixer", action="store_true", help="the online engine alone vs the lazy baseline")
    d.add_argument("--layers", type=int, default=4)
    d.add_argument("--d-model", type=int, default=256)
    d.add_argument("--batch", type=int, default=1)
    d.add_argument("--prompt", type=int, default=64, help="prompt tokens (--mixer: prompt positions)")
    d.add_argument("--new-tokens", type=int, default=2048)
    d.add_argument("--channels", type=int, default=1024, help="--mixer: channels")
    d.add_argument("--length", type=int, default=8192, help="--mixer: positions")
    d.add_argument("--no-progress", dest="progress", action="store_false")
    d.set_defaults(func=_demo)
    e = sub.add_parser("explain", help="what the compiler finds in the demo model")
    e.add_argument("--layers", type=int, default=2)
    e.add_argument("--d-model", type=int, default=64)
    e.set_defaults(func=_explain)
    b = sub.add_parser("bench", help="short mixer benchmark (full: benchmarks/mixer.py)")
    b.add_argument("--channels", type=int, default=256)
    b.add_argument("--min-log2", type=int, default=10)
    b.add_argument("--max-log2", type=int, default=12)
    b.set_defaults(func=_bench)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
