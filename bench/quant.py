"""Weight bytes and decode tokens/s of one model kept int4 / int8 (GPTQ, via hf2ms) vs its float weights, same
prompt, greedy. A CPU proxy: on CPU the quantized layer dequantizes every projection at every step (plain ops),
so its decode is slower than float here; the weight-memory ratio is the number that carries to Ascend, where
WeightQuantBatchMatmul reads the int4 / int8 weights directly. Prints the machine (cores, load) first.

Not a test; do not run it while other jobs load the machine. Usage:
  python bench/quant.py [--layers 4 --hidden 512 --heads 8 --kv-heads 8 --ffn 1536 --vocab 8192
                         --group-size 128 --prompt 32 --new 32]
  python bench/quant.py --tiny        # seconds: a 2-layer, hidden 64 model (checks the script works)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

import numpy as np

from common import add_model_args

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _checkpoints(root: str, config, group_size: int) -> dict[str, str]:
    """float (fp16 HF) plus GPTQ int8 and int4 act-order checkpoints of the same weights, converted by hf2ms."""
    from tests import quant_packer as qp
    from telechat_ms.convert import convert_hf_to_ms
    out = {}
    state, linears = qp.llama_state(config, seed=0)
    qp.write_checkpoint(os.path.join(root, "float_hf"), config.to_hf_config(), state, {}, where="none")
    convert_hf_to_ms(os.path.join(root, "float_hf"), os.path.join(root, "float"))
    out["float16"] = os.path.join(root, "float")
    for bits in (8, 4):
        hf = os.path.join(root, f"int{bits}_hf")
        quantized, _ = qp.quantize_state(state, linears, bits, group_size, True, False, "gptq")
        qp.write_checkpoint(hf, config.to_hf_config(), quantized, qp.quant_config("gptq", bits, group_size, True,
                                                                                  False))
        convert_hf_to_ms(hf, os.path.join(root, f"int{bits}"))
        out[f"int{bits}"] = os.path.join(root, f"int{bits}")
    return out


def _weight_bytes(path: str) -> tuple[int, int]:
    """(all weight bytes, bytes of the decoder projections) of a converted directory."""
    from telechat_ms.io.sources import open_ms
    projections = ("attention.wq", "attention.wk_v", "attention.wo", "feed_forward.w1", "feed_forward.w2",
                   "feed_forward.w3")
    with open_ms(path) as source:
        total = sum(info.nbytes for info in source.infos.values())
        proj = sum(info.nbytes for key, info in source.infos.items() if any(p in key for p in projections))
    return total, proj


def _decode(path: str, prompt: list[int], new_tokens: int) -> tuple[float, list[int]]:
    from telechat_ms.config.generation import GenerationConfig
    from telechat_ms.infer.generate import generate
    from telechat_ms.quant.cells import load_model
    model = load_model(path, param_dtype="float32")
    model.set_train(False)
    config = GenerationConfig(max_new_tokens=new_tokens, eos_token_id=[-1])       # never stops early
    generate(model, [prompt], config)                                             # warm-up: compiles
    result = generate(model, [prompt], config)
    return result.decode_steps / max(result.decode_seconds, 1e-9), result.tokens[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--tiny", action="store_true", help="2 layers, hidden 64: checks the script in seconds")
    args = parser.parse_args()
    if args.tiny:
        args.layers, args.hidden, args.heads, args.kv_heads, args.ffn, args.vocab = 2, 64, 4, 2, 128, 512
        args.group_size, args.prompt, args.new = 32, 8, 8

    import mindspore as ms
    from telechat_ms import TelechatConfig
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    seq = args.prompt + args.new
    config = dataclasses.replace(TelechatConfig.preset("tiny_llama2"), num_layers=args.layers,
                                 hidden_size=args.hidden, num_heads=args.heads, num_kv_heads=args.kv_heads or args.heads,
                                 ffn_hidden_size=args.ffn, vocab_size=args.vocab, seq_length=seq, training_seqlen=seq,
                                 base_seqlen=seq)
    print(f"machine: {os.cpu_count()} CPU cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"config: {config.num_layers} layers, hidden {config.hidden_size}, heads {config.num_heads}/"
          f"{config.num_kv_heads} kv, ffn {config.ffn_hidden_size}, vocab {config.vocab_size}; GPTQ group "
          f"{args.group_size}, act order; prompt {args.prompt}, {args.new} new tokens, greedy, batch 1, "
          "fp32 compute, CPU plain path")
    prompt = np.random.default_rng(0).integers(4, config.vocab_size, args.prompt).tolist()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench_quant_") as root:
        start = time.perf_counter()
        paths = _checkpoints(root, config, args.group_size)
        print(f"checkpoints written and converted in {time.perf_counter() - start:.1f} s")
        for name, path in paths.items():
            rows[name] = (*_weight_bytes(path), *_decode(path, prompt, args.new))
    base_total, base_proj, base_rate, _ = rows["float16"]
    print(f"{'weights':8} {'all MiB':>8} {'proj MiB':>9} {'proj ratio':>10} {'decode tok/s':>13} {'speed ratio':>11}")
    for name, (total, proj, rate, _) in rows.items():
        print(f"{name:8} {total / 2**20:8.2f} {proj / 2**20:9.2f} {proj / base_proj:10.3f} {rate:13.1f} "
              f"{rate / base_rate:11.2f}")
    print("proj = the decoder projections (the quantized tensors incl. scales / offsets / perm); the float16 "
          "baseline holds the same weights unquantized")
    return 0


if __name__ == "__main__":
    sys.exit(main())
