"""Model architecture config: one dataclass for every family (TeleChat2, TeleChat v1, the FLM family, Aquila2,
Llama-2). Each family's HF config.json names, defaults and presets live in telechat_ms/families/.

Facts (field meanings, HF names, preset values): spec telechat2.md §1-§2, §4 and families.md.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import yaml

from .base import ConfigError, atomic_write_text, check_positive, check_type, load_yaml, strict_from_dict

DTYPES = ("float32", "float16", "bfloat16")
ROPE_VARIANTS = ("telechat2", "telechat1", "flm", "plain")      # implemented in telechat_ms/model/rotary.py
ROPE_SCALINGS = ("none", "linear", "dynamic")

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
    rope_theta: float = 10000.0              # TeleChat2's HF file hard-codes 10000; Llama-family config.json sets it
    rotary_fp16_rounding: bool = True        # round cos/sin to fp16 like the TeleChat HF files (exact HF logits)
    # how (base, mscale) follow the sequence length: a name in telechat_ms.model.rotary.ROPE_VARIANTS
    # (telechat2 | telechat1 | flm | plain); see docs/models.md
    rope_variant: str = "telechat2"
    rope_scaling: str = "none"               # HF Llama rope_scaling type: none | linear | dynamic
    rope_scaling_factor: float = 1.0         # linear: positions / factor; dynamic: NTK growth past base_seqlen
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    embed_layernorm: bool = False
    apply_residual_connection_post_layernorm: bool = False
    tie_word_embeddings: bool = False        # lm_head reads the embedding table (TeleChat v1 7B)
    attention_out_bias: bool = True          # bias on the attention output projection (TeleChat: dense.bias)
    mlp_out_bias: bool = True                # bias on the MLP down projection (TeleChat: down_proj.bias)
    embedding_multiplier: float = 1.0        # embeddings *= this (Tele-FLM / FLM-2 `input_mult`)
    logit_multiplier: float = 1.0            # logits *= this (Tele-FLM / FLM-2 `output_mult / mup_scale_factor`)
    # the checkpoint family (telechat_ms/families): decides HF layouts, tokenizer, template and stop rules;
    # model code never reads it
    family: str = "telechat2"
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
    # weight-only-quantized decoder linears (GPTQ / AWQ checkpoints kept int4 / int8): a
    # telechat_ms.quant.spec.QuantizationConfig (yaml: a mapping), None = float weights. docs/quantization.md
    quantization: Any = None

    def __post_init__(self):
        from ..quant.spec import QuantizationConfig   # pylint: disable=import-outside-toplevel  (import cycle)
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        self.quantization = QuantizationConfig.from_value(self.quantization)
        if self.quantization is not None and self.num_experts:
            raise ConfigError(f"quantization is not supported with MoE (num_experts={self.num_experts})")
        if self.head_dim_override is not None:
            check_positive("head_dim", self.head_dim_override)
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "ffn_hidden_size", "training_seqlen", "base_seqlen", "seq_length"):
            check_positive(name, getattr(self, name))
        for name in ("rms_norm_eps", "rope_theta", "hidden_dropout", "attention_dropout", "initializer_range",
                     "rope_scaling_factor", "embedding_multiplier", "logit_multiplier"):
            check_type(name, getattr(self, name), float)
        for name in ("rotary_fp16_rounding", "embed_layernorm", "apply_residual_connection_post_layernorm",
                     "tie_word_embeddings", "attention_out_bias", "mlp_out_bias"):
            check_type(name, getattr(self, name), bool)
        for name in ("rope_variant", "rope_scaling", "family"):
            check_type(name, getattr(self, name), str)
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
        self._check_rope_and_scales()
        for name in ("unk_token_id", "bos_token_id", "eos_token_id", "pad_token_id"):
            tid = getattr(self, name)
            check_type(name, tid, int)
            if not 0 <= tid < self.vocab_size:
                raise ConfigError(f"{name} ({tid}) must be in [0, vocab_size={self.vocab_size})")
        for name in ("compute_dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(f"{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
        self._check_moe()

    def _check_rope_and_scales(self):
        if self.rope_variant not in ROPE_VARIANTS:
            raise ConfigError(f"rope_variant must be one of {', '.join(ROPE_VARIANTS)}, got {self.rope_variant!r}")
        if self.rope_scaling not in ROPE_SCALINGS:
            raise ConfigError(f"rope_scaling must be one of {', '.join(ROPE_SCALINGS)}, got {self.rope_scaling!r}")
        if self.rope_scaling != "none" and self.rope_variant != "plain":
            raise ConfigError(f"rope_scaling={self.rope_scaling!r} applies to rope_variant 'plain' (HF Llama), "
                              f"not {self.rope_variant!r}")
        if self.rope_scaling_factor <= 0 or (self.rope_scaling != "none" and self.rope_scaling_factor < 1):
            raise ConfigError(f"rope_scaling_factor must be >= 1 (> 0 without scaling), got {self.rope_scaling_factor}")
        for name in ("embedding_multiplier", "logit_multiplier"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a finite number > 0, got {value}")
        if self.is_moe and not self.mlp_out_bias:
            raise ConfigError("mlp_out_bias=False is not supported with MoE (num_experts > 0): the MoE experts "
                              "always carry the TeleChat2 down_proj bias")

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
        attn = q * h + 2 * self.num_kv_heads * hd * h + h * q + h * self.attention_out_bias  # q, kv, out (+bias)
        expert = 3 * h * f + h * self.mlp_out_bias                     # gate, up, down (+bias)
        if self.is_moe:
            n_exp = self.num_experts_per_tok if active else self.num_experts
            mlp = n_exp * expert + self.num_experts * h                # experts + router
        else:
            mlp = expert
        layer = attn + mlp + 2 * h                                     # + two norms
        extra = h if self.embed_layernorm else 0
        embeddings = (1 if self.tie_word_embeddings else 2) * self.vocab_size * h
        return embeddings + self.num_layers * layer + h + extra

    # ----- (de)serialisation -----
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        del out["head_dim_override"]
        if self.quantization is None:          # float models: the key is absent, as before it existed
            del out["quantization"]
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
    def from_hf_config(cls, path_or_dict: str | Mapping[str, Any], family: str | None = None,
                       **overrides) -> "TelechatConfig":
        """Build from an HF `config.json` (path, directory or dict) of any known family (detected from
        model_type / architectures / keys unless `family` names it); HF names are accepted."""
        from ..families import detect   # pylint: disable=import-outside-toplevel
        from ..families.hf_config import read_hf_json   # pylint: disable=import-outside-toplevel
        data, source = read_hf_json(path_or_dict)
        config = detect(data, family=family).config_from_hf(data, source)
        return dataclasses.replace(config, **overrides) if overrides else config

    def to_hf_config(self) -> dict[str, Any]:
        """HF `config.json` content in this config's family naming."""
        from ..families import get   # pylint: disable=import-outside-toplevel
        return get(self.family).config_to_hf(self)

    @classmethod
    def preset(cls, name: str, **overrides) -> "TelechatConfig":
        """A named size of any family (`PRESETS` lists them all)."""
        from ..families import family_of_preset   # pylint: disable=import-outside-toplevel
        family = family_of_preset(name)
        if "head_dim" in overrides:
            overrides["head_dim_override"] = overrides.pop("head_dim")
        return cls(**{"family": family.name, **family.presets[name], **overrides})


class _Presets(Mapping):
    """Every family's presets by name (read from telechat_ms/families on first use)."""

    def _all(self) -> dict[str, dict[str, Any]]:
        from ..families import all_families   # pylint: disable=import-outside-toplevel
        return {name: {"family": f.name, **fields} for f in all_families() for name, fields in f.presets.items()}

    def __getitem__(self, name):
        return self._all()[name]

    def __iter__(self):
        return iter(self._all())

    def __len__(self):
        return len(self._all())


PRESETS: Mapping[str, dict[str, Any]] = _Presets()


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
