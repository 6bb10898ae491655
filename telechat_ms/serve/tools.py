"""TeleChat2 function calling: `<tool_call>{json}</tool_call>` blocks in generated text -> OpenAI tool calls.

TeleChat2's chat template tells the model (TOOLS_FOOTER, telechat_ms/data/templates.py) to answer a tool call as
`<tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call>`; several calls are
separate blocks. `<tool_call>` / `</tool_call>` are special tokens of the 3B/7B/35B vocab, so the text is
decoded with those two tokens written out (`generated_text`); other special tokens are dropped as usual.

Parsing (`ToolCallStream`, also used whole by `parse_tool_calls` and the chat CLI):
* text outside blocks is content; whitespace around blocks is dropped;
* a block whose body is a JSON object with a string "name" (and "arguments": an object, a JSON string of an
  object, or absent = {}) becomes a call; arguments are re-serialised as the JSON string OpenAI returns;
* a block that is not valid JSON, lacks a name, or is never closed is kept *as text* in the content, and the
  parse reports an error (the server's finish_reason "invalid_tool_call") — never an exception.
Streaming: content is released as soon as it cannot be the start of `<tool_call>`; a call is released when its
closing tag arrives.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Sequence

from ..data.stops import find_stop

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_TAGS = (TOOL_OPEN, TOOL_CLOSE)


@dataclass
class ToolCall:
    name: str
    arguments: str                       # JSON text of an object, as in OpenAI's function.arguments
    id: str = ""

    def __post_init__(self):
        self.id = self.id or "call_" + uuid.uuid4().hex[:24]

    def openai(self, index: int | None = None) -> dict:
        out = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return out if index is None else {"index": index, **out}


def _call_from_json(body: str) -> tuple[ToolCall | None, str]:
    """(call, "") or (None, why) for the text between the tags."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        return None, 'not a JSON object with a string "name"'
    arguments = data.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None, '"arguments" is a string that is not JSON'
    if not isinstance(arguments, dict):
        return None, '"arguments" is not a JSON object'
    return ToolCall(data["name"], json.dumps(arguments, ensure_ascii=False)), ""


def _open_prefix_len(text: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `<tool_call>` (held back)."""
    for size in range(min(len(TOOL_OPEN) - 1, len(text)), 0, -1):
        if TOOL_OPEN.startswith(text[-size:]):
            return size
    return 0


class ToolCallStream:
    """Incremental parser. feed(delta) / finish() return events: ("content", text) or ("tool_call", ToolCall).
    After finish(), `error` is None or why a block was returned as text. Whitespace between content and a
    valid block, between blocks and after the last block is layout and dropped; an answer without calls comes
    out unchanged."""

    def __init__(self, prefix: str = ""):
        self.buffer = ""              # text not yet released
        self.pending_space = ""       # trailing whitespace held back until we know what follows
        self.after_block = False      # drop the whitespace that follows a call
        self.calls: list[ToolCall] = []
        self.error: str | None = None
        self._prefix = prefix         # forced by tool_choice: part of the answer text

    def feed(self, delta: str) -> list[tuple]:
        if self._prefix:
            delta, self._prefix = self._prefix + delta, ""
        self.buffer += delta
        events: list[tuple] = []
        while True:
            start = self.buffer.find(TOOL_OPEN)
            if start < 0:
                keep = _open_prefix_len(self.buffer)
                self._content(self.buffer[:len(self.buffer) - keep], events)
                self.buffer = self.buffer[len(self.buffer) - keep:]
                return events
            self._content(self.buffer[:start], events)
            self.buffer = self.buffer[start:]
            end = self.buffer.find(TOOL_CLOSE)
            if end < 0:                                    # inside a block: wait for its end
                return events
            block, self.buffer = self.buffer[:end + len(TOOL_CLOSE)], self.buffer[end + len(TOOL_CLOSE):]
            self._block(block, events)

    def finish(self) -> list[tuple]:
        events = self.feed("")
        if self.buffer.startswith(TOOL_OPEN):
            self.error = self.error or "a <tool_call> block is not closed"
            self._content(self.buffer, events, raw=True)
        else:
            self._content(self.buffer, events)
        self.buffer = ""
        if self.pending_space and not self.calls:
            events.append(("content", self.pending_space))
        self.pending_space = ""
        return events

    def _block(self, block: str, events: list) -> None:
        call, why = _call_from_json(block[len(TOOL_OPEN):-len(TOOL_CLOSE)].strip())
        if call is None:
            self.error = self.error or f"tool call {len(self.calls) + 1}: {why}"
            self._content(block, events, raw=True)
            return
        self.calls.append(call)
        self.pending_space, self.after_block = "", True
        events.append(("tool_call", call))

    def _content(self, text: str, events: list, raw: bool = False) -> None:
        if not raw:
            if self.after_block:
                text = text.lstrip()
            body = text.rstrip()
            if not body:
                self.pending_space += text
                return
            out, self.pending_space = self.pending_space + body, text[len(body):]
        else:
            out, self.pending_space = self.pending_space + text, ""
        self.after_block = False
        events.append(("content", out))


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall], str | None]:
    """(content, calls, error) of a whole answer; content keeps invalid blocks as text."""
    stream = ToolCallStream()
    events = stream.feed(text) + stream.finish()
    content = "".join(e[1] for e in events if e[0] == "content")
    return content, stream.calls, stream.error


# ---- decoding with the tool tags kept -------------------------------------------------------------------
def _segments(tokenizer, ids: Sequence[int], keep: Sequence[str]) -> list[tuple[str, bool]]:
    """(text, visible): ordinary runs decoded together, special tokens as their strings (visible only when
    listed in `keep`)."""
    special = tokenizer.special_ids
    out: list[tuple[str, bool]] = []
    run: list[int] = []
    for tid in (int(t) for t in ids):
        if tid in special:
            if run:
                out.append((tokenizer.decode(run, skip_special_tokens=True), True))
                run = []
            token = tokenizer.id_to_token(tid)
            out.append((token, token in keep))
        else:
            run.append(tid)
    if run:
        out.append((tokenizer.decode(run, skip_special_tokens=True), True))
    return out


def generated_text(tokenizer, ids: Sequence[int], stop_strings: Sequence[str],
                   keep: Sequence[str] = TOOL_TAGS) -> tuple[str, bool]:
    """(text, stopped): generated ids decoded with the `keep` special tokens written out (other special tokens
    dropped), cut before the first stop string (searched with every special token written out, as
    telechat_ms.data.stops does)."""
    segments = _segments(tokenizer, ids, keep)
    cut = find_stop("".join(text for text, _ in segments), stop_strings) if stop_strings else -1
    out: list[str] = []
    pos = 0
    for text, visible in segments:
        if cut >= 0 and pos >= cut:
            break
        if visible:
            out.append(text if cut < 0 else text[:cut - pos])
        pos += len(text)
    return "".join(out), cut >= 0


def held_back(text: str, stop_strings: Sequence[str]) -> int:
    """Characters at the end of `text` that may begin a stop string: not streamed until decided."""
    longest = 0
    for stop in stop_strings:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-size:]):
                longest = size
                break
    return longest
