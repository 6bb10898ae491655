"""The Llama-named HF layout shared by Tele-FLM / FLM-2, Aquila2, Llama-2 and Firefly: config.json mapping and
checkpoint name table.

Every one of these configs uses transformers' LlamaConfig names. Our internal layout stays TeleChat's (fused
per-head key_value); the converters map split q/k/v into it. Math-changing keys we do not implement are refused.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from ..config.base import ConfigError
from .hf_config import (HFMapping, build_config, first_id, no_quantization, refuse_if_true, require_value,
                        rope_scaling)
from .hf_layout import KV_SPLIT, HFLayout, Table, entry, same

ALIASES = {
    "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads", "num_key_value_heads": "num_kv_heads",
    "intermediate_size": "ffn_hidden_size",
}


def _max_positions(value, _data) -> dict:
    """max_position_embeddings: the default max length, and the reference length of dynamic scaling."""
    return {"seq_length": value, "training_seqlen": value, "base_seqlen": value}


def _rope_theta(value, _data) -> dict:
    return {"rope_theta": float(value)}


def _null_kv_heads(value, _data) -> dict:
    return {} if value is None else {"num_kv_heads": value}


HANDLERS: dict[str, Callable[[Any, Mapping], dict]] = {
    "max_position_embeddings": _max_positions,
    "rope_theta": _rope_theta,
    "rope_scaling": rope_scaling,
    "num_key_value_heads": _null_kv_heads,
    "hidden_act": require_value(("silu",), "the MLP is SwiGLU"),
    "attention_bias": refuse_if_true("q/k/v/o projection biases are not implemented"),
    "mlp_bias": refuse_if_true("gate/up/down projection biases are not implemented"),
    "quantization_config": no_quantization,
    "bos_token_id": first_id("bos_token_id"), "eos_token_id": first_id("eos_token_id"),
    "pad_token_id": first_id("pad_token_id"), "unk_token_id": first_id("unk_token_id"),
}

# What a Llama-named config.json leaves unsaid (LlamaConfig defaults) and the TeleChat-only switches off.
DEFAULTS = dict(rope_variant="plain", rotary_fp16_rounding=False, attention_out_bias=False, mlp_out_bias=False,
                tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=10000.0, seq_length=2048,
                training_seqlen=2048, base_seqlen=2048, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                unk_token_id=0, ffn_hidden_size=11008, hidden_size=4096, num_layers=32, num_heads=32,
                vocab_size=32000)


def config_from_hf(family: str, data, source, extra_handlers=None, ignored=frozenset(), defaults=None):
    mapping = HFMapping(ALIASES, frozenset(ignored), {**HANDLERS, **(extra_handlers or {})})
    return build_config(family, mapping, data, source, {**DEFAULTS, **(defaults or {})})


def config_to_hf(config, model_type: str, architectures: list[str], extra: dict | None = None) -> dict:
    """A LlamaConfig-style config.json for `config` (used when the source's own config.json is not kept)."""
    out = {
        "architectures": architectures, "model_type": model_type,
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.ffn_hidden_size, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "hidden_act": "silu", "max_position_embeddings": config.seq_length, "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta, "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id, "initializer_range": config.initializer_range,
        "attention_bias": False, "mlp_bias": False, "torch_dtype": config.param_dtype, "use_cache": True,
        "rope_scaling": None if config.rope_scaling == "none" else
        {"type": config.rope_scaling, "factor": config.rope_scaling_factor},
    }
    if not config.head_dim_is_derived:
        out["head_dim"] = config.head_dim
    out.update(extra or {})
    return out


def is_llama_named(data) -> bool:
    return data.get("model_type") in ("llama", "aquila", "TeleFLM", "teleflm") or \
        any("Llama" in a or "Aquila" in a or "FLM" in a for a in (data.get("architectures") or []))


# ---- HF checkpoint layout: transformers' LlamaForCausalLM names (spec families.md §3-§5) ----------------
# Split q/k/v/o projections: k_proj / v_proj are re-interleaved per kv head into our fused wk_v (GQA: n_kv
# heads of head_dim rows each). torch Linear (out, in) == ours. Checkpoints saved by transformers < 4.31
# carry a persistent `rotary_emb.inv_freq` buffer per layer: dropped, recorded and written back.
BUFFERS = ("model.layers.{i}.self_attn.rotary_emb.inv_freq",)


def name_table(config, spell=None) -> Table:
    """Every tensor of a Llama-named checkpoint with this config, in model order."""
    if config.is_moe:
        raise ConfigError(f"family {config.family!r}: MoE (num_experts={config.num_experts}) has no Llama-named "
                          "checkpoint layout")
    h, f, v = config.hidden_size, config.ffn_hidden_size, config.vocab_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    table = [same("model.tok_embeddings.embedding_weight", "model.embed_tokens.weight", (v, h))]
    for i in range(config.num_layers):
        hf, ms = f"model.layers.{i}.", f"model.layers.{i}."
        table += [same(ms + "attention_norm.weight", hf + "input_layernorm.weight", (h,)),
                  same(ms + "attention.wq.weight", hf + "self_attn.q_proj.weight", (q, h)),
                  entry([(ms + "attention.wk_v.weight", (2 * kv, h))],
                        [(hf + "self_attn.k_proj.weight", (kv, h)), (hf + "self_attn.v_proj.weight", (kv, h))],
                        KV_SPLIT),
                  same(ms + "attention.wo.weight", hf + "self_attn.o_proj.weight", (h, q))]
        if config.attention_out_bias:
            table.append(same(ms + "attention.wo.bias", hf + "self_attn.o_proj.bias", (h,)))
        table += [same(ms + "ffn_norm.weight", hf + "post_attention_layernorm.weight", (h,)),
                  same(ms + "feed_forward.w1.weight", hf + "mlp.gate_proj.weight", (f, h)),
                  same(ms + "feed_forward.w3.weight", hf + "mlp.up_proj.weight", (f, h)),
                  same(ms + "feed_forward.w2.weight", hf + "mlp.down_proj.weight", (h, f))]
        if config.mlp_out_bias:
            table.append(same(ms + "feed_forward.w2.bias", hf + "mlp.down_proj.bias", (h,)))
    table.append(same("model.norm_out.weight", "model.norm.weight", (h,)))
    if not config.tie_word_embeddings:
        table.append(same("lm_head.weight", "lm_head.weight", (v, h)))
    return Table(table, BUFFERS, config.num_layers)


HF_LAYOUT = HFLayout(name_table)
