"""Prefill and decode tokens/s on CPU: telechat_ms (GRAPH_MODE, static KV cache) vs HF transformers
`generate` (with its dynamic cache) on the torch reference holding the same weights, in the same run.

Greedy, fixed number of new tokens (no early stop). Prints both and the ratio ours / HF (> 1: we are faster).
Not a test. Usage: python bench/decode.py [--layers 4 --hidden 512 --prompt 64 --new 64]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from common import add_model_args, build_pair, machine_facts, round_medians, warn_if_busy


def _ours(model, prompt, config):
    from telechat_ms.infer.generate import generate
    result = generate(model, [prompt], config)
    return result.prefill_seconds, result.decode_seconds / max(result.decode_steps, 1), result.tokens[0]


def _hf(ref, prompt, new_tokens, repeat=2):
    import torch
    ids = torch.tensor([prompt])
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(repeat):
            ref(input_ids=ids, use_cache=True)
        prefill = (time.perf_counter() - start) / repeat
        start = time.perf_counter()
        out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=3, eos_token_id=None)
        total = time.perf_counter() - start
    return prefill, (total - prefill) / (new_tokens - 1), out[0, len(prompt):].tolist()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_model_args(parser)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternating generations of each side")
    args = parser.parse_args()

    from telechat_ms.config.generation import GenerationConfig
    config, ours, ref = build_pair(args, args.prompt + args.new)
    ours.set_train(False)
    prompt = np.random.default_rng(0).integers(4, config.vocab_size, args.prompt).tolist()
    gen = GenerationConfig(max_new_tokens=args.new, eos_token_id=[-1])              # never stops early
    _ours(ours, prompt, gen), _hf(ref, prompt, 2, repeat=1)                          # warm-up: ours compiles
    rounds = [(_ours(ours, prompt, gen), _hf(ref, prompt, args.new)) for _ in range(args.rounds)]
    o_tokens, h_tokens = rounds[-1][0][2], rounds[-1][1][2]
    same = sum(a == b for a, b in zip(o_tokens, h_tokens))
    print(machine_facts())
    print(f"config: {args.layers} layers, hidden {args.hidden}, heads {config.num_heads}/{config.num_kv_heads} kv, ffn {args.ffn}, "
          f"vocab {args.vocab}; prompt {args.prompt}, {args.new} new tokens, greedy, fp32, batch 1, "
          f"{os.cpu_count()} CPU threads; {args.rounds} alternating rounds")
    print(f"{'phase':8} {'ours tok/s':>11} {'HF tok/s':>9} {'ratio':>7} {'ratio min-max':>14}")
    for name, index, tokens in (("prefill", 0, args.prompt), ("decode", 1, 1)):
        o, h, low, high = round_medians([(r[0][index], r[1][index]) for r in rounds])
        print(f"{name:8} {tokens / o:11.1f} {tokens / h:9.1f} {h / o:6.2f}x {low:6.2f}-{high:.2f}x")
    print(f"greedy tokens identical to HF: {same}/{args.new}")
    warn_if_busy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
