"""Tiny HF-format TeleChat2 checkpoints for the converter tests (and bench/convert.py).

Key names and shapes are written out here from the spec (§3, §4.3), independently of
telechat_ms.convert.names, so a wrong name table cannot agree with itself. Weights are random with
non-trivial norms and biases; layouts: one safetensors file, 3 shards + index, pytorch_model.bin, 3 .bin
shards + index. torch is used (as HF does) so bf16 checkpoints are real bf16 files.
"""
from __future__ import annotations

import json
import os

import numpy as np

LAYOUTS = ("single", "sharded", "bin", "bin_sharded")


def hf_shapes(config, router_key: str = "router") -> dict[str, tuple[int, ...]]:
    """Every HF key of a TeleChat2 model and its shape, in model order."""
    h, f, v = config.hidden_size, config.ffn_hidden_size, config.vocab_size
    q, kv = config.num_heads * config.head_dim, 2 * config.num_kv_heads * config.head_dim
    shapes = {"transformer.word_embeddings.weight": (v, h)}
    if config.embed_layernorm:
        shapes["transformer.word_embeddings_layernorm.weight"] = (h,)
    for i in range(config.num_layers):
        p = f"transformer.h.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "self_attention.query.weight": (q, h),
                       p + "self_attention.key_value.weight": (kv, h), p + "self_attention.dense.weight": (h, q),
                       p + "self_attention.dense.bias": (h,), p + "post_attention_layernorm.weight": (h,)})
        if config.num_experts:
            shapes[p + f"mlp.{router_key}.weight"] = (config.num_experts, h)
            experts = [f"mlp.local_experts.{e}." for e in range(config.num_experts)]
        else:
            experts = ["mlp."]
        for e in experts:
            shapes.update({p + e + "gate_proj.weight": (f, h), p + e + "up_proj.weight": (f, h),
                           p + e + "down_proj.weight": (h, f), p + e + "down_proj.bias": (h,)})
    shapes["transformer.ln_f.weight"] = (h,)
    shapes["lm_head.weight"] = (v, h)
    return shapes


def random_state(config, seed: int = 0, std: float = 0.08, router_key: str = "router") -> dict[str, np.ndarray]:
    """fp32 weights: norms around 1, every bias nonzero."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in hf_shapes(config, router_key).items():
        if key.endswith("layernorm.weight") or key.endswith("ln_f.weight"):
            state[key] = (1.0 + rng.normal(0.0, 0.1, shape)).astype(np.float32)
        else:
            state[key] = rng.normal(0.0, 1.0 if "word_embeddings" in key else std, shape).astype(np.float32)
    return state


def _shards(keys: list[str], count: int) -> list[list[str]]:
    bounds = np.linspace(0, len(keys), count + 1).astype(int)
    return [keys[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def write_side_files(directory: str, config) -> None:
    """config.json plus stand-in tokenizer / generation files (copied verbatim by the converters)."""
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as fh:
        json.dump(config.to_hf_config(), fh, indent=2)
    with open(os.path.join(directory, "tokenizer.model"), "wb") as fh:
        fh.write(b"\x00fake sentencepiece model\xff")
    for name, data in (("tokenizer_config.json", {"tokenizer_class": "TelechatTokenizer"}),
                       ("generation_config.json", {"bos_token_id": 1, "eos_token_id": 2})):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as fh:
            json.dump(data, fh)


def write_hf_checkpoint(directory: str, config, layout: str = "single", dtype: str = "float32",
                        state: dict[str, np.ndarray] | None = None, seed: int = 0, router_key: str = "router"):
    """Write an HF checkpoint directory; returns the state as torch tensors of `dtype` (what is on disk)."""
    import torch
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    write_side_files(directory, config)
    state = random_state(config, seed, router_key=router_key) if state is None else state
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    tensors = {k: t.to(getattr(torch, dtype)) if t.is_floating_point() else t for k, t in tensors.items()}
    binary = layout.startswith("bin")
    if layout in ("single", "bin"):
        if binary:
            torch.save(tensors, os.path.join(directory, "pytorch_model.bin"))
        else:
            save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
        return tensors
    groups = _shards(list(tensors), 3)
    weight_map = {}
    for n, keys in enumerate(groups, 1):
        name = f"pytorch_model-{n:05d}-of-00003.bin" if binary else f"model-{n:05d}-of-00003.safetensors"
        part = {k: tensors[k] for k in keys}
        if binary:
            torch.save(part, os.path.join(directory, name))
        else:
            save_file(part, os.path.join(directory, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in keys})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = "pytorch_model.bin.index.json" if binary else "model.safetensors.index.json"
    with open(os.path.join(directory, index), "w", encoding="utf-8") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
    return tensors


def load_safetensors_dir(directory: str):
    """{key: torch tensor} of every shard an index names (the way transformers reads a directory)."""
    from safetensors.torch import load_file

    with open(os.path.join(directory, "model.safetensors.index.json"), encoding="utf-8") as fh:
        index = json.load(fh)
    out = {}
    for name in sorted(set(index["weight_map"].values())):
        out.update(load_file(os.path.join(directory, name)))
    return out, index
