"""The README's "Use it" section as a runnable script: compile, explain, generate, stream, resume.

    python examples/quickstart.py [--new-tokens 8] [--prompt-len 16] [--batch 2] [--seed 0]

Every result is checked against the eager model (for generation: the naive loop that runs the
full forward for every new token); a failed check raises ``AssertionError`` (exit status 1).
``main`` returns what it measured, for ``tests/test_examples.py``.
"""

from __future__ import annotations

import argparse
import time

import torch

import lcsm_compile
from lcsm_compile.models import HyenaLM

RTOL = 1e-4  # fp32: errors are relative to the largest |logit|


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def check(ok: bool, what: str) -> None:
    print(("  ok    " if ok else "  FAIL  ") + what)
    if not ok:
        raise AssertionError(f"quickstart check failed: {what}")


@torch.no_grad()
def naive_greedy(model: torch.nn.Module, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding the slow way: the full forward over the whole sequence for every token."""
    ids = prompt
    for _ in range(n):
        nxt = model(ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--new-tokens", type=int, default=8, help="tokens to generate / positions to step")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    N, P, B = args.new_tokens, args.prompt_len, args.batch
    if N < 2 or P < 1 or B < 1:
        ap.error("need --new-tokens >= 2, --prompt-len >= 1, --batch >= 1")
    t_start = time.perf_counter()
    res: dict = {}

    torch.manual_seed(args.seed)
    model = HyenaLM(vocab=256, d_model=64, n_layers=2, max_len=1024).eval()
    prompt = torch.randint(0, 256, (B, P))
    with torch.no_grad():
        eager = model(prompt)

    # 1. torch.compile: the full-sequence forward with the long convolutions rewritten
    print(f"1. torch.compile(model, backend='lcsm') on a [{B}, {P}] prompt")
    fast = torch.compile(model, backend="lcsm")
    with torch.no_grad():
        res["compile_err"] = rel_err(fast(prompt), eager)
    check(res["compile_err"] <= RTOL, f"compiled forward == eager (rel err {res['compile_err']:.1e})")

    # 2. explain: what the front end found
    print("2. lcsm_compile.explain(model, prompt)")
    rep = lcsm_compile.explain(model, prompt)
    print(rep)
    res.update(streamable=rep.streamable, n_long=len(rep.long_convs), n_short=len(rep.short_convs))
    check(rep.streamable and not rep.refusals, "the model is streamable, no refusals")
    check((res["n_long"], res["n_short"]) == (2, 2),
          f"one long and one short conv per layer: found {res['n_long']} long, {res['n_short']} short")

    # 3. generation: greedy (exact) and sampled
    print(f"3. lcsm_compile.generate: {N} new tokens")
    ids = lcsm_compile.generate(model, prompt, max_new_tokens=N)
    ref = naive_greedy(model, prompt, N)
    res["greedy_equal"] = torch.equal(ids, ref)
    check(res["greedy_equal"], f"greedy ids {tuple(ids.shape)} == the naive argmax loop over the full forward")
    sampled = [lcsm_compile.generate(model, prompt, max_new_tokens=N, do_sample=True, temperature=0.8, top_k=50,
                                     generator=torch.Generator().manual_seed(args.seed)) for _ in range(2)]
    s = sampled[0]
    res["sampled_ok"] = (s.shape == (B, P + N) and torch.equal(s[:, :P], prompt)
                         and int(s.min()) >= 0 and int(s.max()) < 256)
    res["sampled_reproducible"] = torch.equal(sampled[0], sampled[1])
    check(res["sampled_ok"], f"sampled ids {tuple(s.shape)}: the prompt, then {N} tokens in the vocabulary")
    check(res["sampled_reproducible"], "sampling with the same generator seed gives the same ids")
    print(f"      greedy : {ids[0, P:].tolist()}\n      sampled: {s[0, P:].tolist()}")

    # 4. a session: prefill, then one position per step (teacher forcing on the greedy ids)
    print(f"4. lcsm_compile.session: prefill {P} positions, step {N}")
    with torch.no_grad():
        full = model(ids)                                     # [B, P + N, 256]
    sess = lcsm_compile.session(model, example=prompt, max_len=P + N)
    logits = sess.prefill(prompt)
    res["prefill_err"] = rel_err(logits, full[:, :P])
    check(res["prefill_err"] <= RTOL, f"prefill == model(prompt) (rel err {res['prefill_err']:.1e})")
    half = N // 2
    step_errs = []
    for t in range(P, P + half):
        out = sess.step(ids[:, t:t + 1])                      # [B, 1, 256]
        step_errs.append(rel_err(out[:, 0], full[:, t]))
    # 5. pause here, finish, then resume a fresh session from the saved state and finish again
    state = sess.state_dict()
    first = [sess.step(ids[:, t:t + 1]) for t in range(P + half, P + N)]
    step_errs += [rel_err(o[:, 0], full[:, t]) for o, t in zip(first, range(P + half, P + N))]
    res["step_err"] = max(step_errs)
    check(res["step_err"] <= RTOL, f"each step == model(all ids)[:, t] (max rel err {res['step_err']:.1e})")

    print(f"5. state_dict at position {P + half}, load_state_dict into a new session, step {N - half}")
    sess2 = lcsm_compile.session(model, example=prompt, max_len=P + N)
    sess2.load_state_dict(state)
    again = [sess2.step(ids[:, t:t + 1]) for t in range(P + half, P + N)]
    res["resume_err"] = max(rel_err(o[:, 0], full[:, t]) for o, t in zip(again, range(P + half, P + N)))
    res["resume_vs_first"] = max(rel_err(a, b) for a, b in zip(again, first))
    check(res["resume_err"] <= RTOL, f"resumed steps == model(all ids)[:, t] (max rel err {res['resume_err']:.1e})")
    check(res["resume_vs_first"] <= RTOL,
          f"resumed steps == the uninterrupted ones (max rel diff {res['resume_vs_first']:.1e})")

    res["seconds"] = time.perf_counter() - t_start
    print(f"all checks passed in {res['seconds']:.1f} s")
    return res


if __name__ == "__main__":
    main()
