"""Prefill and decode tokens/s on CPU: telechat_ms (GRAPH_MODE, static KV cache) vs HF transformers
`generate` (with its dynamic cache) on the torch reference holding the same weights, in the same run.

Greedy, fixed number of new tokens (no early stop). Prints both and the ratio ours / HF (> 1: we are faster).
Not a test. Usage: python bench/decode.py [--layers 4 --hidden 512 --prompt 64 --new 64]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _ours(model, prompt, new_tokens):
    from telechat_ms.config.generation import GenerationConfig
    from telechat_ms.infer.generate import generate
    config = GenerationConfig(max_new_tokens=new_tokens, eos_token_id=[-1])        # never stops early
    generate(model, [prompt], config)                                              # warm-up: compiles
    result = generate(model, [prompt], config)
    return result.prefill_seconds, result.decode_seconds / max(result.decode_steps, 1), result.tokens[0]


def _hf(ref, prompt, new_tokens, repeat=2):
    import torch
    ids = torch.tensor([prompt])
    with torch.no_grad():
        ref(input_ids=ids)                                                         # warm-up
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
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--ffn", type=int, default=1536)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=64)
    args = parser.parse_args()

    import mindspore as ms
    import torch
    from telechat_ms import TelechatConfig
    from tests.reference.ms_loading import ms_model_from_hf_state
    from tests.reference.torch_telechat import build_reference, random_hf_state

    torch.set_num_threads(os.cpu_count() or 1)
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    seq = args.prompt + args.new
    config = dataclasses.replace(TelechatConfig.preset("tiny"), num_layers=args.layers, hidden_size=args.hidden,
                                 num_heads=args.heads, num_kv_heads=args.kv_heads, ffn_hidden_size=args.ffn,
                                 vocab_size=args.vocab, training_seqlen=seq, base_seqlen=seq, seq_length=seq)
    state = random_hf_state(config, seed=0, std=0.02)
    ours, ref = ms_model_from_hf_state(config, state), build_reference(config, state)
    ours.set_train(False)
    prompt = np.random.default_rng(0).integers(4, config.vocab_size, args.prompt).tolist()
    o_prefill, o_step, o_tokens = _ours(ours, prompt, args.new)
    h_prefill, h_step, h_tokens = _hf(ref, prompt, args.new)
    same = sum(a == b for a, b in zip(o_tokens, h_tokens))
    print(f"config: {args.layers} layers, hidden {args.hidden}, heads {args.heads}/{args.kv_heads} kv, ffn {args.ffn}, "
          f"vocab {args.vocab}; prompt {args.prompt}, {args.new} new tokens, greedy, fp32, batch 1, "
          f"{os.cpu_count()} CPU threads")
    print(f"{'phase':8} {'ours tok/s':>11} {'HF tok/s':>9} {'ratio':>7}")
    print(f"{'prefill':8} {args.prompt / o_prefill:11.1f} {args.prompt / h_prefill:9.1f} {h_prefill / o_prefill:6.2f}x")
    print(f"{'decode':8} {1 / o_step:11.1f} {1 / h_step:9.1f} {h_step / o_step:6.2f}x")
    print(f"greedy tokens identical to HF: {same}/{args.new}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
