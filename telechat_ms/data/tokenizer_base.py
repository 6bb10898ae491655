"""The interface every tokenizer of telechat_ms offers, and the pieces the implementations share.

    encode(text, parse_special=True, add_special_tokens=True) -> ids
    encode_with_offsets(text, parse_special=True, add_special_tokens=False) -> (ids, [(start, end)] char spans)
    decode(ids, skip_special_tokens=True) -> text
    token_to_id(token) / id_to_token(id); vocab_size (ids it can produce: model pieces + added tokens)
    bos_id / eos_id / pad_id / unk_id (None when the checkpoint defines none), bos_token / eos_token / ...
    special_ids (HF `all_special_ids`), special_tokens_map (the chat-template variables), kind, path

`add_special_tokens` means what it means in HF: the BOS/EOS the tokenizer adds around a text (LlamaTokenizer
adds BOS by default); chat templates encode their rendering with add_special_tokens=False, as
`apply_chat_template` does. Offsets are character spans in `text`; tokens that consume no character (a
SentencePiece dummy-prefix `▁`, the leading bytes of a byte-fallback character, an added BOS) get an empty
span at their position.
"""
from __future__ import annotations

import bisect
from typing import Iterable

from .tokenizer_files import SPECIAL_KEYS, AddedTokenSpec, TokenizerError

TOOL_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
Offsets = list[tuple[int, int]]


class BaseTokenizer:
    """Common properties; subclasses set `kind`, `path`, `vocab_size`, `_specials`, `_additional` and implement
    `_lookup`, `id_to_token`, `encode_with_offsets` and `decode`."""

    kind = "base"
    path = ""
    vocab_size = 0
    _specials: dict[str, AddedTokenSpec]
    _additional: list[AddedTokenSpec]

    # ---- subclass hooks ----------------------------------------------------------------------------------
    def _lookup(self, token: str) -> int | None:
        raise NotImplementedError

    def id_to_token(self, tid: int) -> str:
        raise NotImplementedError

    def encode_with_offsets(self, text: str, parse_special: bool = True,
                            add_special_tokens: bool = False) -> tuple[list[int], Offsets]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        raise NotImplementedError

    # ---- shared ------------------------------------------------------------------------------------------
    def encode(self, text: str, parse_special: bool = True, add_special_tokens: bool = True) -> list[int]:
        """Ids of `text` as the checkpoint's HF tokenizer gives them (`tokenizer(text)["input_ids"]`)."""
        return self.encode_with_offsets(text, parse_special, add_special_tokens)[0]

    def token_to_id(self, token: str) -> int:
        tid = self._lookup(token)
        if tid is None:
            raise TokenizerError(f"{self.path}: {token!r} is not a token of this vocab")
        return tid

    def _special_content(self, key: str) -> str | None:
        spec = self._specials.get(key)
        return spec.content if spec is not None else None

    def _special_id(self, key: str) -> int | None:
        content = self._special_content(key)
        return None if content is None else self._lookup(content)

    bos_token = property(lambda self: self._special_content("bos_token"))
    eos_token = property(lambda self: self._special_content("eos_token"))
    pad_token = property(lambda self: self._special_content("pad_token"))
    unk_token = property(lambda self: self._special_content("unk_token"))
    bos_id = property(lambda self: self._special_id("bos_token"))
    eos_id = property(lambda self: self._special_id("eos_token"))
    pad_id = property(lambda self: self._special_id("pad_token"))
    unk_id = property(lambda self: self._special_id("unk_token"))

    @property
    def special_tokens_map(self) -> dict:
        """HF `special_tokens_map`: bos_token, eos_token, ... and additional_special_tokens (strings)."""
        out: dict = {key: self._specials[key].content for key in SPECIAL_KEYS if key in self._specials}
        if self._additional:
            out["additional_special_tokens"] = [t.content for t in self._additional]
        return out

    @property
    def all_special_tokens(self) -> list[str]:
        seen: list[str] = []
        for spec in [self._specials[k] for k in SPECIAL_KEYS if k in self._specials] + list(self._additional):
            if spec.content not in seen:
                seen.append(spec.content)
        return seen

    @property
    def special_ids(self) -> frozenset:
        """HF `all_special_ids`: what decode(skip_special_tokens=True) drops (computed once: the token table is
        fixed after loading, and stop checks ask for it at every generated token)."""
        cached = self.__dict__.get("_special_id_cache")
        if cached is None:
            cached = frozenset(i for i in (self._lookup(t) for t in self.all_special_tokens) if i is not None)
            self.__dict__["_special_id_cache"] = cached
        return cached

    @property
    def has_tool_tokens(self) -> bool:
        return all(self._lookup(t) is not None for t in TOOL_TOKENS)

    def tokens(self, ids: Iterable[int]) -> list[str]:
        """Token strings of ids (debugging and docs)."""
        return [self.id_to_token(int(t)) for t in ids]

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        out = [int(t) for t in ids]
        for tid in out:
            if not 0 <= tid < self.vocab_size:
                raise TokenizerError(f"token id {tid} is outside the vocab (size {self.vocab_size})")
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, kind {self.kind}, vocab {self.vocab_size})"


class CharIndex:
    """Byte offset -> character offset for one string (SentencePiece reports UTF-8 byte offsets)."""

    def __init__(self, text: str):
        self._bytes = [0]
        for ch in text:
            self._bytes.append(self._bytes[-1] + len(ch.encode("utf-8")))

    def char(self, byte: int) -> int:
        return bisect.bisect_right(self._bytes, byte) - 1


def sp_pieces(sp, text: str) -> list[tuple[int, int, int]]:
    """(id, char start, char end) of SentencePiece's encoding of `text` (offsets relative to `text`)."""
    if not text:
        return []
    try:
        pieces = sp.encode(text, return_type="proto").pieces           # sentencepiece >= 0.2.1
    except TypeError:
        pieces = sp.encode(text, out_type="immutable_proto").pieces    # sentencepiece 0.2.0
    index = CharIndex(text)
    return [(p.id, index.char(p.begin), index.char(p.end)) for p in pieces]


def clean_up_tokenization(text: str) -> str:
    """HF `clean_up_tokenization` (applied by decode when the config sets clean_up_tokenization_spaces)."""
    for old, new in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                     (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(old, new)
    return text
