"""Write a randomly initialised tiny checkpoint in HF format (config.json, model.safetensors,
generation_config.json, tokenizer files) -- the starting point of the README demo. No torch needed.
Any family's preset works (e.g. --preset tiny_aquila2_gqa): the weights are laid out in that family's own HF
layout (its name table), config.json in its own naming.

usage: python scripts/make_tiny_hf_checkpoint.py OUT_DIR [--preset tiny] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from telechat_ms import TelechatConfig  # noqa: E402
from telechat_ms.convert.names import name_table  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def random_hf_weights(config, seed: int) -> dict[str, np.ndarray]:
    """HF-named fp32 weights with the HF init (normal(0, initializer_range), zero biases, unit norms)."""
    rng = np.random.default_rng(seed)
    out = {}
    for entry in name_table(config):
        for key, shape in zip(entry.hf_keys, entry.hf_shapes):
            if key.endswith("norm.weight") or key.rsplit(".", 2)[-2].startswith("ln_"):
                out[key] = np.ones(shape, np.float32)
            elif key.endswith(".bias"):
                out[key] = np.zeros(shape, np.float32)
            else:
                out[key] = rng.normal(0.0, config.initializer_range, shape).astype(np.float32)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--preset", default="tiny", help="any family's preset (default: tiny, TeleChat2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seq-length", type=int, default=256)
    args = parser.parse_args(argv)
    if os.path.exists(args.out_dir):
        print(f"error: {args.out_dir} exists; remove it or choose another directory", file=sys.stderr)
        return 2
    # tiny presets use a 32-token training_seqlen to exercise NTK in tests; the demo model trains on
    # 256-token rows, so give it a matching context (NTK stays off, as for real models at <= 8192)
    config = TelechatConfig.preset(args.preset, training_seqlen=args.seq_length, base_seqlen=args.seq_length,
                                   seq_length=args.seq_length)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(os.path.abspath(args.out_dir)))
    try:
        save_file(random_hf_weights(config, args.seed), os.path.join(tmp, "model.safetensors"),
                  metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as fh:
            json.dump(config.to_hf_config(), fh, indent=2)
        with open(os.path.join(tmp, "generation_config.json"), "w", encoding="utf-8") as fh:
            json.dump({"max_new_tokens": 64, "do_sample": False, "eos_token_id": 2, "pad_token_id": 3,
                       "bos_token_id": 1, "repetition_penalty": 1.0}, fh, indent=2)
        shutil.copy(os.path.join(REPO, "data", "tiny_tokenizer.model"), os.path.join(tmp, "tokenizer.model"))
        os.replace(tmp, args.out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote tiny HF checkpoint ({config.num_parameters() / 1e6:.2f}M params) to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
