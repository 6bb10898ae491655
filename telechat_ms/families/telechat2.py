"""TeleChat2 (3B / 7B / 35B / 115B dense, 39B-A12B MoE): the HF `transformer.*` layout with fused key_value.

Facts: spec telechat2.md §1-§4, §6. The HF modeling hard-codes rope base 10000, so a `rope_theta` key is
accepted and ignored (a converted checkpoint must keep 10000 to reproduce its logits).
"""
from __future__ import annotations

from ..config.base import ConfigError
from .hf_config import HFMapping, build_config, no_quantization, refuse_if_true
from .hf_layout import STACK, HFLayout, Table, entry, same
from .registry import Family, register

ALIASES = {
    "n_layer": "num_layers", "num_hidden_layers": "num_layers",
    "n_head": "num_heads", "num_attention_heads": "num_heads",
    "num_key_value_heads": "num_kv_heads",
    "layer_norm_epsilon": "rms_norm_eps",
    "intermediate_size": "ffn_hidden_size",
    "n_embed": "hidden_size",
    # MoE names seen in the MindSpore port / common HF MoE configs (the 39B HF config is not public).
    "num_local_experts": "num_experts", "expert_num": "num_experts",
    "moe_topk": "num_experts_per_tok", "num_experts_chosen": "num_experts_per_tok",
}

# keys of public TeleChat2 config.json files that the HF modeling code never reads (spec §1.1)
IGNORED = frozenset({
    "flash_attn", "logn", "attention_softmax_in_fp32", "bias_dropout_fusion", "masked_softmax_fusion",
    "skip_bias_add", "skip_bias_add_qkv", "slow_but_exact", "n_inner", "rope_theta", "max_position_embeddings",
    "offset_alibi",
})


def _no_rope_scaling(value, _data) -> dict:
    if value is not None:
        raise ConfigError("the TeleChat2 modeling never reads rope_scaling (its dynamic NTK rule is built in): "
                          "remove it, or set rope_variant/base_seqlen in model_config.yaml")
    return {}

MAPPING = HFMapping(ALIASES, IGNORED, handlers={
    "quantization_config": no_quantization,
    "rope_scaling": _no_rope_scaling,
    "tie_word_embeddings": refuse_if_true("the TeleChat2 HF modeling never ties lm_head"),
})

DEFAULTS: dict = {}       # TelechatConfig's own defaults are TeleChat2's

PRESETS = {
    # tiny models for CPU tests: short training_seqlen so the NTK / mscale path is exercised cheaply
    "tiny": dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4,
                 ffn_hidden_size=160, training_seqlen=32, base_seqlen=32, seq_length=64),
    "tiny_gqa": dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     ffn_hidden_size=160, training_seqlen=32, base_seqlen=32, seq_length=64),
    "tiny_moe": dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4,
                     ffn_hidden_size=96, training_seqlen=32, base_seqlen=32, seq_length=64,
                     num_experts=4, num_experts_per_tok=2),
    # Values: spec §1 (README tables, MindFormers YAMLs, the 115B config.json). eps: the 115B config.json says
    # 1e-8 (verified); the other sizes use the MindFormers value 1e-5 (their HF configs are unpublished) -- a
    # converted checkpoint always takes eps from its own config.json.
    "3b": dict(hidden_size=3072, num_layers=24, num_heads=24, num_kv_heads=24, ffn_hidden_size=6144),
    "7b": dict(hidden_size=4096, num_layers=30, num_heads=32, num_kv_heads=32, ffn_hidden_size=12288),
    "35b": dict(hidden_size=6144, num_layers=64, num_heads=48, num_kv_heads=48, ffn_hidden_size=20480),
    "115b": dict(hidden_size=8192, num_layers=96, num_heads=64, num_kv_heads=8, ffn_hidden_size=40960,
                 rms_norm_eps=1e-8),
    "39b_a12b": dict(hidden_size=4096, num_layers=30, num_heads=32, num_kv_heads=32, ffn_hidden_size=6144,
                     num_experts=16, num_experts_per_tok=4),
}


def config_from_hf(data, source):
    # HF class default for a missing num_key_value_heads is None (= MHA): TelechatConfig makes it explicit
    return build_config("telechat2", MAPPING, data, source, DEFAULTS)


def config_to_hf(config) -> dict:
    """HF `config.json` content in the naming of the published 115B config (spec §1.1)."""
    out = {
        "architectures": ["TelechatForCausalLM"], "model_type": "telechat",
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size, "n_layer": config.num_layers,
        "n_head": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "ffn_hidden_size": config.ffn_hidden_size, "layer_norm_epsilon": config.rms_norm_eps,
        "training_seqlen": config.training_seqlen, "base_seqlen": config.base_seqlen,
        "seq_length": config.seq_length, "hidden_dropout": config.hidden_dropout,
        "attention_dropout": config.attention_dropout, "embed_layernorm": config.embed_layernorm,
        "apply_residual_connection_post_layernorm": config.apply_residual_connection_post_layernorm,
        "tie_word_embeddings": False, "initializer_range": config.initializer_range,
        "unk_token_id": config.unk_token_id, "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id,
        "flash_attn": False, "use_cache": True, "torch_dtype": config.param_dtype,
    }
    if config.is_moe:
        out.update(num_experts=config.num_experts, num_experts_per_tok=config.num_experts_per_tok,
                   norm_topk_prob=config.norm_topk_prob, routed_scaling_factor=config.routed_scaling_factor)
    if not config.head_dim_is_derived:
        out["head_dim"] = config.head_dim      # not a TeleChat2 HF key (the HF file derives it); ours reads it back
    return out


# ---- HF checkpoint layout (spec telechat2.md §3, §4.3; TeleChat v1 shares it, families.md §1) -----------
# `transformer.*` names; key_value already in our per-head interleaved row layout; torch Linear (out, in) ==
# ours, so every dense tensor is a plain rename. MoE experts are stacked on a leading axis.
PREFIX = "transformer."
ROUTER_KEYS = ("router", "gate")     # public sources disagree on the router key (spec §4.3); first = canonical


def spelling(keys) -> dict:
    """The source's `transformer.` prefix (absent in the TeleChat v1 7B index) and MoE router key."""
    bare = not any(k.startswith(PREFIX) for k in keys) and \
        any(k.startswith(("h.", "word_embeddings.", "ln_f.")) for k in keys)
    gate = any(k.endswith(".mlp.gate.weight") for k in keys)
    return {"prefix": "" if bare else PREFIX, "router_key": "gate" if gate else "router"}


def _mlp(config, hf: str, ms: str) -> list:
    h, f = config.hidden_size, config.ffn_hidden_size
    parts = [("gate_proj.weight", "w1.weight", (f, h)), ("up_proj.weight", "w3.weight", (f, h)),
             ("down_proj.weight", "w2.weight", (h, f))]
    if config.mlp_out_bias:
        parts.append(("down_proj.bias", "w2.bias", (h,)))
    if not config.is_moe:
        return [same(ms + "feed_forward." + m, hf + "mlp." + name, shape) for name, m, shape in parts]
    n = config.num_experts
    return [entry([(ms + "feed_forward.ffn." + m, (n,) + shape)],
                  [(hf + f"mlp.local_experts.{e}.{name}", shape) for e in range(n)], STACK)
            for name, m, shape in parts]


def name_table(config, spell=None) -> Table:
    """Every tensor of a model with this config, in model order (HF key spelling `spell`, see spelling())."""
    spell = spell or {}
    p, router = spell.get("prefix", PREFIX), spell.get("router_key", "router")
    if router not in ROUTER_KEYS or p not in (PREFIX, ""):
        raise ConfigError(f"unknown TeleChat checkpoint spelling {dict(spell)!r}")
    h, v = config.hidden_size, config.vocab_size
    q, kv = config.num_heads * config.head_dim, 2 * config.num_kv_heads * config.head_dim
    table = [same("model.tok_embeddings.embedding_weight", p + "word_embeddings.weight", (v, h))]
    if config.embed_layernorm:
        table.append(same("model.tok_embeddings_norm.weight", p + "word_embeddings_layernorm.weight", (h,)))
    for i in range(config.num_layers):
        hf, ms = f"{p}h.{i}.", f"model.layers.{i}."
        table += [same(ms + "attention_norm.weight", hf + "input_layernorm.weight", (h,)),
                  same(ms + "attention.wq.weight", hf + "self_attention.query.weight", (q, h)),
                  same(ms + "attention.wk_v.weight", hf + "self_attention.key_value.weight", (kv, h)),
                  same(ms + "attention.wo.weight", hf + "self_attention.dense.weight", (h, q))]
        if config.attention_out_bias:
            table.append(same(ms + "attention.wo.bias", hf + "self_attention.dense.bias", (h,)))
        table.append(same(ms + "ffn_norm.weight", hf + "post_attention_layernorm.weight", (h,)))
        if config.is_moe:
            table.append(same(ms + "feed_forward.router.dense.weight", hf + f"mlp.{router}.weight",
                              (config.num_experts, h)))
        table += _mlp(config, hf, ms)
    table.append(same("model.norm_out.weight", p + "ln_f.weight", (h,)))
    if not config.tie_word_embeddings:
        table.append(same("lm_head.weight", "lm_head.weight", (v, h)))
    return Table(table, num_layers=config.num_layers)


HF_LAYOUT = HFLayout(name_table, spelling)


def detect(data, keys) -> bool:
    """TeleChat2ForCausalLM, or model_type telechat with TeleChat2's GQA key or its 131072 vocab (v1 configs
    have neither; --family overrides)."""
    if "TeleChat2ForCausalLM" in (data.get("architectures") or []):
        return True
    return data.get("model_type") == "telechat" and ("num_key_value_heads" in data or data.get("vocab_size") == 131072)


FAMILY = register(Family(
    name="telechat2", description="TeleChat2 3B/7B/35B/115B dense (GQA) and 39B-A12B MoE",
    presets=PRESETS, tokenizer_kind="telechat2", default_template="telechat2",
    hf_aliases=ALIASES, detect=detect, config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    hf_layout=HF_LAYOUT,
))
