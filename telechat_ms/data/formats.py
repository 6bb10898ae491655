"""The two SFT jsonl formats (spec §7) -> a list of chat messages, with errors naming file, line and field.

mindformers  {"input": "<_user>q1<_bot>a1<_user>q2", "output": "a2"}  (the `<_user>` prefix is optional;
             history turns live inside `input`, the last answer in `output`)
official     {"system": "...", "dialog": [{"role": "user"|"bot"|"assistant"|"tool", "content": "..."}],
              "tool": bool, "multiturn": bool, "tools": [...] (optional, rendered in the system block)}
Both become [{"role": ..., "content": ...}, ...] for telechat_ms.data.chat_template (any template).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterator

from ..config.base import ConfigError

FORMATS = ("mindformers", "official")
_TURN_MARK = re.compile(r"(<_user>|<_bot>)")


class DataError(ConfigError):
    """Bad input data; the message starts with `file:line:` where there is one."""


@dataclass
class Sample:
    where: str                       # "file:line" for messages
    messages: list[dict]
    tools: list | None = None
    tool: bool = False               # the official format's flag: the sample uses tool tokens
    template: Any = None             # the ChatTemplate, set by the reader from the format / --chat-template


def detect_format(obj: Any) -> str | None:
    if isinstance(obj, dict) and "dialog" in obj:
        return "official"
    if isinstance(obj, dict) and "input" in obj and "output" in obj:
        return "mindformers"
    return None


def _require_str(obj: dict, key: str, optional: bool = False) -> str:
    value = obj.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        shown = "missing" if key not in obj else f"{type(value).__name__} {value!r:.40}"
        raise DataError(f"field '{key}' must be a string, got {shown}")
    return value


def parse_mindformers(obj: Any) -> Sample:
    """Split `input` at <_user>/<_bot> into alternating turns; `output` is the final answer."""
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}")
    text, output = _require_str(obj, "input"), _require_str(obj, "output")
    if not text.startswith("<_user>"):
        text = "<_user>" + text
    parts = _TURN_MARK.split(text)[1:]          # [mark, text, mark, text, ...]
    messages = []
    for i in range(0, len(parts), 2):
        mark, content = parts[i], parts[i + 1]
        want = "<_user>" if i % 4 == 0 else "<_bot>"
        if mark != want:
            raise DataError(f"field 'input': turn {i // 2 + 1} starts with {mark}, expected {want} "
                            "(history must alternate <_user>q<_bot>a)")
        if mark == "<_bot>" and content.endswith("<_end>"):
            content = content[:-len("<_end>")]  # tolerate a written-out end marker; it is added as an id
        messages.append({"role": "user" if mark == "<_user>" else "assistant", "content": content})
    if messages[-1]["role"] != "user":
        raise DataError("field 'input' must end with a user question (the answer goes in 'output')")
    messages.append({"role": "assistant", "content": output})
    return Sample("", messages)


def _parse_dialog(dialog: Any) -> list[dict]:
    if not isinstance(dialog, list) or not dialog:
        raise DataError("field 'dialog' must be a non-empty list of {role, content} objects")
    messages = []
    for i, turn in enumerate(dialog):
        if not isinstance(turn, dict):
            raise DataError(f"field 'dialog[{i}]' must be an object, got {type(turn).__name__}")
        role = turn.get("role")
        if role not in ("user", "bot", "assistant", "tool"):
            raise DataError(f"field 'dialog[{i}].role' must be user, bot, assistant or tool, got {role!r}")
        try:
            content = _require_str(turn, "content", optional=bool(turn.get("tool_calls")))
        except DataError as exc:
            raise DataError(f"field 'dialog[{i}]': {exc}") from None
        message = {"role": "assistant" if role == "bot" else role, "content": content}
        if turn.get("tool_calls"):
            message["tool_calls"] = turn["tool_calls"]
        messages.append(message)
    if messages[-1]["role"] != "assistant":
        raise DataError(f"field 'dialog' must end with a bot turn (the answer to train on), "
                        f"ends with {dialog[-1].get('role')!r}")
    return messages


def parse_official(obj: Any) -> Sample:
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}")
    system = _require_str(obj, "system", optional=True)
    for flag in ("tool", "multiturn"):
        if flag in obj and not isinstance(obj[flag], bool):
            raise DataError(f"field '{flag}' must be true or false, got {obj[flag]!r:.40}")
    tools = obj.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise DataError(f"field 'tools' must be a list of tool descriptions, got {type(tools).__name__}")
    messages = _parse_dialog(obj.get("dialog"))
    # an empty or missing system prompt means the template's default one (as the official DeepSpeed code)
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return Sample("", messages, tools or None, bool(obj.get("tool", False)))


PARSERS = {"mindformers": parse_mindformers, "official": parse_official}


def count_lines(path: str) -> int:
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


def read_jsonl(path: str) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, parsed object or None, error message or None) per non-blank line."""
    try:
        fh = open(path, "rb")  # binary: a decoding error must name its line, not abort the file
    except OSError as exc:
        raise DataError(f"{path}: cannot open input: {exc.strerror}") from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, None, f"not UTF-8 ({exc.reason} at byte {exc.start})"
                continue
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield lineno, None, f"invalid JSON: {exc.msg} (column {exc.colno})"
