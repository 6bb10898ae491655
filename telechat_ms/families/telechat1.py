"""TeleChat v1 (7B / 12B / 12B-V2): TeleChat2's code family (same `transformer.*` names, fused per-head
key_value, dense and down_proj biases), MHA only; 7B ties lm_head to the embeddings and its index has no
`transformer.` prefix.

Rotary (spec families.md §1): v1's `get_ntk_alpha` divides by a hard-coded length -- 4096 in the 7B file, 8192
in the 12B file -- and clamps the length up to training_seqlen (8192), so the 7B always runs with alpha 3.
That is TeleChat2's rule with base_seqlen = that divisor: rope_variant "telechat1" shares its arithmetic and
the divisor is read from the checkpoint's own modeling_telechat.py when present (else: 4096 for the 7B's
160256 vocab, 8192 otherwise; override with base_seqlen in model_config.yaml). v1 computes alpha from the
current chunk length, so its cached decoding cannot pass training_seqlen; ours recomputes exactly instead.
"""
from __future__ import annotations

import os
import re

from . import telechat2
from .hf_config import HFMapping, build_config, no_quantization
from .registry import Family, register

V1_7B_VOCAB = 160256
_DIVISOR = re.compile(r"math\.log\(\s*true_seq_len\s*/\s*(\d+)")

MAPPING = HFMapping(telechat2.ALIASES, telechat2.IGNORED, handlers={"quantization_config": no_quantization})
# PretrainedConfig's default tie_word_embeddings is True: the 7B config.json omits it and is tied
DEFAULTS = dict(rope_variant="telechat1", tie_word_embeddings=True, training_seqlen=8192, seq_length=8192)

_TINY = dict(DEFAULTS, vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4,
             ffn_hidden_size=160, training_seqlen=32, seq_length=64)
PRESETS = {
    # base_seqlen < training_seqlen: alpha 3 at every length, as in the 7B
    "tiny_telechat1": dict(_TINY, base_seqlen=16),
    "tiny_telechat1_untied": dict(_TINY, base_seqlen=32, tie_word_embeddings=False),
    "telechat1_7b": dict(DEFAULTS, vocab_size=V1_7B_VOCAB, hidden_size=4096, num_layers=30, num_heads=32,
                         num_kv_heads=32, ffn_hidden_size=12288, base_seqlen=4096),
    "telechat1_12b": dict(DEFAULTS, vocab_size=120000, hidden_size=5120, num_layers=38, num_heads=32,
                          num_kv_heads=32, ffn_hidden_size=12288, base_seqlen=8192, tie_word_embeddings=False),
}


def ntk_divisor(source: str, vocab_size) -> int:
    """The hard-coded NTK divisor of the checkpoint's modeling_telechat.py, else the 7B/12B value."""
    path = os.path.join(os.path.dirname(source), "modeling_telechat.py") if source.endswith(".json") else ""
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as fh:
            found = _DIVISOR.search(fh.read())
        if found:
            return int(found.group(1))
    return 4096 if vocab_size == V1_7B_VOCAB else 8192


def config_from_hf(data, source):
    defaults = dict(DEFAULTS)
    if "base_seqlen" not in data:
        defaults["base_seqlen"] = ntk_divisor(source, data.get("vocab_size"))
    return build_config("telechat1", MAPPING, data, source, defaults)


def config_to_hf(config) -> dict:
    out = telechat2.config_to_hf(config)
    del out["num_key_value_heads"]                 # v1 has no GQA field
    out["tie_word_embeddings"] = config.tie_word_embeddings
    out["base_seqlen"] = config.base_seqlen        # not read by v1's code (its divisor is hard-coded); ours reads it
    return out


def detect(data, keys) -> bool:
    """model_type telechat without TeleChat2's keys (the v1 configs have neither base_seqlen nor GQA)."""
    return data.get("model_type") == "telechat" and not telechat2.detect(data, keys)


FAMILY = register(Family(
    name="telechat1", description="TeleChat v1 7B (tied, BBPE tokenizer) / 12B / 12B-V2 (SentencePiece)",
    presets=PRESETS, tokenizer_kind="auto", default_template="telechat1",
    hf_aliases=telechat2.ALIASES, detect=detect, config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    hf_layout=telechat2.HF_LAYOUT,     # the same names; the 7B index spells them without `transformer.`
))
