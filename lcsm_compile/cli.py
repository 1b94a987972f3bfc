"""The ``lcsm`` command line tool.

``lcsm demo``   exactness and speed of the online engine against the lazy baseline.
``lcsm bench``  a short mixer benchmark table (the full one is ``benchmarks/mixer.py``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch


def _demo(args: argparse.Namespace) -> int:
    """Stream a random group of long convolutions with the engine and the lazy baseline."""
    from tqdm import tqdm

    from . import OnlineConv
    from .reference import LazyConv, causal_conv_fft

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
    from . import OnlineConv
    from .reference import EagerConv, LazyConv

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
    d = sub.add_parser("demo", help="exactness and speed of the online engine vs the lazy baseline")
    d.add_argument("--channels", type=int, default=1024)
    d.add_argument("--length", type=int, default=8192)
    d.add_argument("--prompt", type=int, default=512)
    d.add_argument("--no-progress", dest="progress", action="store_false")
    d.set_defaults(func=_demo)
    b = sub.add_parser("bench", help="short mixer benchmark (full: benchmarks/mixer.py)")
    b.add_argument("--channels", type=int, default=256)
    b.add_argument("--min-log2", type=int, default=10)
    b.add_argument("--max-log2", type=int, default=12)
    b.set_defaults(func=_bench)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
