"""Hugging Face ``generate()`` on an LCSM without a KV cache, made near-linear by the backend.

    python examples/hf_generate.py [--new-tokens 48] [--prompt-len 16] [--batch 2]

A small ``transformers.PreTrainedModel`` wraps the package's Hyena LM with ``use_cache=False``:
``generate()`` then calls ``forward`` on the whole prefix for every new token (O(L^2) overall).
Compiling that forward with ``backend="lcsm"`` makes each call run only the new position
through a streaming session (the calls stream: see ``docs/backend.md``); the tokens are
identical to the uncompiled model's, greedy and sampled. Needs ``pip install transformers``.
``main`` returns what it measured, for ``tests/test_examples.py``.
"""

from __future__ import annotations

import argparse
import time

import torch

try:
    from transformers import GenerationConfig, GenerationMixin, PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutput
except ImportError as e:  # pragma: no cover - the example needs transformers
    raise SystemExit(f"this example needs transformers: pip install transformers ({e})")

import lcsm_compile  # noqa: F401 - the "lcsm" backend (also found by entry point)
from lcsm_compile.backend import LcsmBackend
from lcsm_compile.models import HyenaLM


class HyenaConfig(PretrainedConfig):
    model_type = "tiny-hyena"

    def __init__(self, vocab_size=64, d_model=32, n_layers=2, max_len=1024, **kw):
        self.vocab_size, self.d_model, self.n_layers, self.max_len = vocab_size, d_model, n_layers, max_len
        super().__init__(**kw)


class HyenaForCausalLM(PreTrainedModel, GenerationMixin):
    """An LCSM as a Hugging Face causal LM without a cache: every call sees the whole prefix."""

    config_class = HyenaConfig

    def __init__(self, config: HyenaConfig):
        super().__init__(config)
        self.lm = HyenaLM(config.vocab_size, config.d_model, config.n_layers, config.max_len)
        self.post_init()

    def _init_weights(self, module):  # keep the LCSM's own initialisation
        pass

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return CausalLMOutput(logits=self.lm(input_ids))


def build(seed: int = 0, vocab: int = 64) -> HyenaForCausalLM:
    torch.manual_seed(seed)
    cfg = HyenaConfig(vocab_size=vocab, use_cache=False, pad_token_id=0, eos_token_id=None, bos_token_id=None)
    return HyenaForCausalLM(cfg).eval()


def generate(model, prompt, n, do_sample, seed):
    cfg = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=do_sample, use_cache=False,
                           top_k=0 if do_sample else None, pad_token_id=0, eos_token_id=None)
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=cfg)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args(argv)
    model = build()
    prompt = torch.randint(1, model.config.vocab_size, (args.batch, args.prompt_len))
    res = {}
    for do_sample in (False, True):
        t0 = time.perf_counter()
        ref = generate(model, prompt, args.new_tokens, do_sample, seed=1)
        t_ref = time.perf_counter() - t0
        fast = build()
        backend = LcsmBackend()  # its own reports
        fast.forward = torch.compile(fast.forward, backend=backend)
        t0 = time.perf_counter()
        got = generate(fast, prompt, args.new_tokens, do_sample, seed=1)
        t_fast = time.perf_counter() - t0
        same = torch.equal(ref, got)
        kind = "sampled" if do_sample else "greedy"
        streams = [r.streaming for r in backend.reports]
        print(f"{kind:8s} identical tokens: {same}   uncompiled {t_ref:.2f} s, backend='lcsm' {t_fast:.2f} s "
              f"(includes compiling)\n         {streams[-1] if streams else ''}")
        if not same:
            raise AssertionError(f"{kind}: the compiled model generated other tokens")
        res[kind] = {"identical": same, "streams": streams}
    return res


if __name__ == "__main__":
    main()
