"""LoRA settings: the run yaml's `lora:` section and MindFormers' `pet_config`, read into one LoraConfig.

    lora:                                   # ours (PEFT's meaning for every key)
      rank: 8                               # r
      alpha: 16                             # scaling = alpha / rank (alpha / sqrt(rank) with use_rslora)
      dropout: 0.05                         # on the adapter input only (the base path sees x unchanged)
      target_modules: [wq, wk_v, wo]        # our module names or the family's HF names (query, key_value, q_proj,
                                            # k_proj, c_attn, ...), or one regex string (full match, as PEFT)
      exclude_modules: [lm_head]            # optional, same syntax
      use_rslora: false
      init_a: kaiming_uniform               # PEFT's default; `normal` = N(0, 0.01), MindFormers' lora_a_init
      base_dtype: auto                      # frozen base weights: auto = the compute dtype of amp_level

    model:
      model_config:
        pet_config:                         # MindFormers (same meaning)
          pet_type: lora
          lora_rank: 8
          lora_alpha: 16
          lora_dropout: 0.05
          target_modules: '.*wq|.*wk_v|.*wo'   # regex, re.match on each linear's own (last) name, as MindFormers

Nothing here imports MindSpore: configs are checked before any model is built.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..config.base import ConfigError, check_type, strict_from_dict

INIT_A = ("kaiming_uniform", "normal")
BASE_DTYPES = ("auto", "float32", "float16", "bfloat16")
MATCH_MODES = ("peft", "mindformers")


def _float(name: str, value) -> float:
    if isinstance(value, str):          # PyYAML reads 5e-2 as a string
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _targets(name: str, value, allow_none: bool = False):
    """A list of names (PEFT: a module matches if its name equals one or ends with '.' + one) or one regex."""
    if value is None and allow_none:
        return None
    if isinstance(value, str):
        try:
            re.compile(value)
        except re.error as exc:
            raise ConfigError(f"{name}: {value!r} is not a valid regular expression ({exc})") from None
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise ConfigError(f"{name} must be a non-empty list of module names or one regex string, got {value!r}")


@dataclass
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: Any = None             # list[str] | str (regex)
    exclude_modules: Any = None
    use_rslora: bool = False
    init_a: str = "kaiming_uniform"
    base_dtype: str = "auto"
    # how target_modules / exclude_modules match (not a yaml key): "peft" on whole module names (ours or the
    # family's HF names), "mindformers" (pet_config) = re.match on each linear's own attribute name
    match: str = field(default="peft", compare=False)
    source: str = field(default="lora", compare=False)

    def __post_init__(self):
        where = self.source
        check_type(f"{where}.rank", self.rank, int)
        if self.rank < 1:
            raise ConfigError(f"{where}.rank must be >= 1, got {self.rank}")
        self.alpha = _float(f"{where}.alpha", self.alpha)
        self.dropout = _float(f"{where}.dropout", self.dropout)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{where}.dropout must be in [0, 1), got {self.dropout}")
        if self.target_modules is None:
            raise ConfigError(f"{where}.target_modules is required: the linears to adapt, e.g. [wq, wk_v, wo, w1, "
                              "w2, w3] (our names) or the family's HF names ([q_proj, k_proj, v_proj, o_proj] for "
                              "Llama layouts, [query, key_value, dense] for TeleChat)")
        self.target_modules = _targets(f"{where}.target_modules", self.target_modules)
        self.exclude_modules = _targets(f"{where}.exclude_modules", self.exclude_modules, allow_none=True)
        check_type(f"{where}.use_rslora", self.use_rslora, bool)
        for name, allowed in (("init_a", INIT_A), ("base_dtype", BASE_DTYPES), ("match", MATCH_MODES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{where}.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    @property
    def scaling(self) -> float:
        """The factor of B A: alpha / r (PEFT, MindFormers) or alpha / sqrt(r) (rsLoRA)."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    @classmethod
    def from_section(cls, data: Mapping[str, Any], source: str = "lora") -> "LoraConfig":
        """The run yaml's `lora:` mapping (unknown keys fail naming the key)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping (rank, alpha, dropout, target_modules, ...), got "
                              f"{type(data).__name__}")
        bad = sorted(k for k in data if k in ("match", "source"))
        if bad:
            raise ConfigError(f"{source}: unknown config key '{bad[0]}'")
        return strict_from_dict(cls, {**data, "source": source}, source)

    @classmethod
    def from_pet_config(cls, data: Mapping[str, Any], source: str = "model.model_config.pet_config") -> "LoraConfig":
        """MindFormers' pet_config (pet_type lora) with MindFormers' meaning of every key it accepts."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
        kind = str(data.get("pet_type", "")).lower()
        if kind != "lora":
            raise ConfigError(f"{source}.pet_type: {data.get('pet_type')!r} is not supported (only lora)")
        unknown = sorted(set(data) - set(_PET_KEYS) - set(_PET_NEUTRAL))
        if unknown:
            raise ConfigError(f"{source}: unknown key '{unknown[0]}' (accepted: "
                              f"{', '.join(sorted(set(_PET_KEYS) | set(_PET_NEUTRAL)))})")
        for key, (neutral, why) in _PET_NEUTRAL.items():
            if key in data and data[key] not in neutral:
                raise ConfigError(f"{source}.{key}: {data[key]!r} is not supported ({why})")
        if data.get("target_modules") is None:
            raise ConfigError(f"{source}.target_modules is required: MindFormers' default '.*dense*|.*linear*' "
                              "names no TelechatForCausalLM projection; use e.g. '.*wq|.*wk_v|.*wo|.*w1|.*w2|.*w3'")
        kwargs = {field: data[key] for key, field in _PET_KEYS.items() if key in data}
        kwargs["init_a"] = {"normal": "normal", "he_uniform": "kaiming_uniform"}.get(
            data.get("lora_a_init", "normal"), data.get("lora_a_init"))
        return cls(**kwargs, match="mindformers", source=source)


# pet_config key -> LoraConfig field (MindFormers' LoraConfig defaults: rank 8, alpha 16, dropout 0.01)
_PET_KEYS = {"lora_rank": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout",
             "target_modules": "target_modules", "exclude_layers": "exclude_modules"}
# keys accepted only at the value that is what telechat_ms does
_PET_NEUTRAL = {
    "pet_type": (("lora", "LORA", "LoRA"), "only lora"),
    "lora_a_init": (("normal", "he_uniform"), "A is initialised N(0, 0.01) ('normal') or kaiming-uniform"),
    "lora_b_init": (("zero", "zeros"), "B starts at zero, so training starts from the base model"),
    "param_init_type": ((None, "float32"), "adapter weights are float32 master weights in the native loop"),
    "compute_dtype": ((None,), "the adapter computes in the model's compute dtype (amp_level)"),
    "freeze_include": ((None, []), "every base weight is frozen, every adapter weight trains"),
    "freeze_exclude": ((None, []), "every base weight is frozen, every adapter weight trains"),
}


def lora_from_run(run: Mapping[str, Any], source: str) -> LoraConfig | None:
    """The LoRA settings of a run yaml: its `lora:` section or model.model_config.pet_config (not both)."""
    section = run.get("lora")
    model = run.get("model") if isinstance(run.get("model"), Mapping) else {}
    model_config = model.get("model_config") if isinstance(model.get("model_config"), Mapping) else {}
    pet = model_config.get("pet_config")
    if section is not None and pet is not None:
        raise ConfigError(f"{source}: both lora: and model.model_config.pet_config are set; give one (they mean "
                          "the same, docs/training.md)")
    if section is not None:
        return LoraConfig.from_section(section, f"{source}: lora")
    if pet is not None:
        return LoraConfig.from_pet_config(pet, f"{source}: model.model_config.pet_config")
    return None
