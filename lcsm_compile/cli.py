"""The ``lcsm`` command line tool.

``lcsm demo``          exact generation with a Hyena LM: progress bar, exactness check, speed
                       side by side with recomputing the forward per token.
``lcsm demo --mixer``  exactness and speed of the online engine alone against the lazy baseline.
``lcsm explain``       what the compiler finds in the demo model (long/short convs, groups);
                       ``lcsm explain MODULE:FACTORY``: in your model (``FACTORY()`` returns
                       ``(model, example_input)``).
``lcsm inspect MODULE:FACTORY``  the streaming program made of a model: rewritten prefill and
                       step programs as code, groups, schedule parameters, kernels; ``--dot OUT``
                       (the rewritten graph, convolutions highlighted) and ``--tiling OUT.png``
                       (which tile computes which (input, output) pair, and when).
``lcsm bench``         a short mixer benchmark table (the full ones are in ``benchmarks/``).

A target is ``MODULE:FACTORY`` (``MODULE`` importable from the current directory, or a file
``path/to/file.py``) or, later, an exported ``FILE.lcsm`` artifact. A wrong target prints one
line and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import statistics
import sys
import time
from typing import Any, Tuple

import torch


class CliError(Exception):
    """A wrong argument: ``main`` prints the message as one line and returns ``status``."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


def _demo(args: argparse.Namespace) -> int:
    """Generate with a Hyena LM on a streaming session; check it and compare speeds.

    The speed lines are per token, batch ``--batch``, all timed in this run one after the
    other: the streamed step (median over the teacher-forced check's steps); the best caching
    baseline (the same compiled step program with ``engine="lazy"`` / ``"eager"``: each long
    convolution computed from its cached inputs, O(t) per token, timed at the midpoint of the
    generation, where a step costs its average over the run); recomputing the full forward at
    that midpoint context. When this process got less than 80% of a core while timing (another
    process competing for it), a line says so: the ratios stay comparable, the times do not."""
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
    print(f"generated {N} tokens x {args.batch} in {dt:.1f} s ({N * args.batch / dt:,.0f} tok/s, prefill included)")
    # exactness: teacher-force the generated sequence and compare with one full forward
    with torch.no_grad():
        ref = logits_of(model(out))
    sess.reset()
    got = [logits_of(sess.prefill(out[:, :P]))]
    steps, cpu = [], 0.0
    for t in range(P, out.shape[1]):
        c0, w0 = time.process_time(), time.perf_counter()
        got.append(logits_of(sess.step(out[:, t:t + 1])))
        steps.append(time.perf_counter() - w0)
        cpu += time.process_time() - c0
    got = torch.cat(got, 1)
    err = ((got - ref).abs().max() / ref.abs().max()).item()
    print(f"exactness: max |streamed - full forward| / max |logits| over all {out.shape[1]} positions = {err:.1e}")
    ours = statistics.median(steps)
    mid = P + N // 2
    base = {name: _baseline_step(model, out, mid, L, name) for name in ("lazy", "eager")}
    best = min(base, key=base.get)
    with torch.no_grad():
        t_re = min(_timeit(lambda: model(out[:, :mid + 1])) for _ in range(2))
    print(f"speed per token (batch {args.batch}): lcsm {ours * 1e3:.2f} ms (median step); "
          f"best caching baseline ({best}, at context {mid}, its average) {base[best] * 1e3:.2f} ms: "
          f"{base[best] / ours:.1f}x; recomputing the forward at context {mid} {t_re * 1e3:.1f} ms: "
          f"{t_re / ours:.0f}x")
    share = cpu / max(sum(steps), 1e-9) / max(1, torch.get_num_threads())
    if share < 0.8:
        print(f"note: the machine is busy (this process got {share:.0%} of its threads' CPU while timing): "
              f"every row was timed in this run, so the ratios compare; the times are inflated")
    ok = err < 1e-4
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


def _baseline_step(model, ids: torch.Tensor, at: int, max_len: int, engine: str, n: int = 8) -> float:
    """Median seconds of ``n`` steps of a caching-baseline session from position ``at``."""
    from .api import session

    sess = session(model, ids[:, :at], max_len=max_len, engine=engine)
    sess.prefill(ids[:, :at])
    ts = []
    for t in range(at, min(at + n, ids.shape[1])):
        t0 = time.perf_counter()
        sess.step(ids[:, t:t + 1])
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) if ts else float("nan")


def _timeit(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- targets
def load_target(spec: str) -> Tuple[Any, torch.Tensor]:
    """``(model, example)`` from a target ``MODULE:FACTORY`` (module doc); raises
    :class:`CliError` with one line for anything wrong. ``FILE.lcsm`` goes to
    :func:`load_artifact`."""
    if spec.endswith(".lcsm"):
        raise CliError(f"{spec}: an artifact is not a model factory here (lcsm explain/inspect take it)")
    mod_name, sep, fn_name = spec.rpartition(":")
    if not sep or not mod_name or not fn_name:
        raise CliError(f"expected MODULE:FACTORY (e.g. mypkg.models:make_model) or FILE.lcsm, got {spec!r}")
    module = _import(mod_name)
    obj: Any = module
    for part in fn_name.split("."):
        if not hasattr(obj, part):
            raise CliError(f"module {mod_name!r} has no attribute {fn_name!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CliError(f"{spec} is not callable (a factory returning (model, example_input) is expected)")
    try:
        out = obj()
    except Exception as e:  # noqa: BLE001 - the user's code: one line, no traceback
        raise CliError(f"{spec}() raised {type(e).__name__}: {_one_line(e)}") from None
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise CliError(f"{spec}() must return (model, example_input), got {_kind(out)}")
    model, example = out
    if not callable(model):
        raise CliError(f"{spec}() must return (model, example_input): the model is {_kind(model)}, not callable")
    if not isinstance(example, torch.Tensor) or example.dim() < 2:
        raise CliError(f"{spec}() must return (model, example_input) with example_input a [B, L] or "
                       f"[B, L, Din] tensor, got {_kind(example)}")
    if isinstance(model, torch.nn.Module):
        model.eval()
    return model, example


def load_artifact(path: str) -> Any:
    """A ``.lcsm`` artifact (:func:`lcsm_compile.load`); :class:`CliError` with one line when the
    file is missing or not a readable artifact."""
    from .artifact import load
    from .errors import LcsmError

    try:
        return load(path)
    except LcsmError as e:
        raise CliError(_one_line(e)) from None


def _import(mod_name: str):
    """Import ``mod_name`` (a dotted module, found from the current directory too, or a
    ``.py`` file); :class:`CliError` with one line when that fails."""
    if mod_name.endswith(".py"):
        if not os.path.isfile(mod_name):
            raise CliError(f"cannot import {mod_name!r}: no such file")
        name = "_lcsm_target_" + os.path.splitext(os.path.basename(mod_name))[0]
        spec = importlib.util.spec_from_file_location(name, mod_name)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001
            sys.modules.pop(name, None)
            raise CliError(f"importing {mod_name!r} failed: {type(e).__name__}: {_one_line(e)}") from None
        return module
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules of the current directory
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise CliError(f"cannot import module {mod_name!r}: {_one_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - an error inside the user's module
        raise CliError(f"importing {mod_name!r} failed: {type(e).__name__}: {_one_line(e)}") from None


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _kind(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)} items"
    return f"{type(x).__name__}"


def _power_of_two(name: str, v):
    if v is not None and (v < 1 or v & (v - 1)):
        raise CliError(f"{name} must be a power of two >= 1, got {v}")


# ----------------------------------------------------------------------------- explain, inspect
def _explain(args: argparse.Namespace) -> int:
    """Print what the compiler finds in a model (the demo model without a target)."""
    from .api import explain

    if args.target is not None and args.target.endswith(".lcsm"):
        print(load_artifact(args.target).explain())
        return 0
    if args.target is None:
        from .models import HyenaLM

        torch.manual_seed(0)
        model = HyenaLM(vocab=256, d_model=args.d_model, n_layers=args.layers, max_len=1024).eval()
        example = torch.randint(0, 256, (1, 16))
    else:
        model, example = load_target(args.target)
    opts = {"max_len": args.max_len} if args.max_len is not None else {}
    print(explain(model, example, **opts))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    """Build a streaming session for a target and print what it is made of; pictures."""
    from .api import session
    from .errors import LcsmError
    from .inspection import inspect_report, mixer_kinds, tiling_args

    if args.target.endswith(".lcsm"):
        return _inspect_artifact(args)
    model, example = load_target(args.target)
    if args.max_len is not None and args.max_len < 1:
        raise CliError(f"--max-len must be >= 1, got {args.max_len}")
    for name in ("block", "delay_from", "fft_from"):
        _power_of_two("--" + name.replace("_", "-"), getattr(args, name))
    if args.block is not None and args.delay_from is not None and args.delay_from < args.block:
        raise CliError(f"--delay-from must be >= --block, got {args.delay_from} < {args.block}")
    P = example.shape[1]
    max_len = args.max_len if args.max_len is not None else max(256, 2 * P)
    eng = {k: getattr(args, k) for k in ("block", "delay_from", "fft_from") if getattr(args, k) is not None}
    try:
        sess = session(model, example, max_len=max_len, engine_options=eng or None)
    except LcsmError as e:
        raise CliError(f"{args.target}: {type(e).__name__}: {_one_line(e)}", status=1) from None
    print(inspect_report(sess, title=f"lcsm inspect {args.target}"), end="")
    status = 0
    if args.dot:
        from .visualize import write_dot

        plan = sess.program.plan
        gm = {"rewritten": plan.lowered.gm, "prefill": plan.prefill_gm, "step": plan.step_gm}[args.dot_graph]
        msg = write_dot(gm, args.dot, title=f"{args.target}: {args.dot_graph} graph", mixers=mixer_kinds(plan))
        print(f"--dot: {msg}")
    if args.tiling:
        from .visualize import tiling_figure

        targs = tiling_args(sess, prefill=min(P, max_len), group=args.group)
        if targs is None:
            print(f"--tiling: group {args.group} has no online long-convolution engine: no tiling to draw",
                  file=sys.stderr)
            status = 1
        else:
            try:
                tiling_figure(path=args.tiling, **targs)
            except LcsmError as e:  # matplotlib missing
                print(f"--tiling: {_one_line(e)}", file=sys.stderr)
                return 1
            print(f"--tiling: wrote {args.tiling} (group {args.group}: " +
                  ", ".join(f"{k}={v}" for k, v in targs.items()) + ")")
    return status


def _inspect_artifact(args: argparse.Namespace) -> int:
    """``lcsm inspect FILE.lcsm``: what the artifact holds, its programs as code, pictures."""
    art = load_artifact(args.target)
    print(art.explain())
    B = art.batch_sizes[0]
    entry = art.doc["programs"][str(B)]
    for name in sorted(entry["programs"]):
        gm = art._program(B, name)
        print(f"\n== {name} program (batch {B}, {entry['programs'][name]['file']}) ==")
        print(gm.code.strip())
    if args.dot:
        from .visualize import write_dot

        gm = art._program(B, "step" if args.dot_graph == "step" else "prefill")
        print(f"--dot: {write_dot(gm, args.dot, title=f'{args.target}: {args.dot_graph} program')}")
    if args.tiling:
        from .visualize import tiling_figure

        groups = entry["groups"]
        if not 0 <= args.group < len(groups):
            raise CliError(f"--group {args.group}: the artifact has {len(groups)} group(s)")
        block, fft_from, delay_from = groups[args.group][:3]
        L = min(art.max_len, args.max_len or art.max_len, 512)
        tiling_figure(max_len=L, prefill=0, block=block, delay_from=delay_from, fft_from=fft_from, path=args.tiling)
        print(f"--tiling: wrote {args.tiling} (group {args.group}, first {L} positions)")
    return 0


def _export(args: argparse.Namespace) -> int:
    """``lcsm export MODULE:FACTORY -o FILE``."""
    from .artifact import export
    from .errors import LcsmError

    model, example = load_target(args.target)
    try:
        sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else None
    except ValueError:
        raise CliError(f"--batch-sizes must be comma-separated ints, got {args.batch_sizes!r}") from None
    if args.max_len < 1:
        raise CliError(f"--max-len must be >= 1, got {args.max_len}")
    try:
        export(model, example, max_len=args.max_len, path=args.output, batch_sizes=sizes, progress=True,
               aot=args.aot)
    except LcsmError as e:
        raise CliError(f"{args.target}: {type(e).__name__}: {_one_line(e)}", status=1) from None
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 1e6:.1f} MB)")
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
    e = sub.add_parser("explain", help="what the compiler finds in a model (default: the demo model)",
                       description="Print what the compiler finds in a model: long and short convolutions "
                                   "with their source lines, cross-layer groups, refusals.")
    e.add_argument("target", nargs="?", metavar="MODULE:FACTORY|FILE.lcsm",
                   help="FACTORY() in MODULE returns (model, example_input), or an exported artifact; "
                        "default: the demo Hyena LM")
    e.add_argument("--max-len", type=int, default=None, help="the longest length to plan for")
    e.add_argument("--layers", type=int, default=2, help="demo model: layers")
    e.add_argument("--d-model", type=int, default=64, help="demo model: width")
    e.set_defaults(func=_explain)
    i = sub.add_parser("inspect", help="the streaming program of a model: graphs, groups, schedule, pictures",
                       description="Build a streaming session for a model and print its rewritten prefill and "
                                   "step programs as code, the cross-layer groups, each group's schedule "
                                   "parameters and kernels. --dot and --tiling draw pictures.")
    i.add_argument("target", metavar="TARGET",
                   help="MODULE:FACTORY (FACTORY() returns (model, example_input)) or FILE.lcsm (an exported artifact)")
    i.add_argument("--max-len", type=int, default=None,
                   help="the session's max_len (default: max(256, 2 x the example's length))")
    i.add_argument("--dot", metavar="OUT", default=None,
                   help="write a graph with the convolutions highlighted: OUT.svg/.png/.pdf rendered by graphviz "
                        "`dot` when installed (else OUT.dot is written and the tool says so), OUT.dot as text")
    i.add_argument("--dot-graph", choices=("rewritten", "prefill", "step"), default="rewritten",
                   help="which graph --dot draws (default: the rewritten full-sequence graph)")
    i.add_argument("--tiling", metavar="OUT.png", default=None,
                   help="write a matplotlib picture of which tile covers which (input, output) pair and at "
                        "which step it is computed (.png/.svg/.pdf; needs matplotlib)")
    i.add_argument("--group", type=int, default=0, help="the group whose schedule --tiling draws (default 0)")
    i.add_argument("--block", type=int, default=None, help="engine option: red-cell block (power of two)")
    i.add_argument("--delay-from", type=int, default=None,
                   help="engine option: tiles of this size and larger are delayed (power of two >= block)")
    i.add_argument("--fft-from", type=int, default=None, help="engine option: smallest FFT tile (power of two)")
    i.set_defaults(func=_inspect)
    x = sub.add_parser("export", help="write a model's streaming programs as one .lcsm file",
                       description="Export the prefill and step programs (torch.export, lcsm ops as nodes), "
                                   "the constants (safetensors) and the plan to one file that "
                                   "lcsm_compile.load() reads without the model's code.")
    x.add_argument("target", metavar="MODULE:FACTORY", help="FACTORY() in MODULE returns (model, example_input)")
    x.add_argument("-o", "--output", required=True, help="the .lcsm file to write")
    x.add_argument("--max-len", type=int, default=8192, help="positions a loaded session can hold (default 8192)")
    x.add_argument("--batch-sizes", default=None, help="comma-separated batch sizes (default: the example's)")
    x.add_argument("--aot", action="store_true",
                   help="also compile the step programs ahead of time with AOTInductor (for this platform and torch)")
    x.set_defaults(func=_export)
    b = sub.add_parser("bench", help="short mixer benchmark (full: benchmarks/mixer.py)")
    b.add_argument("--channels", type=int, default=256)
    b.add_argument("--min-log2", type=int, default=10)
    b.add_argument("--max-log2", type=int, default=12)
    b.set_defaults(func=_bench)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except CliError as e:
        print(f"lcsm {args.cmd}: error: {e}", file=sys.stderr)
        return e.status


if __name__ == "__main__":
    sys.exit(main())
