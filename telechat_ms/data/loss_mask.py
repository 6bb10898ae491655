"""SFT labels for any chat template, derived from the rendering (no per-template rules).

Assistant spans (character ranges of the full rendering):
  * a template with `{% generation %}` blocks: those blocks (HF's return_assistant_tokens_mask);
  * otherwise, for assistant message i: from the end of render(messages[:i], add_generation_prompt=True) to the
    end of render(messages[:i+1]), trailing whitespace excluded. Each end is where that prefix rendering stops
    being the full rendering: its length when it is a prefix of the full text (the usual case), else the end of
    the last token the two tokenizations share — a template that ends the last answer differently (TeleChat-52B:
    `</s>` instead of `<_end>`) or appends a space to the generation prompt (Aquila) is still cut at a token
    boundary, never inside `<_end>`.
A token is trained when its text overlaps a span (a token without text — SentencePiece's dummy-prefix `▁`,
the first bytes of a byte-fallback character — when it stands inside one), as HF's char_to_token mapping does.

Turn tokens (train_turn_tokens): where a turn's rendering begins is the common prefix of the conversation so
far continued once by a user and once by an assistant probe message; the token at that position is trained
if it is a special token (TeleChat2's <_user>, <_bot>).
"""
from __future__ import annotations

from typing import Sequence

IGNORE_INDEX = -100
ASSISTANT_ROLES = ("assistant", "bot")
_PROBE = "\ue000probe\ue001"        # private-use characters: a content no template rewrites


def _common_prefix(a: Sequence, b: Sequence) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class _Conversation:
    """One conversation rendered in full and tokenized, plus renderings of its prefixes."""

    def __init__(self, tokenizer, chat, messages, tools, kwargs):
        self.tokenizer, self.chat, self.messages, self.tools, self.kwargs = tokenizer, chat, messages, tools, kwargs
        self.specials = tokenizer.special_tokens_map
        self.spans: list[tuple[int, int]] = []
        if chat.has_generation_blocks:
            self.full, spans = chat.render(messages, tools, False, self.specials, track=True, **kwargs)
            self.spans = [s for s in spans if s[1] > s[0]]
        else:
            self.full = self.render(messages)
        self.ids, self.offsets = tokenizer.encode_with_offsets(self.full, add_special_tokens=False)

    def render(self, messages, add_generation_prompt=False) -> str:
        return self.chat.render(messages, self.tools, add_generation_prompt, self.specials, **self.kwargs)

    def boundary(self, prefix: str) -> int:
        """Where `prefix` (a rendering of the first messages) stops matching the full rendering."""
        if self.full.startswith(prefix):
            return len(prefix)
        shared = _common_prefix(self.tokenizer.encode(prefix, add_special_tokens=False), self.ids)
        return self.offsets[shared - 1][1] if shared else 0

    def assistant_spans(self) -> list[tuple[int, int]]:
        if self.chat.has_generation_blocks:
            return self.spans
        spans = []
        for i, msg in enumerate(self.messages):
            if msg.get("role") not in ASSISTANT_ROLES:
                continue
            start = self.boundary(self._prefix(i, True))
            end = max(self.boundary(self._prefix(i + 1, False)), start)
            end = start + len(self.full[start:end].rstrip())    # a newline after <_end> separates turns
            if end > start:
                spans.append((start, end))
        return spans

    def _prefix(self, count: int, add_generation_prompt: bool) -> str:
        from .chat_template import TemplateError  # pylint: disable=import-outside-toplevel
        try:
            return self.render(self.messages[:count], add_generation_prompt)
        except TemplateError as exc:
            raise TemplateError(f"cannot derive the loss mask: rendering the first {count} messages failed: "
                                f"{exc}") from None

    def turn_starts(self) -> list[int]:
        from .chat_template import TemplateError  # pylint: disable=import-outside-toplevel
        starts = []
        for j, msg in enumerate(self.messages):
            if msg.get("role") == "system":
                continue
            head = list(self.messages[:j])
            try:
                start = _common_prefix(self.render(head + [{"role": "user", "content": _PROBE}]),
                                       self.render(head + [{"role": "assistant", "content": _PROBE}]))
            except TemplateError:      # strict role order: the conversation so far is the best guess
                try:
                    start = self.boundary(self.render(head)) if head else 0
                except TemplateError:
                    continue
            starts.append(start)
        return starts


def _trained(offset: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    s, e = offset
    if s == e:
        return any(a <= s < b for a, b in spans)
    return any(s < b and e > a for a, b in spans)


def label_conversation(tokenizer, chat, messages: Sequence[dict], tools=None, train_turn_tokens: bool = False,
                       **kwargs) -> tuple[list[int], list[int], str]:
    """(input_ids, labels, rendered text) of one conversation; see the module doc."""
    conv = _Conversation(tokenizer, chat, list(messages), tools, kwargs)
    spans = conv.assistant_spans()
    keep = [_trained(off, spans) for off in conv.offsets]
    if train_turn_tokens:
        special = tokenizer.special_ids
        for start in conv.turn_starts():
            for k, (s, e) in enumerate(conv.offsets):
                if e > start or s >= start:      # the token covering the turn's first character
                    keep[k] = keep[k] or (s <= start and conv.ids[k] in special)
                    break
    labels = [tid if flag else IGNORE_INDEX for tid, flag in zip(conv.ids, keep)]
    return conv.ids, labels, conv.full
