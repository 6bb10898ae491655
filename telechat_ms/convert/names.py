"""The one HF <-> telechat_ms name table, used in both directions, plus the layout helpers.

Our parameter names follow the official MindSpore port (spec §5.1) so its checkpoints load almost as-is.
Dimensions always come from the TelechatConfig (built from config.json), never from constants here.

An entry maps one of our tensors to one or more HF tensors:
  * plain: one HF key <-> one MS key, same layout (torch Linear (out, in) == our Linear weight layout);
  * stack: E HF keys (one per expert) <-> one MS tensor stacked on a leading expert axis.
The fused key_value keeps the HF per-head interleaved row layout [K_0; V_0; K_1; V_1; ...] in our model, so it
is a plain entry; `split_key_value` / `merge_key_value` convert to/from separate K and V (reference models,
split-layout consumers) using n_kv and head_dim from the config.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (HF template, MS template); {i} = layer index
_GLOBAL = [
    ("transformer.word_embeddings.weight", "model.tok_embeddings.embedding_weight"),
    ("transformer.ln_f.weight", "model.norm_out.weight"),
    ("lm_head.weight", "lm_head.weight"),
]
_EMBED_NORM = [("transformer.word_embeddings_layernorm.weight", "model.tok_embeddings_norm.weight")]
_LAYER = [
    ("transformer.h.{i}.input_layernorm.weight", "model.layers.{i}.attention_norm.weight"),
    ("transformer.h.{i}.self_attention.query.weight", "model.layers.{i}.attention.wq.weight"),
    ("transformer.h.{i}.self_attention.key_value.weight", "model.layers.{i}.attention.wk_v.weight"),
    ("transformer.h.{i}.self_attention.dense.weight", "model.layers.{i}.attention.wo.weight"),
    ("transformer.h.{i}.self_attention.dense.bias", "model.layers.{i}.attention.wo.bias"),
    ("transformer.h.{i}.post_attention_layernorm.weight", "model.layers.{i}.ffn_norm.weight"),
]
_DENSE_MLP = [
    ("transformer.h.{i}.mlp.gate_proj.weight", "model.layers.{i}.feed_forward.w1.weight"),
    ("transformer.h.{i}.mlp.up_proj.weight", "model.layers.{i}.feed_forward.w3.weight"),
    ("transformer.h.{i}.mlp.down_proj.weight", "model.layers.{i}.feed_forward.w2.weight"),
    ("transformer.h.{i}.mlp.down_proj.bias", "model.layers.{i}.feed_forward.w2.bias"),
]
# Public sources disagree on the router key (spec §4.3): the first is canonical, the others are accepted.
ROUTER_HF_KEYS = ("transformer.h.{i}.mlp.router.weight", "transformer.h.{i}.mlp.gate.weight")
_MOE_ROUTER = [(ROUTER_HF_KEYS[0], "model.layers.{i}.feed_forward.router.dense.weight")]
_MOE_EXPERTS = [  # HF per-expert key ({e}) -> MS tensor stacked over experts on axis 0
    ("transformer.h.{i}.mlp.local_experts.{e}.gate_proj.weight", "model.layers.{i}.feed_forward.ffn.w1.weight"),
    ("transformer.h.{i}.mlp.local_experts.{e}.up_proj.weight", "model.layers.{i}.feed_forward.ffn.w3.weight"),
    ("transformer.h.{i}.mlp.local_experts.{e}.down_proj.weight", "model.layers.{i}.feed_forward.ffn.w2.weight"),
    ("transformer.h.{i}.mlp.local_experts.{e}.down_proj.bias", "model.layers.{i}.feed_forward.ffn.w2.bias"),
]


@dataclass(frozen=True)
class Entry:
    """One MS tensor and the HF tensor(s) it is made of. `hf_keys` has one key, or E keys for `stack`."""
    ms_key: str
    hf_keys: tuple[str, ...]
    shape: tuple[int, ...]          # MS shape; HF shape is shape[1:] per key for `stack`
    stack: bool = False

    @property
    def hf_shape(self) -> tuple[int, ...]:
        return self.shape[1:] if self.stack else self.shape


def _hf_shapes(config) -> dict[str, tuple[int, ...]]:
    """HF shapes by the last two name components, from the config (spec §3, §4.3)."""
    h, f, v = config.hidden_size, config.ffn_hidden_size, config.vocab_size
    q_out, kv_out = config.num_heads * config.head_dim, 2 * config.num_kv_heads * config.head_dim
    return {
        "word_embeddings.weight": (v, h), "ln_f.weight": (h,), "lm_head.weight": (v, h),
        "word_embeddings_layernorm.weight": (h,),
        "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
        "query.weight": (q_out, h), "key_value.weight": (kv_out, h),
        "dense.weight": (h, q_out), "dense.bias": (h,),
        "gate_proj.weight": (f, h), "up_proj.weight": (f, h), "down_proj.weight": (h, f), "down_proj.bias": (h,),
        "router.weight": (config.num_experts, h),
    }


def _shape_of(hf_key: str, shapes) -> tuple[int, ...]:
    return shapes[".".join(hf_key.split(".")[-2:])]


def name_table(config) -> list[Entry]:
    """Every tensor of a model with this config, in model order."""
    shapes = _hf_shapes(config)
    entries = [Entry(_GLOBAL[0][1], (_GLOBAL[0][0],), _shape_of(_GLOBAL[0][0], shapes))]
    if config.embed_layernorm:
        entries += [Entry(ms, (hf,), _shape_of(hf, shapes)) for hf, ms in _EMBED_NORM]
    for i in range(config.num_layers):
        mlp = _MOE_ROUTER if config.is_moe else _DENSE_MLP
        for hf, ms in _LAYER + mlp:
            hf_key = hf.format(i=i)
            entries.append(Entry(ms.format(i=i), (hf_key,), _shape_of(hf_key, shapes)))
        if config.is_moe:
            for hf, ms in _MOE_EXPERTS:
                keys = tuple(hf.format(i=i, e=e) for e in range(config.num_experts))
                entries.append(Entry(ms.format(i=i), keys, (config.num_experts,) + _shape_of(keys[0], shapes),
                                     stack=True))
    entries += [Entry(ms, (hf,), _shape_of(hf, shapes)) for hf, ms in _GLOBAL[1:]]
    return entries


def hf_to_ms(hf_state: dict[str, np.ndarray], config) -> dict[str, np.ndarray]:
    """In-memory conversion (small models, tests). The CLI streams the same table tensor by tensor."""
    out = {}
    for entry in name_table(config):
        tensors = [hf_state[_router_alias(k, hf_state)] for k in entry.hf_keys]
        out[entry.ms_key] = np.stack(tensors) if entry.stack else tensors[0]      # (E, ...) when stacked
    return out


def ms_to_hf(ms_state: dict[str, np.ndarray], config) -> dict[str, np.ndarray]:
    """Inverse of hf_to_ms (router written under the canonical key)."""
    out = {}
    for entry in name_table(config):
        tensor = ms_state[entry.ms_key]
        if entry.stack:
            out.update({k: tensor[e] for e, k in enumerate(entry.hf_keys)})        # (E, ...) -> E x (...)
        else:
            out[entry.hf_keys[0]] = tensor
    return out


def _router_alias(key: str, available) -> str:
    """The router key as present in the source (`mlp.router.weight` or `mlp.gate.weight`)."""
    if key in available or not key.endswith(".mlp.router.weight"):
        return key
    alias = key[: -len("router.weight")] + "gate.weight"
    return alias if alias in available else key


def split_key_value(kv: np.ndarray, num_kv_heads: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Fused per-head interleaved key_value (2*n_kv*hd, H) -> K (n_kv*hd, H), V (n_kv*hd, H)."""
    hidden = kv.shape[-1]
    per_head = kv.reshape(num_kv_heads, 2, head_dim, hidden)                         # (n_kv, k|v, hd, H)
    return (per_head[:, 0].reshape(num_kv_heads * head_dim, hidden),
            per_head[:, 1].reshape(num_kv_heads * head_dim, hidden))


def merge_key_value(k: np.ndarray, v: np.ndarray, num_kv_heads: int, head_dim: int) -> np.ndarray:
    """Inverse of split_key_value: K, V (n_kv*hd, H) -> (2*n_kv*hd, H) rows [K_0; V_0; K_1; V_1; ...]."""
    hidden = k.shape[-1]
    per_head = np.stack([k.reshape(num_kv_heads, head_dim, hidden),
                         v.reshape(num_kv_heads, head_dim, hidden)], axis=1)         # (n_kv, 2, hd, H)
    return per_head.reshape(2 * num_kv_heads * head_dim, hidden)
