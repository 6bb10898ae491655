"""Generation settings (HF generate semantics), loadable from a TeleChat2 `generation_config.json`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .base import ConfigError, check_type, load_json, strict_from_dict

# generation_config.json keys we accept and drop (bookkeeping, or token ids the tokenizer already defines)
_HF_IGNORED = frozenset({"_from_model_config", "transformers_version", "bos_token_id", "pad_token_id",
                         "user_token_id", "bot_token_id", "use_cache", "num_beams", "chat_format",
                         "max_window_size", "trust_remote_code"})


@dataclass
class GenerationConfig:
    """Defaults follow transformers' GenerationConfig; TeleChat2 downloads override them (spec §6.3)."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    eos_token_id: list[int] = field(default_factory=lambda: [2])
    stop_strings: list[str] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.eos_token_id, int) and not isinstance(self.eos_token_id, bool):
            self.eos_token_id = [self.eos_token_id]
        check_type("max_new_tokens", self.max_new_tokens, int)
        check_type("do_sample", self.do_sample, bool)
        check_type("top_k", self.top_k, int)
        check_type("seed", self.seed, int)
        for name in ("temperature", "top_p", "repetition_penalty"):
            check_type(name, getattr(self, name), float)
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature} (use do_sample=False for greedy)")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not isinstance(self.eos_token_id, list) or not all(isinstance(t, int) for t in self.eos_token_id):
            raise ConfigError(f"eos_token_id must be an int or a list of ints, got {self.eos_token_id!r}")
        if not isinstance(self.stop_strings, list) or not all(isinstance(s, str) and s for s in self.stop_strings):
            raise ConfigError(f"stop_strings must be a list of non-empty strings, got {self.stop_strings!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "generation config") -> "GenerationConfig":
        return strict_from_dict(cls, data, source, ignored=_HF_IGNORED)

    @classmethod
    def from_json(cls, path: str) -> "GenerationConfig":
        """Read an HF `generation_config.json` (e.g. the 115B one: do_sample false, top_k 5, ...)."""
        return cls.from_dict(load_json(path), source=path)
