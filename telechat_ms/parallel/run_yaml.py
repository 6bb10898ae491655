"""Read a mindformers-format run yaml (yaml_configs/): `base_config` inheritance, model and parallel parts.

`base_config` follows mindformers' MindFormerConfig: a path or list of paths relative to the including file;
the bases are combined with a shallow update (so each base should own whole top-level sections) and the
including file is then merged into them key by key (nested mappings merge, everything else replaces).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from ..config.base import ConfigError, load_yaml
from ..config.model import TelechatConfig
from ..config.parallel import ParallelConfig

BASE_KEY = "base_config"
# keys mindformers keeps in model.model_config that are not architecture (ours live in ParallelConfig)
MODEL_CONFIG_RUN_KEYS = frozenset({"type", "offset", "pp_interleave_num", "checkpoint_name_or_path",
                                   "batch_size", "use_flash_attention", "use_past", "is_dynamic",
                                   "block_size", "num_blocks", "use_seq_parallel"})


def merge(into: Mapping[str, Any], update: Mapping[str, Any]) -> dict:
    """`update` merged into a copy of `into` (mindformers _merge_a_into_b)."""
    out = dict(into)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_run_yaml(path: str, _depth: int = 0) -> dict:
    """The fully resolved run config of `path` (bases applied)."""
    if _depth > 8:
        raise ConfigError(f"{path}: base_config nesting deeper than 8 (a cycle?)")
    data = load_yaml(path) or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a run yaml must be a mapping")
    data = dict(data)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    combined: dict = {}
    for base in bases if isinstance(bases, list) else [bases]:
        combined.update(load_run_yaml(os.path.join(os.path.dirname(path), base), _depth + 1))
    return merge(combined, data)


def model_config_of(run: Mapping[str, Any], source: str = "run yaml") -> TelechatConfig:
    """TelechatConfig from `model.model_config` (or a top-level `model_config`), run-only keys dropped."""
    section = (run.get("model") or {}).get("model_config") if isinstance(run.get("model"), Mapping) else None
    if section is None:
        section = run.get("model_config")
    if not isinstance(section, Mapping):
        raise ConfigError(f"{source}: no model.model_config section")
    return TelechatConfig.from_dict({k: v for k, v in section.items() if k not in MODEL_CONFIG_RUN_KEYS}, source)


def parallel_config_of(run: Mapping[str, Any], source: str = "run yaml") -> ParallelConfig:
    return ParallelConfig.from_run_config(run, source)


def max_device_memory_gb(run: Mapping[str, Any]) -> float | None:
    """context.max_device_memory ("58GB") in GB, or None."""
    value = (run.get("context") or {}).get("max_device_memory")
    if value is None:
        return None
    text = str(value).strip().upper()
    if not text.endswith("GB"):
        raise ConfigError(f"context.max_device_memory must look like '58GB', got {value!r}")
    return float(text[:-2])


def micro_batch_size(run: Mapping[str, Any]) -> int:
    return int((run.get("runner_config") or {}).get("batch_size", 1))


def device_count_comment(path: str) -> int | None:
    """The device count a shipped yaml states in its first comment lines ("# devices: 16")."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            if "devices:" in line:
                return int(line.split("devices:")[1].split()[0])
    return None
