"""Explaining and streaming a model you wrote yourself, in plain PyTorch.

    python examples/custom_model.py [--prompt-len 24] [--prefill 9] [--new-tokens 8] [--seed 0]
    lcsm inspect examples.custom_model:make --dot graph.svg --tiling tiling.png

``TinyHyena`` below knows nothing about lcsm-compile: a small Hyena-style language model
(input projection, short causal depthwise conv, an implicit long filter from an MLP over
positional features with an exponential decay, a causal FFT convolution of size 2L with a
skip term, gating, output projection, LM head). The script shows that

* ``lcsm_compile.explain`` finds its long and short convolutions (with this file's lines);
* a streaming session is exact: prefill part of a sequence, step the rest one position at a
  time, and every position equals the full forward (teacher forcing);
* ``lcsm_compile.generate`` (greedy) equals the naive argmax loop over the full forward;
* ``CircularLM``, the same mixer with a *circular* FFT convolution (``n = L``: position t sees
  the future), is refused: ``lcsm_compile.session`` raises ``UnsupportedModelError`` naming
  the op and the line of this file.

A failed check raises ``AssertionError`` (exit status 1); ``main`` returns what it measured.
"""

from __future__ import annotations

import argparse
import inspect
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import lcsm_compile

RTOL = 1e-4  # fp32: errors are relative to the largest |logit|


# --------------------------------------------------------------------------- the user's model
class PositionalFilter(nn.Module):
    """Implicit long filter: h[c, t] = MLP(features(t))[c] * exp(-rate_c * t / max_len)."""

    def __init__(self, channels: int, max_len: int, n_freqs: int = 4, hidden: int = 32):
        super().__init__()
        self.max_len = max_len
        self.register_buffer("freqs", torch.arange(1, n_freqs + 1, dtype=torch.float32))
        self.mlp = nn.Sequential(nn.Linear(1 + 2 * n_freqs, hidden), nn.SiLU(), nn.Linear(hidden, channels))
        self.log_rate = nn.Parameter(torch.linspace(math.log(2.0), math.log(60.0), channels))

    def forward(self, L: int) -> torch.Tensor:
        t = torch.arange(L, dtype=torch.float32, device=self.freqs.device)[:, None] / self.max_len  # [L, 1]
        feats = torch.cat([t, torch.sin(2 * math.pi * self.freqs * t), torch.cos(2 * math.pi * self.freqs * t)], -1)
        decay = torch.exp(-t * self.log_rate.exp())                                  # [L, C]
        return (self.mlp(feats) * decay).t()                                         # [C, L]


class CausalFFTConv(nn.Module):
    """y[b, c, t] = sum_{s <= t} u[b, c, s] h[c, t - s]: FFT of size 2L (zero padded), keep the first L."""

    def forward(self, u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:              # [B, C, L], [C, L]
        L = u.shape[-1]
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(h, n=2 * L), n=2 * L)
        return y[..., :L]


class HyenaMixer(nn.Module):
    def __init__(self, d: int, max_len: int, conv_cls: type = CausalFFTConv, short_k: int = 4):
        super().__init__()
        self.short_k = short_k
        self.in_proj = nn.Linear(d, 3 * d)
        self.short_w = nn.Parameter(torch.randn(3 * d, 1, short_k) / short_k)       # depthwise
        self.filter = PositionalFilter(d, max_len)
        self.long_conv = conv_cls()
        self.D = nn.Parameter(torch.randn(d))
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                               # [B, L, d]
        L = x.shape[1]
        z = self.in_proj(x).transpose(1, 2)                                           # [B, 3d, L]
        z = F.conv1d(F.pad(z, (self.short_k - 1, 0)), self.short_w, groups=z.shape[1])  # short causal conv
        q, k, v = z.chunk(3, dim=1)
        u = k * v
        y = self.long_conv(u, self.filter(L)) + u * self.D[:, None]                  # long conv + skip
        return self.out_proj((q * y).transpose(1, 2))                                 # gate, project


class TinyHyena(nn.Module):
    """ids [B, L] -> logits [B, L, vocab]; pre-norm residual blocks around ``HyenaMixer``."""

    conv_cls = CausalFFTConv

    def __init__(self, vocab: int = 128, d: int = 32, n_layers: int = 2, max_len: int = 256):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(n_layers))
        self.mixers = nn.ModuleList(HyenaMixer(d, max_len, self.conv_cls) for _ in range(n_layers))
        self.norm_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        for norm, mixer in zip(self.norms, self.mixers):
            x = x + mixer(norm(x))
        return self.head(self.norm_f(x))


# --------------------------------------------------------------------------- a model that is NOT causal
class CircularFFTConv(nn.Module):
    """A circular convolution: FFT of size L, no zero padding, so the end wraps around to the start."""

    def forward(self, u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        L = u.shape[-1]
        return torch.fft.irfft(torch.fft.rfft(u, n=L) * torch.fft.rfft(h, n=L), n=L)  # n = L: not causal


class CircularLM(TinyHyena):
    """``TinyHyena`` with a circular convolution (no zero padding): output t depends on inputs
    after t, so it cannot be generated one position at a time."""

    conv_cls = CircularFFTConv


def make(seed: int = 0):
    """``(model, example_input)`` for the command line: ``lcsm explain examples.custom_model:make``,
    ``lcsm inspect examples.custom_model:make --tiling tiling.png`` (docs/debugging.md)."""
    torch.manual_seed(seed)
    return TinyHyena().eval(), torch.randint(0, 128, (1, 16))


# --------------------------------------------------------------------------- the checks
def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def check(ok: bool, what: str) -> None:
    print(("  ok    " if ok else "  FAIL  ") + what)
    if not ok:
        raise AssertionError(f"custom_model check failed: {what}")


@torch.no_grad()
def naive_greedy(model: nn.Module, prompt: torch.Tensor, n: int) -> torch.Tensor:
    ids = prompt
    for _ in range(n):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompt-len", type=int, default=24, help="length of the teacher-forced sequence")
    ap.add_argument("--prefill", type=int, default=9, help="positions given to prefill; the rest are stepped")
    ap.add_argument("--new-tokens", type=int, default=8, help="tokens to generate")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    L, P, N, B = args.prompt_len, args.prefill, args.new_tokens, args.batch
    if not (0 <= P < L <= 256 and N >= 1 and B >= 1):
        ap.error("need 0 <= --prefill < --prompt-len <= 256, --new-tokens >= 1, --batch >= 1")
    t_start = time.perf_counter()
    res: dict = {}

    torch.manual_seed(args.seed)
    model = TinyHyena().eval()
    x = torch.randint(0, 128, (B, L))

    # 1. explain
    print("1. lcsm_compile.explain(TinyHyena(), ids)")
    rep = lcsm_compile.explain(model, x)
    print(rep)
    res.update(streamable=rep.streamable, n_long=len(rep.long_convs), n_short=len(rep.short_convs),
               long_sources=[r.source for r in rep.long_convs], short_sources=[r.source for r in rep.short_convs])
    check(rep.streamable and not rep.refusals, "streamable, no refusals")
    check((res["n_long"], res["n_short"]) == (2, 2),
          f"one long and one short conv per layer: found {res['n_long']} long, {res['n_short']} short")
    here = __file__.rsplit("/", 1)[-1]
    check(all(s and here in s for s in res["long_sources"] + res["short_sources"]),
          f"every conv is attributed to a line of {here}: {res['long_sources'] + res['short_sources']}")

    # 2. teacher forcing: prefill P positions, step the other L - P, compare with the full forward
    print(f"2. session: prefill {P} of {L} positions, step {L - P}, compare each with model(ids)")
    with torch.no_grad():
        full = model(x)
    sess = lcsm_compile.session(model, example=x, max_len=L)
    out = sess.prefill(x[:, :P])                                       # P may be 0
    errs = [rel_err(out, full[:, :P])] if P else []
    errs += [rel_err(sess.step(x[:, t:t + 1])[:, 0], full[:, t]) for t in range(P, L)]
    res["teacher_forcing_err"] = max(errs)
    res["positions_checked"] = out.shape[1] + L - P
    check(res["teacher_forcing_err"] <= RTOL,
          f"every position == model(ids)[:, t] (max rel err {res['teacher_forcing_err']:.1e}, rtol {RTOL:g})")

    # 3. generation
    print(f"3. lcsm_compile.generate: {N} greedy tokens after {L} prompt tokens")
    ids = lcsm_compile.generate(model, x, max_new_tokens=N)
    res["greedy_equal"] = torch.equal(ids, naive_greedy(model, x, N))
    check(res["greedy_equal"], f"greedy ids {tuple(ids.shape)} == the naive argmax loop over the full forward")

    # 4. a model that cannot be streamed: the error names the op and the line
    print("4. lcsm_compile.session(CircularLM(), ...): refused")
    torch.manual_seed(args.seed)
    bad = CircularLM().eval()
    err = None
    try:
        lcsm_compile.session(bad, example=x, max_len=L)
    except lcsm_compile.UnsupportedModelError as e:
        err = e
    check(err is not None, "session(CircularLM) raised UnsupportedModelError")
    print(f"      UnsupportedModelError: {err}")
    res.update(refused=True, refusal=str(err), refusal_op=err.op, refusal_source=err.source)
    src_file, _, line = (err.source or "").rpartition(":")
    lines, first = inspect.getsourcelines(CircularFFTConv.forward)
    res["refusal_line"] = int(line) if line.isdigit() else None
    res["refusal_code"] = lines[res["refusal_line"] - first].strip() if res["refusal_line"] else None
    check(bool(err.op) and err.op in str(err), f"the message names the op: {err.op}")
    check(src_file.endswith(here) and first <= (res["refusal_line"] or 0) < first + len(lines),
          f"the message names the line of CircularFFTConv.forward: {err.source}: {res['refusal_code']}")
    check("circular" in err.reason.lower(), f"the reason says why: {err.reason}")

    res["seconds"] = time.perf_counter() - t_start
    print(f"all checks passed in {res['seconds']:.1f} s")
    return res


if __name__ == "__main__":
    main()
