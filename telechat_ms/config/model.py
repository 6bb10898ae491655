"""TeleChat2 architecture config: one dataclass, HF `config.json` mapping, named size presets.

Facts (field meanings, HF names, preset values) come from the TeleChat2 spec §1-§2 and §4.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import yaml

from .base import (ConfigError, atomic_write_text, check_positive, check_type, load_json, load_yaml,
                   strict_from_dict)

DTYPES = ("float32", "float16", "bfloat16")

# HF config.json names -> our field names (several HF generations disagree on names).
HF_ALIASES = {
    "n_layer": "num_layers", "num_hidden_layers": "num_layers",
    "n_head": "num_heads", "num_attention_heads": "num_heads",
    "num_key_value_heads": "num_kv_heads",
    "layer_norm_epsilon": "rms_norm_eps",
    "intermediate_size": "ffn_hidden_size",
    "n_embed": "hidden_size", "head_dim": "head_dim_override",
    # MoE names seen in the MindSpore port / common HF MoE configs (the 39B HF config is not public).
    "num_local_experts": "num_experts", "expert_num": "num_experts",
    "moe_topk": "num_experts_per_tok", "num_experts_chosen": "num_experts_per_tok",
}

# Keys present in public TeleChat2 config.json files that the HF modeling code never reads (spec §1.1),
# plus HF bookkeeping. They are accepted and dropped. `rope_theta` is here on purpose: the HF modeling
# hard-codes base 10000, so a converted checkpoint must keep 10000 to reproduce its logits.
HF_IGNORED = frozenset({
    "architectures", "model_type", "auto_map", "transformers_version", "torch_dtype", "_name_or_path",
    "flash_attn", "use_cache", "logn", "attention_softmax_in_fp32", "bias_dropout_fusion",
    "masked_softmax_fusion", "pretraining_tp", "skip_bias_add", "skip_bias_add_qkv", "slow_but_exact",
    "n_inner", "rope_theta", "max_position_embeddings", "offset_alibi", "output_attentions",
    "output_hidden_states", "return_dict", "use_return_dict", "sep_token_id", "decoder_start_token_id",
})


@dataclass
class TelechatConfig:
    """Architecture of a TeleChat2 model (dense or MoE). Field names are ours; HF names load via aliases."""

    vocab_size: int = 131072
    hidden_size: int = 4096
    num_layers: int = 30
    num_heads: int = 32
    num_kv_heads: int | None = None          # None -> num_heads (MHA); 115B: 8 (GQA)
    ffn_hidden_size: int = 12288             # per expert for MoE models
    rms_norm_eps: float = 1e-5
    training_seqlen: int = 8192              # mscale threshold of the dynamic NTK rule (spec §2.5)
    base_seqlen: int = 8192                  # NTK alpha reference length
    seq_length: int = 8192                   # default max sequence length for training / caches
    rope_theta: float = 10000.0              # HF hard-codes 10000; change only for new finetunes
    rotary_fp16_rounding: bool = True        # round cos/sin to fp16 like the HF file (exact HF logits)
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    embed_layernorm: bool = False
    apply_residual_connection_post_layernorm: bool = False
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    unk_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 3
    num_experts: int = 0                     # 0 -> dense MLP in every layer
    num_experts_per_tok: int = 0
    norm_topk_prob: bool = True              # renormalise top-k weights by (sum + 1e-9) (spec §4.2)
    routed_scaling_factor: float = 1.0
    moe_token_dropping: bool = True          # capacity-based dropping in training; eval is always dropless
    moe_capacity_factor: float = 1.2         # capacity = ceil(k * tokens * factor / E)
    moe_chunks: int = 1                      # tokens split into chunks processed in sequence (overlap on Ascend)
    router_aux_loss_coef: float = 0.01       # alpha of the load-balance loss alpha * E * sum_i f_i * P_i
    router_z_loss_coef: float = 0.0
    compute_dtype: str = "float32"
    param_dtype: str = "float32"
    # None -> head_dim = hidden_size/num_heads (every TeleChat2 model). Set only where num_heads*head_dim differs
    # from hidden_size: the per-rank config of tensor-parallel inference keeps the global head_dim with
    # num_heads/tp heads. Stored unresolved (and normalised to None when it equals hidden_size/num_heads), so
    # dataclasses.replace(config, hidden_size=...) re-derives it. Yaml / config.json may call it `head_dim`.
    head_dim_override: int | None = None

    def __post_init__(self):
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        if self.head_dim_override is not None:
            check_positive("head_dim", self.head_dim_override)
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "ffn_hidden_size", "training_seqlen", "base_seqlen", "seq_length"):
            check_positive(name, getattr(self, name))
        for name in ("rms_norm_eps", "rope_theta", "hidden_dropout", "attention_dropout", "initializer_range"):
            check_type(name, getattr(self, name), float)
        for name in ("rotary_fp16_rounding", "embed_layernorm", "apply_residual_connection_post_layernorm",
                     "tie_word_embeddings"):
            check_type(name, getattr(self, name), bool)
        self._check_combinations()

    def _check_combinations(self):
        if self.head_dim_override is not None and self.head_dim_override * self.num_heads == self.hidden_size:
            self.head_dim_override = None                          # canonical: equal configs compare equal
        if self.head_dim_override is None:
            if self.hidden_size % self.num_heads:
                raise ConfigError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
            if self.head_dim % 2:
                raise ConfigError(f"head_dim = hidden_size/num_heads = {self.head_dim} must be even for rotary "
                                  "embedding")
        elif self.head_dim % 2:
            raise ConfigError(f"head_dim ({self.head_dim}) must be even for rotary embedding")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})")
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            raise ConfigError(f"rms_norm_eps ({self.rms_norm_eps}) and rope_theta ({self.rope_theta}) must be > 0")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.tie_word_embeddings:
            raise ConfigError("tie_word_embeddings=True is not TeleChat2: the HF modeling never ties lm_head")
        for name in ("unk_token_id", "bos_token_id", "eos_token_id", "pad_token_id"):
            tid = getattr(self, name)
            check_type(name, tid, int)
            if not 0 <= tid < self.vocab_size:
                raise ConfigError(f"{name} ({tid}) must be in [0, vocab_size={self.vocab_size})")
        for name in ("compute_dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(f"{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
        self._check_moe()

    def _check_moe(self):
        for name in ("num_experts", "num_experts_per_tok"):
            check_type(name, getattr(self, name), int)
        check_positive("moe_chunks", self.moe_chunks)
        for name in ("norm_topk_prob", "moe_token_dropping"):
            check_type(name, getattr(self, name), bool)
        for name in ("routed_scaling_factor", "moe_capacity_factor", "router_aux_loss_coef", "router_z_loss_coef"):
            check_type(name, getattr(self, name), float)
            if getattr(self, name) < 0 or (name == "moe_capacity_factor" and self.moe_capacity_factor <= 0):
                raise ConfigError(f"{name} must be {'> 0' if name == 'moe_capacity_factor' else '>= 0'}, "
                                  f"got {getattr(self, name)}")
        if self.num_experts == 0:
            if self.num_experts_per_tok:
                raise ConfigError(f"num_experts_per_tok ({self.num_experts_per_tok}) needs num_experts > 0")
            return
        if self.num_experts < 2:
            raise ConfigError(f"num_experts must be 0 (dense) or >= 2, got {self.num_experts}")
        if not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ConfigError(f"num_experts_per_tok ({self.num_experts_per_tok}) must be in "
                              f"[1, num_experts={self.num_experts}]")

    # ----- derived -----
    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.hidden_size // self.num_heads

    @property
    def head_dim_is_derived(self) -> bool:
        """True when head_dim is hidden_size/num_heads (then it is not serialised)."""
        return self.head_dim_override is None

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def num_parameters(self, active: bool = False) -> int:
        """Parameter count from the architecture (spec §1). `active`: per token for MoE (top-k experts)."""
        h, f, hd = self.hidden_size, self.ffn_hidden_size, self.head_dim
        q = self.num_heads * hd                                        # = h unless head_dim is explicit
        attn = q * h + 2 * self.num_kv_heads * hd * h + h * q + h      # query, key_value, dense (+bias)
        expert = 3 * h * f + h                                         # gate, up, down (+bias)
        if self.is_moe:
            n_exp = self.num_experts_per_tok if active else self.num_experts
            mlp = n_exp * expert + self.num_experts * h                # experts + router
        else:
            mlp = expert
        layer = attn + mlp + 2 * h                                     # + two norms
        extra = h if self.embed_layernorm else 0
        return 2 * self.vocab_size * h + self.num_layers * layer + h + extra

    # ----- (de)serialisation -----
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        del out["head_dim_override"]
        if not self.head_dim_is_derived:
            out["head_dim"] = self.head_dim_override
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "TelechatConfig":
        return strict_from_dict(cls, data, source, aliases={"head_dim": "head_dim_override"})

    def to_yaml(self, path: str | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_yaml(cls, path: str) -> "TelechatConfig":
        data = load_yaml(path)
        # a full run yaml (mindformers layout `model: {model_config: ...}`, or a top-level model_config)
        if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping) and "model_config" in data["model"]:
            data, source = data["model"]["model_config"], f"{path}: model.model_config"
        elif isinstance(data, Mapping) and "model_config" in data:
            data, source = data["model_config"], f"{path}: model_config"
        else:
            source = path
        return cls.from_dict(_without_mindformers_keys(data or {}), source=source)

    @classmethod
    def from_hf_config(cls, path_or_dict: str | Mapping[str, Any], **overrides) -> "TelechatConfig":
        """Build from an HF TeleChat2 `config.json` (path, directory or dict); HF names are accepted."""
        source = "config.json"
        if isinstance(path_or_dict, Mapping):
            data = dict(path_or_dict)
        else:
            source = path_or_dict
            if not source.endswith(".json"):
                source = source.rstrip("/") + "/config.json"
            data = load_json(source)
        # HF class default for a missing num_key_value_heads is None (= MHA); keep it explicit.
        config = strict_from_dict(cls, data, source, aliases=HF_ALIASES, ignored=HF_IGNORED)
        return dataclasses.replace(config, **overrides) if overrides else config

    def to_hf_config(self) -> dict[str, Any]:
        """HF `config.json` content in the naming of the published 115B config (spec §1.1)."""
        out = {
            "architectures": ["TelechatForCausalLM"], "model_type": "telechat",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size, "n_layer": self.num_layers,
            "n_head": self.num_heads, "num_key_value_heads": self.num_kv_heads,
            "ffn_hidden_size": self.ffn_hidden_size, "layer_norm_epsilon": self.rms_norm_eps,
            "training_seqlen": self.training_seqlen, "base_seqlen": self.base_seqlen,
            "seq_length": self.seq_length, "hidden_dropout": self.hidden_dropout,
            "attention_dropout": self.attention_dropout, "embed_layernorm": self.embed_layernorm,
            "apply_residual_connection_post_layernorm": self.apply_residual_connection_post_layernorm,
            "tie_word_embeddings": False, "initializer_range": self.initializer_range,
            "unk_token_id": self.unk_token_id, "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id, "pad_token_id": self.pad_token_id,
            "flash_attn": False, "use_cache": True, "torch_dtype": self.param_dtype,
        }
        if self.is_moe:
            out.update(num_experts=self.num_experts, num_experts_per_tok=self.num_experts_per_tok,
                       norm_topk_prob=self.norm_topk_prob, routed_scaling_factor=self.routed_scaling_factor)
        if not self.head_dim_is_derived:
            out["head_dim"] = self.head_dim      # not a TeleChat2 HF key (the HF file derives it); ours reads it back
        return out

    @classmethod
    def preset(cls, name: str, **overrides) -> "TelechatConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown preset '{name}' (available: {', '.join(PRESETS)})")
        if "head_dim" in overrides:
            overrides["head_dim_override"] = overrides.pop("head_dim")
        return cls(**{**PRESETS[name], **overrides})


# Named sizes. Values: spec §1 (README tables, MindFormers YAMLs, the 115B config.json). eps: the 115B
# config.json says 1e-8 (verified); the other sizes use the MindFormers value 1e-5 (their HF configs are
# unpublished) -- a converted checkpoint always takes eps from its own config.json.
PRESETS: dict[str, dict[str, Any]] = {
    # tiny models for CPU tests: short training_seqlen so the NTK / mscale path is exercised cheaply
    "tiny": dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4,
                 ffn_hidden_size=160, training_seqlen=32, base_seqlen=32, seq_length=64),
    "tiny_gqa": dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     ffn_hidden_size=160, training_seqlen=32, base_seqlen=32, seq_length=64),
    "tiny_moe": dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4,
                     ffn_hidden_size=96, training_seqlen=32, base_seqlen=32, seq_length=64,
                     num_experts=4, num_experts_per_tok=2),
    "3b": dict(hidden_size=3072, num_layers=24, num_heads=24, num_kv_heads=24, ffn_hidden_size=6144),
    "7b": dict(hidden_size=4096, num_layers=30, num_heads=32, num_kv_heads=32, ffn_hidden_size=12288),
    "35b": dict(hidden_size=6144, num_layers=64, num_heads=48, num_kv_heads=48, ffn_hidden_size=20480),
    "115b": dict(hidden_size=8192, num_layers=96, num_heads=64, num_kv_heads=8, ffn_hidden_size=40960,
                 rms_norm_eps=1e-8),
    "39b_a12b": dict(hidden_size=4096, num_layers=30, num_heads=32, num_kv_heads=32, ffn_hidden_size=6144,
                     num_experts=16, num_experts_per_tok=4),
}


# keys a mindformers model_config carries for its registry; they name our classes, not architecture
_MINDFORMERS_KEYS = ("type", "arch")


def _without_mindformers_keys(data):
    if not isinstance(data, Mapping):
        return data
    return {k: v for k, v in data.items() if k not in _MINDFORMERS_KEYS}


def ntk_alpha(total_len: int, training_seqlen: int, base_seqlen: int) -> int:
    """Dynamic-NTK alpha of spec §2.5 in exact integer arithmetic.

    HF: L = max(len, training_seqlen); alpha = max(2**ceil(log2(L/base)+1) - 1, 1). ceil(log2(2L/base)) is
    the smallest n with base*2**n >= 2L, found without floating-point log (HF's float log agrees on all
    non-boundary lengths and we avoid its rounding at exact powers of two).
    """
    length = max(total_len, training_seqlen)
    if length <= base_seqlen:
        return 1
    n = 1
    while base_seqlen * 2 ** n < 2 * length:
        n += 1
    return 2 ** n - 1


def ntk_mscale(total_len: int, training_seqlen: int) -> float:
    """Attention scale factor of spec §2.5: 1 up to training_seqlen, then 0.1*ln(L/training_seqlen)+1."""
    ratio = max(total_len, training_seqlen) / training_seqlen
    return 1.0 if ratio <= 1 else 0.1 * math.log(ratio) + 1.0
