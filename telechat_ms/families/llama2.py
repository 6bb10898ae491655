"""Llama-2 (7B / 13B / 70B) in the HF LlamaForCausalLM layout: plain RoPE, no biases, untied, SentencePiece.

Facts: spec families.md §5-§6 (Llama-2 architecture as transformers' LlamaConfig). Firefly-LLaMA2 and other
Llama-2 derivatives with their own template have their own family module (firefly.py).
"""
from __future__ import annotations

from . import llama_common
from .registry import Family, register

_TINY = dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, ffn_hidden_size=160, seq_length=64,
             training_seqlen=64, base_seqlen=64, rms_norm_eps=1e-5)
_COMMON = dict(llama_common.DEFAULTS, rms_norm_eps=1e-5, seq_length=4096, training_seqlen=4096, base_seqlen=4096)

PRESETS = {
    "tiny_llama2": dict(llama_common.DEFAULTS, **_TINY, num_kv_heads=4),
    "tiny_llama2_gqa": dict(llama_common.DEFAULTS, **_TINY, num_kv_heads=2),
    "llama2_7b": dict(_COMMON, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32,
                      ffn_hidden_size=11008, vocab_size=32000),
    "llama2_13b": dict(_COMMON, hidden_size=5120, num_layers=40, num_heads=40, num_kv_heads=40,
                       ffn_hidden_size=13824, vocab_size=32000),
    "llama2_70b": dict(_COMMON, hidden_size=8192, num_layers=80, num_heads=64, num_kv_heads=8,
                       ffn_hidden_size=28672, vocab_size=32000),
}


def config_from_hf(data, source):
    return llama_common.config_from_hf("llama2", data, source)


def config_to_hf(config) -> dict:
    return llama_common.config_to_hf(config, "llama", ["LlamaForCausalLM"])


def detect(data, keys) -> bool:
    """Any other Llama-named checkpoint (tried last)."""
    return llama_common.is_llama_named(data)


FAMILY = register(Family(
    name="llama2", description="Llama-2 7B/13B/70B and Llama-2 derivatives (HF LlamaForCausalLM layout)",
    presets=PRESETS, tokenizer_kind="sentencepiece", default_template="llama2",
    hf_aliases=llama_common.ALIASES, detect=detect, config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    hf_layout=llama_common.HF_LAYOUT,
))
