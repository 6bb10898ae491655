"""TeleChat-52B (Tele-AI): the FLM-2-52B architecture in a GPT-2 layout -- `transformer.wte`, `ln_1/ln_2`,
Conv1D weights stored [in, out], c_attn = q|k|v column blocks, c_fc = gate|up -- with muP logit scaling and the
FLM rotary rule (theta x alpha, alpha from the total length in steps of 4096, no d/(d-2) exponent, no mscale).

Facts: spec families.md §2. The released modeling only runs on its flash-attn path; the math it describes is
what is reproduced here (and tested against a Llama reference with the same weights).
"""
from __future__ import annotations

from ..config.base import ConfigError
from .hf_config import HFMapping, build_config, first_id, no_quantization, refuse_if_true, require_value
from .hf_layout import CONV1D_GATE_UP, CONV1D_QKV, TRANSPOSE, HFLayout, Table, entry, same
from .registry import Family, register

ALIASES = {"n_embd": "hidden_size", "n_layer": "num_layers", "n_head": "num_heads", "n_inner": "ffn_hidden_size",
           "layer_norm_epsilon": "rms_norm_eps", "resid_pdrop": "hidden_dropout", "attn_pdrop": "attention_dropout"}


def _positions(value, _data) -> dict:
    """n_positions: the default max length and the length where the FLM NTK alpha leaves 1 (4096)."""
    return {"seq_length": value, "training_seqlen": value, "base_seqlen": value}


def _mup(value, data) -> dict:
    if not value:
        return {}
    return {"embedding_multiplier": float(data.get("input_mult", 1.0)),
            "logit_multiplier": float(data.get("output_mult", 1.0)) / float(data.get("mup_scale_factor", 1.0))}


def _no_embedding_dropout(value, _data) -> dict:
    if value:
        raise refuse_if_true("embedding dropout is not implemented")(value, _data)
    return {}


MAPPING = HFMapping(ALIASES, frozenset({
    "input_mult", "output_mult", "mup_scale_factor", "mup_base_width",       # read by _mup
    "scale_attn_by_inverse_layer_idx",   # divided out and multiplied back in the released code: a no-op
    "reorder_and_upcast_attn",           # fp32 scores: our softmax is fp32 already
    "n_ctx", "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
    "summary_first_dropout", "layer_norm_eps",
}), handlers={
    "n_positions": _positions,
    "use_mup": _mup,
    "rotary_theta": lambda v, _d: {"rope_theta": float(v)},
    "use_RMSNorm": require_value((True,), "the norm is RMSNorm"),
    "activation_function": require_value(("silu",), "the MLP is SwiGLU"),
    "relative_encoding": require_value(("rotary",), "positions are rotary"),
    "rotary_use_xpos": refuse_if_true("xPos rotary is not implemented"),
    "add_bias_linear": refuse_if_true("linear biases are not implemented for this layout"),
    "scale_attn_weights": require_value((True,), "scores are scaled by 1/sqrt(head_dim)"),
    "embd_pdrop": _no_embedding_dropout,
    "quantization_config": no_quantization,
    "tie_word_embeddings": refuse_if_true("TeleChat-52B keeps a separate lm_head"),
    "bos_token_id": first_id("bos_token_id"), "eos_token_id": first_id("eos_token_id"),
    "pad_token_id": first_id("pad_token_id"), "unk_token_id": first_id("unk_token_id"),
})

DEFAULTS = dict(rope_variant="flm", rotary_fp16_rounding=False, attention_out_bias=False, mlp_out_bias=False,
                rms_norm_eps=1e-5, seq_length=4096, training_seqlen=4096, base_seqlen=4096, bos_token_id=1,
                eos_token_id=2, pad_token_id=3, unk_token_id=0)

PRESETS = {
    "tiny_telechat52b": dict(DEFAULTS, vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4,
                             ffn_hidden_size=160, seq_length=32, training_seqlen=32, base_seqlen=32,
                             logit_multiplier=1.0 / 32),
    "telechat_52b": dict(DEFAULTS, vocab_size=80896, hidden_size=8192, num_layers=64, num_heads=64,
                         num_kv_heads=64, ffn_hidden_size=21824, logit_multiplier=1.0 / 32),
}


def config_from_hf(data, source):
    return build_config("telechat52b", MAPPING, data, source, DEFAULTS)


def config_to_hf(config) -> dict:
    return {
        "architectures": ["TeleChatForCausalLM"], "model_type": "telechat",
        "vocab_size": config.vocab_size, "n_embd": config.hidden_size, "n_layer": config.num_layers,
        "n_head": config.num_heads, "n_inner": config.ffn_hidden_size, "n_positions": config.seq_length,
        "layer_norm_epsilon": config.rms_norm_eps, "use_RMSNorm": True, "activation_function": "silu",
        "add_bias_linear": False, "relative_encoding": "rotary", "rotary_theta": config.rope_theta,
        "rotary_use_xpos": False, "use_mup": True, "input_mult": config.embedding_multiplier,
        "output_mult": config.logit_multiplier, "mup_scale_factor": 1.0, "scale_attn_weights": True,
        "tie_word_embeddings": False, "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id, "unk_token_id": config.unk_token_id,
        "resid_pdrop": config.hidden_dropout, "attn_pdrop": config.attention_dropout,
        "initializer_range": config.initializer_range, "torch_dtype": config.param_dtype,
    }


# ---- HF checkpoint layout (spec families.md §2): GPT-2 names, Conv1D weights stored [in, out] --------------
# c_attn [H, q | k | v] contiguous column blocks (split, then a per-head view: not interleaved) -> our wq and
# per-head interleaved wk_v; c_fc [H, gate | up] -> w1 / w3; c_proj weights transposed. The embedding and
# lm_head are plain (V, H) tensors. `attn.masked_bias` (the released index) and `attn.bias` (GPT-2's causal
# mask) are buffers, not weights.
BUFFERS = ("transformer.h.{i}.attn.masked_bias", "transformer.h.{i}.attn.bias")


def name_table(config, spell=None) -> Table:
    """Every tensor of a TeleChat-52B checkpoint with this config, in model order."""
    if config.is_moe:
        raise ConfigError("family 'telechat52b': MoE has no GPT-2 Conv1D checkpoint layout")
    h, f, v = config.hidden_size, config.ffn_hidden_size, config.vocab_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    table = [same("model.tok_embeddings.embedding_weight", "transformer.wte.weight", (v, h))]
    for i in range(config.num_layers):
        hf, ms = f"transformer.h.{i}.", f"model.layers.{i}."
        table += [same(ms + "attention_norm.weight", hf + "ln_1.weight", (h,)),
                  entry([(ms + "attention.wq.weight", (q, h)), (ms + "attention.wk_v.weight", (2 * kv, h))],
                        [(hf + "attn.c_attn.weight", (h, q + 2 * kv))], CONV1D_QKV),
                  entry([(ms + "attention.wo.weight", (h, q))], [(hf + "attn.c_proj.weight", (q, h))], TRANSPOSE)]
        if config.attention_out_bias:
            table.append(same(ms + "attention.wo.bias", hf + "attn.c_proj.bias", (h,)))
        table += [same(ms + "ffn_norm.weight", hf + "ln_2.weight", (h,)),
                  entry([(ms + "feed_forward.w1.weight", (f, h)), (ms + "feed_forward.w3.weight", (f, h))],
                        [(hf + "mlp.c_fc.weight", (h, 2 * f))], CONV1D_GATE_UP),
                  entry([(ms + "feed_forward.w2.weight", (h, f))], [(hf + "mlp.c_proj.weight", (f, h))], TRANSPOSE)]
        if config.mlp_out_bias:
            table.append(same(ms + "feed_forward.w2.bias", hf + "mlp.c_proj.bias", (h,)))
    table.append(same("model.norm_out.weight", "transformer.ln_f.weight", (h,)))
    if not config.tie_word_embeddings:
        table.append(same("lm_head.weight", "lm_head.weight", (v, h)))
    return Table(table, BUFFERS, config.num_layers)


HF_LAYOUT = HFLayout(name_table)


def detect(data, keys) -> bool:
    """GPT-2 names with muP / rotary keys, or Conv1D tensor names (c_attn)."""
    return ("n_embd" in data and ("use_mup" in data or "relative_encoding" in data)) or \
        any(k.endswith(".attn.c_attn.weight") for k in keys)


FAMILY = register(Family(
    name="telechat52b", description="TeleChat-52B (FLM-2 architecture, GPT-2 Conv1D layout)",
    presets=PRESETS, tokenizer_kind="sentencepiece", default_template="telechat52b",
    hf_aliases=ALIASES, detect=detect, config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    hf_layout=HF_LAYOUT,
))
