"""TeleChat2 chat template (spec §6.2(a), the 3B/7B/35B-Nov tokenizer template) as typed pieces.

A rendering is a list of `Piece`s: special tokens (kept apart so they become ids, never text that could be
re-split) and text, each tagged with whether an SFT loss is put on it. The same list gives
  * the text `apply_chat_template(..., tokenize=False)` would produce (`render_text`),
  * the ids the HF slow tokenizer would produce for that text (`render_ids`): adjacent text pieces are
    merged first, because HF only splits at special tokens and each chunk gets its own dummy-prefix `▁`,
  * (ids, labels) for training (`render_training`).
A second style, `mindformers`, is the MindFormers port's SFT layout (spec §7.1): `<_start>` then
`<_user>q<_bot>a<_end>` per turn, no system block, no newlines.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from ..config.base import ConfigError

IGNORE_INDEX = -100

DEFAULT_SYSTEM_PROMPT = ("你是中国电信星辰语义大模型，英文名是TeleChat，你是由中电信人工智能科技有限公司和"
                         "中国电信人工智能研究院（TeleAI）研发的人工智能助手。")
TOOLS_HEADER = ("\n\n# 可用工具\n你可以调用<tools></tools>标签中包含的一个或多个工具来辅助你回答问题,"
                "以下是可用工具详情：\n<tools>\n")
TOOLS_FOOTER = ("</tools>\n\n# 调用方法\n你需要遵循工具的要求，使用json格式返回工具名称及参数，并用"
                "<tool_call></tool_call>包含。下方是一个调用模板：\n<tool_call>\n"
                "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>\n\n")

ASSISTANT_ROLES = ("assistant", "bot")
ROLES = ("system", "user", "assistant", "bot", "tool")
TOOL_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
STYLES = ("chat", "mindformers")


class TemplateError(ConfigError):
    """A conversation cannot be rendered (bad role/field, tools without tool tokens in the vocab)."""


@dataclass(frozen=True)
class Piece:
    value: str          # the special-token string or the text
    special: bool       # True: one token id; False: text to encode
    train: bool         # label = input id (True) or IGNORE_INDEX (False)


def _tojson(value: Any) -> str:
    # HF's chat-template `tojson` filter: json.dumps with ensure_ascii=False and default separators
    return json.dumps(value, ensure_ascii=False)


def _check_messages(messages: Sequence[dict]) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TemplateError("messages must be a non-empty list of {role, content} objects")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise TemplateError(f"messages[{i}] must be an object, got {type(msg).__name__}")
        if msg.get("role") not in ROLES:
            raise TemplateError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {msg.get('role')!r}")
        content = msg.get("content")
        if content is not None and not isinstance(content, str):
            raise TemplateError(f"messages[{i}].content must be a string, got {type(content).__name__}")
        if msg["role"] == "system" and i != 0:
            raise TemplateError(f"messages[{i}]: a system message is only allowed first")


def _system_pieces(messages: Sequence[dict], tools: Sequence | None) -> list[Piece]:
    has_system = messages[0]["role"] == "system"
    system = (messages[0].get("content") or "") if has_system else DEFAULT_SYSTEM_PROMPT
    if not tools:
        return [Piece("<_system>", True, False), Piece(system + "\n", False, False)]
    text = system + TOOLS_HEADER + "".join(_tojson(tool) + "\n" for tool in tools) + TOOLS_FOOTER
    return [Piece("<_system>", True, False), Piece(text, False, False)]


def _tool_call_text(call: Any, where: str) -> str:
    if isinstance(call, dict) and isinstance(call.get("function"), dict):
        call = call["function"]          # OpenAI style {"type": "function", "function": {...}}
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise TemplateError(f"{where}: a tool call must be an object with a string 'name'")
    return '\n{"name": "' + call["name"] + '", "arguments": ' + _tojson(call.get("arguments")) + "}\n"


def _assistant_pieces(msg: dict, where: str, train_turn_tokens: bool) -> list[Piece]:
    pieces = [Piece("<_bot>", True, train_turn_tokens)]
    if msg.get("content"):
        pieces.append(Piece(msg["content"], False, True))
    calls = msg.get("tool_calls") or []
    if not isinstance(calls, list):
        raise TemplateError(f"{where}.tool_calls must be a list")
    for j, call in enumerate(calls):
        if j:
            pieces.append(Piece("\n", False, True))
        text = _tool_call_text(call, f"{where}.tool_calls[{j}]")
        pieces += [Piece("<tool_call>", True, True), Piece(text, False, True), Piece("</tool_call>", True, True)]
    return pieces + [Piece("<_end>", True, True), Piece("\n", False, False)]


def chat_pieces(messages: Sequence[dict], tools: Sequence | None = None, add_generation_prompt: bool = False,
                train_turn_tokens: bool = False) -> list[Piece]:
    """Template (a). `train_turn_tokens` also trains every <_user>/<_bot> (official DeepSpeed SFT loss mask)."""
    _check_messages(messages)
    if tools is not None and not isinstance(tools, (list, tuple)):
        raise TemplateError("tools must be a list of tool descriptions")
    pieces = _system_pieces(messages, tools)
    for i, msg in enumerate(messages):
        role, content = msg["role"], msg.get("content") or ""
        if role == "user":
            pieces += [Piece("<_user>", True, train_turn_tokens), Piece(content, False, False)]
        elif role in ASSISTANT_ROLES:
            pieces += _assistant_pieces(msg, f"messages[{i}]", train_turn_tokens)
        elif role == "tool":
            if i == 0 or messages[i - 1]["role"] != "tool":
                pieces += [Piece("<_user>", True, train_turn_tokens), Piece("<tool_response>", True, False)]
            else:
                pieces += [Piece("\n", False, False), Piece("<tool_response>", True, False)]
            pieces += [Piece("\n" + content + "\n", False, False), Piece("</tool_response>", True, False)]
    if add_generation_prompt:
        pieces.append(Piece("<_bot>", True, False))
    return pieces


def mindformers_pieces(messages: Sequence[dict], add_generation_prompt: bool = False,
                       train_turn_tokens: bool = False) -> list[Piece]:
    """MindFormers SFT layout: <_start> + Σ <_user>q<_bot>a<_end>; user/assistant turns only."""
    _check_messages(messages)
    pieces = [Piece("<_start>", True, False)]
    for i, msg in enumerate(messages):
        role, content = msg["role"], msg.get("content") or ""
        if role == "user":
            pieces += [Piece("<_user>", True, train_turn_tokens), Piece(content, False, False)]
        elif role in ASSISTANT_ROLES:
            pieces += [Piece("<_bot>", True, train_turn_tokens), Piece(content, False, True),
                       Piece("<_end>", True, True)]
        else:
            raise TemplateError(f"messages[{i}]: role {role!r} is not supported by the mindformers style "
                                "(user/assistant turns only; use the chat style)")
    if add_generation_prompt:
        pieces.append(Piece("<_bot>", True, False))
    return pieces


def render_pieces(messages: Sequence[dict], style: str = "chat", tools: Sequence | None = None,
                  add_generation_prompt: bool = False, train_turn_tokens: bool = False) -> list[Piece]:
    if style == "chat":
        return chat_pieces(messages, tools, add_generation_prompt, train_turn_tokens)
    if style == "mindformers":
        if tools:
            raise TemplateError("tools are not supported by the mindformers style; use the chat style")
        return mindformers_pieces(messages, add_generation_prompt, train_turn_tokens)
    raise TemplateError(f"template style must be one of {', '.join(STYLES)}, got {style!r}")


def render_text(messages: Sequence[dict], style: str = "chat", tools: Sequence | None = None,
                add_generation_prompt: bool = False) -> str:
    """The prompt string (what HF apply_chat_template(tokenize=False) returns for style 'chat')."""
    return "".join(p.value for p in render_pieces(messages, style, tools, add_generation_prompt))


def needs_tool_tokens(pieces: Sequence[Piece]) -> bool:
    return any(p.value in TOOL_TOKENS for p in pieces if p.special) or \
        any(tok in p.value for p in pieces if not p.special for tok in TOOL_TOKENS)


def _merge(pieces: Sequence[Piece]) -> list[Piece]:
    """Join adjacent text pieces: HF encodes each run of text between special tokens as one chunk."""
    merged: list[Piece] = []
    for p in pieces:
        if not p.special and merged and not merged[-1].special:
            if merged[-1].train != p.train:   # the template never does this; a label split mid-chunk is undefined
                raise TemplateError(f"internal: trained and untrained text in one chunk near {p.value[:20]!r}")
            merged[-1] = Piece(merged[-1].value + p.value, False, p.train)
        elif p.special or p.value:
            merged.append(p)
    return merged


def render_training(tokenizer, pieces: Sequence[Piece]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with labels = id on trained pieces and IGNORE_INDEX elsewhere."""
    if needs_tool_tokens(pieces) and not tokenizer.has_tool_tokens:
        raise TemplateError("this conversation uses tool tokens (<tool_call>/<tool_response>) but the tokenizer's "
                            "vocab has none (115B layout); render it without tools or use a 3B/7B tokenizer")
    ids: list[int] = []
    labels: list[int] = []
    for p in _merge(pieces):
        chunk = [tokenizer.token_to_id(p.value)] if p.special else tokenizer.encode(p.value)
        ids += chunk
        labels += chunk if p.train else [IGNORE_INDEX] * len(chunk)
    return ids, labels


def render_ids(tokenizer, messages: Sequence[dict], style: str = "chat", tools: Sequence | None = None,
               add_generation_prompt: bool = False) -> list[int]:
    """Token ids of the rendered conversation (specials as ids, text chunks encoded), no BOS for 'chat'."""
    return render_training(tokenizer, render_pieces(messages, style, tools, add_generation_prompt))[0]
