"""Shared machinery for the typed config dataclasses: strict dict/yaml loading with clear errors."""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    """A configuration value or key is invalid. The message names the field(s) and value(s)."""


def _field_types(cls) -> dict[str, Any]:
    return {f.name: f for f in dataclasses.fields(cls)}


def strict_from_dict(cls, data: Mapping[str, Any], source: str, aliases: Mapping[str, str] | None = None,
                     ignored: frozenset[str] = frozenset()):
    """Build dataclass `cls` from `data`.

    `aliases` maps foreign names (e.g. HF's `n_layer`) to field names; keys in `ignored` are accepted
    and dropped (documented leftovers); any other unknown key raises ConfigError naming the key and `source`.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of config fields, got {type(data).__name__}")
    fields = _field_types(cls)
    aliases = aliases or {}
    kwargs: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in data.items():
        if key in ignored:
            continue
        name = aliases.get(key, key)
        if name not in fields:
            raise ConfigError(f"{source}: unknown config key '{key}' (valid keys: {', '.join(sorted(fields))})")
        if name in kwargs and kwargs[name] != value:
            raise ConfigError(f"{source}: '{key}' and '{origin[name]}' both set field '{name}' "
                              f"to different values ({value!r} vs {kwargs[name]!r})")
        kwargs[name] = value
        origin[name] = key
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def check_type(name: str, value: Any, kind: type | tuple, allow_none: bool = False) -> None:
    """Raise ConfigError unless `value` is an instance of `kind` (bool is never accepted as int)."""
    if value is None and allow_none:
        return
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{name} must be {'/'.join(k.__name__ for k in kinds)}, got {value!r}")
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return
    if not isinstance(value, kinds):
        raise ConfigError(f"{name} must be {'/'.join(k.__name__ for k in kinds)}, got {value!r}")


def check_positive(name: str, value: Any) -> None:
    check_type(name, value, int)
    if value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value}")


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` to `path` via a temp file in the same directory and a rename (no partial files)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def output_path_problems(flag: str, path: str, overwrite: bool) -> list[str]:
    """Why `path` cannot be written as `flag`'s output (missing directory, existing file without --overwrite)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return [f"{flag} {path}: directory {directory} does not exist"]
    if os.path.lexists(path) and not overwrite:
        return [f"{flag} {path} already exists; pass --overwrite to replace it"]
    return []


def load_json(path: str) -> Any:
    """Read a JSON file; a missing file or a syntax error becomes ConfigError naming the file and line."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None


def load_yaml(path: str) -> Any:
    """Read a yaml file; syntax errors become ConfigError naming the file and line."""
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid yaml: {exc}") from None
