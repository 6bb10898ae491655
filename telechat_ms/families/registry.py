"""The family table: `get(name)`, `all_families()`, and which family a preset belongs to."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..config.base import ConfigError

# modules registering a family, in the order detection tries them (most specific first)
_MODULES = ("telechat52b", "telechat2", "telechat1", "teleflm", "aquila2", "firefly", "llama2")


@dataclass(frozen=True)
class Family:
    """What telechat_ms knows about one model family. Every callable is pure data handling (no MindSpore)."""

    name: str
    description: str
    presets: Mapping[str, Mapping[str, Any]]           # preset name -> TelechatConfig fields
    tokenizer_kind: str                                # "telechat2" | "sentencepiece" | "hf" (tokenizer.json/BPE)
    default_template: str                              # name of a built-in chat template
    stop_strings: tuple[str, ...] = ()                 # generation stops at these strings (besides eos ids)
    hf_aliases: Mapping[str, str] = field(default_factory=dict)   # HF config.json name -> our field name
    detect: Callable[[Mapping[str, Any], frozenset], bool] | None = None   # (config.json, tensor keys) -> match
    config_from_hf: Callable[[Mapping[str, Any], str], Any] | None = None  # (config.json dict, source) -> config
    config_to_hf: Callable[[Any], dict] | None = None                      # config -> config.json dict
    hf_layout: Any = None          # hf_layout.HFLayout: the HF checkpoint name table and its layout helpers
    extra: Mapping[str, Any] = field(default_factory=dict)        # family-module specifics (converters, ...)


_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in _REGISTRY:
        raise ValueError(f"family {family.name!r} registered twice")
    _REGISTRY[family.name] = family
    return family


def _load() -> None:
    if not _REGISTRY:
        for module in _MODULES:
            importlib.import_module(f".{module}", __package__)


def all_families() -> list[Family]:
    _load()
    return list(_REGISTRY.values())


def get(name: str) -> Family:
    _load()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model family {name!r} (known: {', '.join(_REGISTRY)})")
    return _REGISTRY[name]


def family_of_preset(preset: str) -> Family:
    for family in all_families():
        if preset in family.presets:
            return family
    known = ", ".join(p for f in all_families() for p in f.presets)
    raise ConfigError(f"unknown preset {preset!r} (available: {known})")


def detect(data: Mapping[str, Any], keys=frozenset(), family: str | None = None) -> Family:
    """The family of an HF checkpoint from its config.json (and tensor names); `family` overrides."""
    if family is not None:
        return get(family)
    for candidate in all_families():
        if candidate.detect is not None and candidate.detect(data, frozenset(keys)):
            return candidate
    raise ConfigError(f"cannot tell the model family of this checkpoint (model_type "
                      f"{data.get('model_type')!r}, architectures {data.get('architectures')!r}); pass "
                      f"--family NAME (known: {', '.join(f.name for f in all_families())})")
