"""Aquila2 (BAAI; 7B / 34B / 70B-Expr, chat and 16K variants): transformers' Llama modeling under
model_type "aquila" (or "llama"), GPT-2-style byte-level BPE tokenizer, the conversation.py chat templates.

Facts: spec families.md §4. Both the 2023 configs (vocab 100008, bos 100006 / eos 100007, theta 10000) and the
2024 re-uploads (vocab 143973, bos 143717 / eos 143718, theta 1e6) convert: every value comes from config.json.
AquilaChat2-34B-16K uses rope_scaling linear x4. The checkpoint -> template map of FlagAI's predict():
AquilaChat2-7B aquila-v1, AquilaChat2-34B aquila-legacy, AquilaChat2-70B-Expr aquila-v2, *-16K aquila; the
family default is conversation.py's default `aquila-chat` (pass --chat-template for the others). Output is
cut at `[UNK]` and `</s>` for every template; `###` is a stop of the `###`-separated templates only.
"""
from __future__ import annotations

from . import llama_common
from .registry import Family, register

VOCABS = (100008, 143973)         # 2023 and 2024 tokenizers
_2023 = dict(llama_common.DEFAULTS, vocab_size=100008, rms_norm_eps=1e-5, bos_token_id=100006,
             eos_token_id=100007, pad_token_id=0, unk_token_id=0)
_TINY = dict(llama_common.DEFAULTS, vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
             ffn_hidden_size=160, seq_length=64, training_seqlen=64, base_seqlen=64, rms_norm_eps=1e-5,
             bos_token_id=1, eos_token_id=2, pad_token_id=0, rope_theta=1e6)

PRESETS = {
    "tiny_aquila2": dict(_TINY, num_kv_heads=4),
    "tiny_aquila2_gqa": dict(_TINY, num_kv_heads=2),
    "tiny_aquila2_16k": dict(_TINY, num_kv_heads=2, rope_theta=10000.0, rope_scaling="linear",
                             rope_scaling_factor=4.0),
    "aquila2_7b": dict(_2023, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32,
                       ffn_hidden_size=11008, seq_length=2048, training_seqlen=2048, base_seqlen=2048),
    "aquila2_34b": dict(_2023, hidden_size=6144, num_layers=60, num_heads=48, num_kv_heads=8,
                        ffn_hidden_size=24576, seq_length=4096, training_seqlen=4096, base_seqlen=4096),
    "aquila2_70b": dict(_2023, hidden_size=8192, num_layers=80, num_heads=64, num_kv_heads=8,
                        ffn_hidden_size=28672, seq_length=4096, training_seqlen=4096, base_seqlen=4096),
}


def config_from_hf(data, source):
    return llama_common.config_from_hf("aquila2", data, source)


def config_to_hf(config) -> dict:
    return llama_common.config_to_hf(config, "aquila", ["AquilaForCausalLM"])


def detect(data, keys) -> bool:
    """model_type aquila / an Aquila architecture, or a llama config with an Aquila2 vocab size."""
    if data.get("model_type") == "aquila" or any("Aquila" in a for a in (data.get("architectures") or [])):
        return True
    return data.get("model_type") == "llama" and data.get("vocab_size") in VOCABS


FAMILY = register(Family(
    name="aquila2", description="Aquila2 / AquilaChat2 7B, 34B (GQA), 70B-Expr (GQA), 16K (linear RoPE x4)",
    presets=PRESETS, tokenizer_kind="hf", default_template="aquila-chat", stop_strings=("[UNK]", "</s>"),
    hf_aliases=llama_common.ALIASES, detect=detect, config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    hf_layout=llama_common.HF_LAYOUT,
))
