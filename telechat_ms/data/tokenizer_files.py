"""What a HF checkpoint directory says about its tokenizer: special tokens, added tokens, flags, chat template.

Reads `tokenizer_config.json`, `special_tokens_map.json`, `added_tokens.json` and `chat_template.jinja` with
the precedence `transformers` (4.57) uses in `PreTrainedTokenizerBase.from_pretrained`:
  * `added_tokens_decoder` in tokenizer_config.json (id -> {content, special, lstrip, rstrip, single_word,
    normalized}) is the modern record; when it is present, special_tokens_map.json and added_tokens.json are
    not read (HF ignores them too);
  * without it (older checkpoints) special_tokens_map.json overrides the config's special tokens and
    added_tokens.json (token -> id) lists the added tokens;
  * `chat_template.jinja` beside the config wins over the config's `chat_template` entry; a list-valued
    `chat_template` ([{name, template}]) becomes a dict of named templates.
Everything is plain data; the tokenizer classes (sp_tokenizer.py, hf_tokenizer.py) apply it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..config.base import ConfigError

SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"
TEMPLATE_FILE = "chat_template.jinja"


class TokenizerError(ConfigError):
    """A tokenizer file is missing, unreadable or inconsistent; the message names the file."""


@dataclass(frozen=True)
class AddedTokenSpec:
    """One HF AddedToken: matched in raw text before the model tokenizes the rest."""

    content: str
    special: bool = True
    lstrip: bool = False          # eats the whitespace on its left
    rstrip: bool = False          # eats the whitespace on its right
    single_word: bool = False     # only matched as a whole word
    normalized: bool = False


@dataclass
class TokenizerSettings:
    """The parts of a checkpoint's tokenizer files that change ids or templates."""

    directory: str | None = None
    tokenizer_class: str | None = None
    special: dict[str, AddedTokenSpec | None] = field(default_factory=dict)  # bos_token, ... -> token (None: null)
    additional_special: list[AddedTokenSpec] = field(default_factory=list)
    added: dict[int, AddedTokenSpec] = field(default_factory=dict)        # id -> token (added_tokens_decoder)
    flags: dict[str, Any] = field(default_factory=dict)                   # add_bos_token, legacy, ...
    chat_template: str | dict[str, str] | None = None
    chat_template_source: str | None = None

    def flag(self, name: str, default: Any) -> Any:
        value = self.flags.get(name)
        return default if value is None else value

    def special_tokens_map(self) -> dict[str, Any]:
        """HF `tokenizer.special_tokens_map`: the chat-template variables bos_token, eos_token, ..."""
        out: dict[str, Any] = {key: tok.content for key, tok in self.special.items() if tok is not None}
        if self.additional_special:
            out["additional_special_tokens"] = [tok.content for tok in self.additional_special]
        return out


def read_json(path: str) -> Any:
    """json.load with a TokenizerError naming the file and line on failure."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise TokenizerError(f"{path}: file not found") from None
    except OSError as exc:
        raise TokenizerError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise TokenizerError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise TokenizerError(f"{path}: invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None


def _token_spec(value: Any, where: str, special: bool | None = None) -> AddedTokenSpec | None:
    """A token written as a string or as an AddedToken dict ({"__type": "AddedToken", "content": ...})."""
    if value is None:
        return None
    if isinstance(value, str):
        # HF turns a plain-string special token into AddedToken(normalized=False, special=True)
        return AddedTokenSpec(value, special=True if special is None else special)
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        flags = {k: bool(value.get(k, False)) for k in ("lstrip", "rstrip", "single_word")}
        is_special = value.get("special", True if special is None else special)
        return AddedTokenSpec(value["content"], bool(is_special), normalized=bool(value.get("normalized",
                                                                                      not is_special)), **flags)
    raise TokenizerError(f"{where}: expected a token string or an AddedToken object with 'content', "
                         f"got {json.dumps(value, ensure_ascii=False)[:80]}")


def _read_added_decoder(decoder: Any, path: str) -> dict[int, AddedTokenSpec]:
    if not isinstance(decoder, dict):
        raise TokenizerError(f"{path}: added_tokens_decoder must be an object (id -> token)")
    out: dict[int, AddedTokenSpec] = {}
    for key, value in decoder.items():
        try:
            tid = int(key)
        except ValueError:
            raise TokenizerError(f"{path}: added_tokens_decoder key {key!r} is not a token id") from None
        out[tid] = _token_spec(value, f"{path}: added_tokens_decoder[{key}]")
    return out


def _read_templates(config: dict, directory: str, path: str) -> tuple[Any, str | None]:
    jinja = os.path.join(directory, TEMPLATE_FILE)
    if os.path.isfile(jinja):
        try:
            with open(jinja, encoding="utf-8") as fh:
                return fh.read(), jinja
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenizerError(f"{jinja}: cannot read chat template: {exc}") from None
    template = config.get("chat_template")
    if template is None or isinstance(template, str):
        return template, (path if template is not None else None)
    if isinstance(template, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                          and isinstance(t.get("template"), str) for t in template):
        return {t["name"]: t["template"] for t in template}, path
    raise TokenizerError(f"{path}: chat_template must be a string or a list of {{name, template}} objects")


FLAG_KEYS = ("add_bos_token", "add_eos_token", "legacy", "add_prefix_space", "clean_up_tokenization_spaces",
             "split_special_tokens", "spaces_between_special_tokens")


def read_settings(directory: str | None) -> TokenizerSettings:
    """Settings of a checkpoint directory; a missing directory or config gives HF's defaults (empty)."""
    settings = TokenizerSettings(directory=directory)
    if directory is None or not os.path.isdir(directory):
        return settings
    path = os.path.join(directory, CONFIG_FILE)
    config = read_json(path) if os.path.isfile(path) else {}
    if not isinstance(config, dict):
        raise TokenizerError(f"{path}: expected a JSON object")
    settings.tokenizer_class = config.get("tokenizer_class")
    settings.flags = {k: config[k] for k in FLAG_KEYS if k in config}
    for key in SPECIAL_KEYS:
        if key in config:           # an explicit null unsets the class default (Llama-2's "pad_token": null)
            settings.special[key] = _token_spec(config[key], f"{path}: {key}")
    extra = config.get("additional_special_tokens") or []
    settings.additional_special = [_token_spec(t, f"{path}: additional_special_tokens") for t in extra]
    if "added_tokens_decoder" in config:
        settings.added = _read_added_decoder(config["added_tokens_decoder"], path)
    else:
        _read_legacy_files(settings, directory)
    settings.chat_template, settings.chat_template_source = _read_templates(config, directory, path)
    return settings


def _read_legacy_files(settings: TokenizerSettings, directory: str) -> None:
    """Pre-2023 checkpoints: special_tokens_map.json overrides the config, added_tokens.json lists tokens."""
    path = os.path.join(directory, SPECIAL_MAP_FILE)
    if os.path.isfile(path):
        mapping = read_json(path)
        if not isinstance(mapping, dict):
            raise TokenizerError(f"{path}: expected a JSON object")
        for key, value in mapping.items():
            if key in SPECIAL_KEYS:
                settings.special[key] = _token_spec(value, f"{path}: {key}", special=True)
            elif key == "additional_special_tokens" and isinstance(value, list):
                known = {t.content for t in settings.additional_special}
                settings.additional_special += [s for s in (_token_spec(v, f"{path}: {key}", special=True)
                                                            for v in value) if s.content not in known]
    path = os.path.join(directory, ADDED_TOKENS_FILE)
    if os.path.isfile(path):
        table = read_json(path)
        if not isinstance(table, dict) or not all(isinstance(v, int) for v in table.values()):
            raise TokenizerError(f"{path}: expected an object token -> id")
        specials = {t.content for t in list(settings.special.values()) + settings.additional_special if t}
        for content, tid in table.items():
            special = content in specials
            settings.added[tid] = AddedTokenSpec(content, special=special, normalized=not special)
