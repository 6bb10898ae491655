"""Tele-FLM (52B), FLM-2-52B-Instruct-2407 and Tele-FLM-1T (CofeAI): the Llama-named layout with muP
multipliers: embeddings x input_mult, logits x output_mult / mup_scale_factor (when use_mup).

Facts: spec families.md §3. The rotary embedding follows vLLM's TeleFLM port (stock Llama: plain RoPE, theta from
config.json); HF's modeling_teleflm.py was NOT read, so `rope_variant` stays a config field (set
rope_variant: flm in model_config.yaml for TeleChat-52B's NTK switch beyond 4096 tokens).
"""
from __future__ import annotations

from ..config.base import ConfigError
from . import llama_common
from .registry import Family, register

_COMMON = dict(llama_common.DEFAULTS, hidden_size=8192, num_layers=64, num_heads=64, num_kv_heads=64,
               ffn_hidden_size=21824, rms_norm_eps=1e-5, logit_multiplier=1.0 / 32)
_TINY = dict(llama_common.DEFAULTS, vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
             ffn_hidden_size=160, seq_length=64, training_seqlen=64, base_seqlen=64, rms_norm_eps=1e-5,
             embedding_multiplier=2.0, logit_multiplier=0.25)

PRESETS = {
    "tiny_teleflm": dict(_TINY, num_kv_heads=4),
    "tiny_teleflm_gqa": dict(_TINY, num_kv_heads=2),
    "teleflm_52b": dict(_COMMON, vocab_size=80384, seq_length=4096, training_seqlen=4096, base_seqlen=4096),
    "flm2_52b": dict(_COMMON, vocab_size=80896, seq_length=2048, training_seqlen=2048, base_seqlen=2048),
    "teleflm_1t": dict(_COMMON, hidden_size=20480, num_layers=140, num_heads=160, num_kv_heads=160,
                       ffn_hidden_size=98304, vocab_size=81920, seq_length=4096, training_seqlen=4096,
                       base_seqlen=4096, logit_multiplier=1.0 / 40),
}


def _mup(value, data) -> dict:
    """use_mup: apply input_mult and output_mult / mup_scale_factor (vLLM's TeleFLM port)."""
    if not value:
        return {}
    try:
        return {"embedding_multiplier": float(data.get("input_mult", 1.0)),
                "logit_multiplier": float(data.get("output_mult", 1.0)) / float(data.get("mup_scale_factor", 1.0))}
    except (TypeError, ValueError, ZeroDivisionError):
        raise ConfigError("input_mult / output_mult / mup_scale_factor must be numbers (mup_scale_factor != 0)") \
            from None


HANDLERS = {"use_mup": _mup}
MUP_KEYS = frozenset({"input_mult", "output_mult", "mup_scale_factor", "mup_base_width"})   # read by _mup


def config_from_hf(data, source):
    return llama_common.config_from_hf("teleflm", data, source, HANDLERS, ignored=MUP_KEYS)


def config_to_hf(config) -> dict:
    # the multipliers are written as input_mult and output_mult with mup_scale_factor 1
    extra = {"use_mup": True, "input_mult": config.embedding_multiplier, "output_mult": config.logit_multiplier,
             "mup_scale_factor": 1.0, "auto_map": {"AutoConfig": "configuration_teleflm.TeleFLMConfig",
                                                   "AutoModelForCausalLM": "modeling_teleflm.TeleFLMForCausalLM"}}
    return llama_common.config_to_hf(config, "TeleFLM", ["TeleFLMForCausalLM"], extra)


def detect(data, keys) -> bool:
    return str(data.get("model_type", "")).lower() == "teleflm" or \
        any("FLM" in a for a in (data.get("architectures") or []))


FAMILY = register(Family(
    name="teleflm", description="Tele-FLM 52B, FLM-2-52B-Instruct, Tele-FLM-1T (Llama layout, muP multipliers)",
    presets=PRESETS, tokenizer_kind="sentencepiece", default_template="telechat52b",
    hf_aliases=llama_common.ALIASES, detect=detect, config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    hf_layout=llama_common.HF_LAYOUT,
))
