"""Firefly-LLaMA2 (YeungNLP): Llama-2 with a 55296-piece Chinese-extended SentencePiece vocab and the
`<s>user</s>assistant</s>` chat format (no role tags). Facts: spec families.md §5.
"""
from __future__ import annotations

from . import llama_common
from .registry import Family, register

FIREFLY_VOCAB = 55296

PRESETS = {
    "firefly_llama2_7b": dict(llama_common.DEFAULTS, hidden_size=4096, num_layers=32, num_heads=32,
                              num_kv_heads=32, ffn_hidden_size=11008, vocab_size=FIREFLY_VOCAB, rms_norm_eps=1e-5,
                              seq_length=4096, training_seqlen=4096, base_seqlen=4096),
}


def config_from_hf(data, source):
    return llama_common.config_from_hf("firefly", data, source)


def config_to_hf(config) -> dict:
    return llama_common.config_to_hf(config, "llama", ["LlamaForCausalLM"])


def detect(data, keys) -> bool:
    """A Llama config with Firefly's vocab size (its config.json names no other marker; --family overrides)."""
    return data.get("model_type") == "llama" and data.get("vocab_size") == FIREFLY_VOCAB


FAMILY = register(Family(
    name="firefly", description="Firefly-LLaMA2-7B(-Chat) (Llama-2 layout, extended Chinese vocab)",
    presets=PRESETS, tokenizer_kind="sentencepiece", default_template="firefly",
    hf_aliases=llama_common.ALIASES, detect=detect, config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    hf_layout=llama_common.HF_LAYOUT,
))
