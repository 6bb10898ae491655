"""TeleChat2 tokenizer: a SentencePiece model plus the special tokens, encoded the way the HF slow tokenizer does.

Facts reproduced (spec §6.1):
  * ids 0 <_unk>, 1 <_start>, 2 <_end>, 3 <_pad>, 4 <_user>, 5 <_bot>, 6 <_system>; tool tokens
    <tool_call> </tool_call> <tool_response> </tool_response> only where the vocab (or the checkpoint's
    tokenizer_config.json `added_tokens_decoder`) has them — never as new ids past the vocab, the bug of the
    MindFormers tokenizer with the 115B vocab.
  * special strings in text are split out first and every text chunk between them is encoded on its own, so
    each chunk gets SentencePiece's dummy-prefix `▁` ("<_user>你好" -> [4, ▁你好]); that is what
    PreTrainedTokenizer.tokenize does with added tokens, and what a TeleChat2 checkpoint was trained on.
  * no BOS/EOS is added (add_bos_token = add_eos_token = false in every TeleChat2 tokenizer_config.json).
The layout is detected from the piece strings, so a real TeleChat2 tokenizer.model loads unchanged.
"""
from __future__ import annotations

import json
import os
import re
from typing import Iterable

from .tokenizer_base import TOOL_TOKENS, BaseTokenizer, Offsets, sp_pieces
from .tokenizer_files import AddedTokenSpec, TokenizerError

# spec §6.1: these ids are fixed for every TeleChat2 size (the model's embedding rows and generation config
# user_token_id/bot_token_id rely on them)
CORE_SPECIALS = {"<_unk>": 0, "<_start>": 1, "<_end>": 2, "<_pad>": 3, "<_user>": 4, "<_bot>": 5, "<_system>": 6}
# strings recognised inside raw text (HF `additional_special_tokens` of the 3B/7B tokenizer_config.json);
# <_unk> is not among them, so "<_unk>" typed in text stays text
TEXT_SPECIALS = ("<_start>", "<_end>", "<_pad>", "<_user>", "<_bot>", "<_system>") + TOOL_TOKENS


def _resolve(path: str) -> tuple[str, str | None]:
    """(tokenizer.model path, tokenizer_config.json path or None) for a file or a checkpoint directory."""
    if os.path.isdir(path):
        model = os.path.join(path, "tokenizer.model")
        config = os.path.join(path, "tokenizer_config.json")
        return model, (config if os.path.isfile(config) else None)
    return path, None


def _added_tokens(config_path: str | None) -> dict[int, str]:
    """`added_tokens_decoder` of a HF tokenizer_config.json: id -> token string (empty if absent)."""
    if config_path is None:
        return {}
    try:
        with open(config_path, encoding="utf-8") as fh:
            decoder = json.load(fh).get("added_tokens_decoder") or {}
        return {int(k): (v["content"] if isinstance(v, dict) else str(v)) for k, v in decoder.items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TokenizerError(f"{config_path}: cannot read added_tokens_decoder: {exc}") from None


class TelechatTokenizer(BaseTokenizer):
    """Load with `TelechatTokenizer(path)`: path = tokenizer.model or a checkpoint directory holding it."""

    kind = "telechat2"

    def __init__(self, path: str):
        import sentencepiece as spm  # pylint: disable=import-outside-toplevel
        model_path, config_path = _resolve(path)
        if not os.path.isfile(model_path):
            raise TokenizerError(f"{model_path}: tokenizer model file not found")
        self.path = model_path
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(model_path)
        except (OSError, RuntimeError) as exc:
            raise TokenizerError(f"{model_path}: not a SentencePiece model ({exc})") from None
        self.vocab_size = self.sp.GetPieceSize()
        self._added = _added_tokens(config_path)
        self._token_ids = self._special_ids()
        self._id_tokens = {i: t for t, i in self._token_ids.items()}
        self._has_tool_tokens = all(t in self._token_ids for t in TOOL_TOKENS)
        self._text_specials = {t: self._token_ids[t] for t in TEXT_SPECIALS if t in self._token_ids}
        self._split = re.compile("(" + "|".join(re.escape(t) for t in self._text_specials) + ")")
        # decode(skip_special_tokens=True) drops these: the named specials plus every control piece
        # (<_observation>, <_sep>, <_controlN>), which SentencePiece would render as "" anyway
        self._special_ids = frozenset(self._token_ids.values()) | frozenset(
            i for i in range(self.vocab_size) if self.sp.IsControl(i))
        # chat-template variables (HF special_tokens_map of a TeleChat2 3B/7B tokenizer_config.json)
        self._specials = {"bos_token": AddedTokenSpec("<_start>"), "eos_token": AddedTokenSpec("<_end>"),
                          "unk_token": AddedTokenSpec("<_unk>"), "pad_token": AddedTokenSpec("<_pad>")}
        self._additional = [AddedTokenSpec(t) for t in TEXT_SPECIALS if t in self._token_ids]

    def _special_ids(self) -> dict[str, int]:
        ids: dict[str, int] = {}
        for name in list(CORE_SPECIALS) + list(TOOL_TOKENS):
            pid = self.sp.PieceToId(name)
            if self.sp.IdToPiece(pid) == name:          # PieceToId returns unk for a missing piece
                ids[name] = pid
        for tid, name in self._added.items():           # HF semantics: added tokens override the model pieces
            if not 0 <= tid < self.vocab_size:
                raise TokenizerError(f"{self.path}: added token {name!r} has id {tid} outside the vocab "
                                     f"(size {self.vocab_size}); the embedding has no row for it")
            ids[name] = tid
        for name, want in CORE_SPECIALS.items():
            if ids.get(name) != want:
                raise TokenizerError(f"{self.path}: not a TeleChat2 tokenizer: {name} must be id {want}, "
                                     f"found {ids.get(name, 'missing')} (piece {want} is "
                                     f"{self.sp.IdToPiece(want) if want < self.vocab_size else 'out of range'!r})")
        return ids

    # ---- ids of named tokens ---------------------------------------------------------------------------
    unk_id, bos_id, eos_id, pad_id, user_id, bot_id, system_id = range(7)

    @property
    def special_ids(self) -> frozenset:
        """The named specials plus every control piece (<_observation>, <_sep>, <_controlN>)."""
        return self._special_ids

    @property
    def has_tool_tokens(self) -> bool:
        return self._has_tool_tokens

    def _lookup(self, token: str) -> int | None:
        if token in self._token_ids:
            return self._token_ids[token]
        pid = self.sp.PieceToId(token)
        return pid if self.sp.IdToPiece(pid) == token else None

    @property
    def layout(self) -> str:
        """'tools' (3B/7B/35B-Nov: tool tokens present) or 'no-tools' (115B-style control pieces only)."""
        return "tools" if self.has_tool_tokens else "no-tools"

    def token_to_id(self, token: str) -> int:
        """Id of a special token; a tool token missing from the vocab is an error, never a new id."""
        if token in self._token_ids:
            return self._token_ids[token]
        if token in TOOL_TOKENS:
            raise TokenizerError(f"{self.path}: the vocab has no {token} (layout {self.layout}); tool-calling "
                                 "templates need a TeleChat2 3B/7B/35B-Nov tokenizer")
        pid = self.sp.PieceToId(token)
        if self.sp.IdToPiece(pid) != token:
            raise TokenizerError(f"{self.path}: {token!r} is not a token of this vocab")
        return pid

    def id_to_token(self, tid: int) -> str:
        return self._id_tokens.get(tid) or self.sp.IdToPiece(tid)

    # ---- encode / decode -------------------------------------------------------------------------------
    def encode(self, text: str, parse_special: bool = True, add_special_tokens: bool = True) -> list[int]:
        """Ids of `text`; special-token strings become their ids when parse_special (HF default). No BOS/EOS
        is ever added (add_bos_token = add_eos_token = false), whatever add_special_tokens says."""
        if not parse_special:
            return list(self.sp.EncodeAsIds(text)) if text else []
        ids: list[int] = []
        for chunk in self._split.split(text):
            if chunk in self._text_specials:
                ids.append(self._text_specials[chunk])
            elif chunk:                                   # HF skips the empty chunks around adjacent specials
                ids.extend(self.sp.EncodeAsIds(chunk))
        return ids

    def encode_with_offsets(self, text: str, parse_special: bool = True,
                            add_special_tokens: bool = False) -> tuple[list[int], Offsets]:
        """encode() plus the character span of every token (see tokenizer_base)."""
        if not parse_special:
            return _unzip(sp_pieces(self.sp, text))
        out: list[tuple[int, int, int]] = []
        pos = 0
        for match in self._split.finditer(text) if self._text_specials else ():
            out += [(i, pos + s, pos + e) for i, s, e in sp_pieces(self.sp, text[pos:match.start()])]
            out.append((self._text_specials[match.group()], match.start(), match.end()))
            pos = match.end()
        out += [(i, pos + s, pos + e) for i, s, e in sp_pieces(self.sp, text[pos:])]
        return _unzip(out)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`. Runs of ordinary ids are decoded chunk-wise, so each chunk's dummy-prefix space is
        dropped again and decode(encode(text), False) == text."""
        out: list[str] = []
        run: list[int] = []
        for tid in (int(t) for t in ids):
            if not 0 <= tid < self.vocab_size:
                raise TokenizerError(f"token id {tid} is outside the vocab (size {self.vocab_size})")
            if tid in self.special_ids:
                out.append(self.sp.DecodeIds(run))
                run = []
                if not skip_special_tokens:
                    out.append(self.id_to_token(tid))
            else:
                run.append(tid)
        out.append(self.sp.DecodeIds(run))
        return "".join(out)

    def __repr__(self) -> str:
        return f"TelechatTokenizer({self.path!r}, vocab {self.vocab_size}, layout {self.layout})"


def _unzip(pieces: list[tuple[int, int, int]]) -> tuple[list[int], Offsets]:
    return [p[0] for p in pieces], [(p[1], p[2]) for p in pieces]


# ---- one loader for every family --------------------------------------------------------------------------
KINDS = ("telechat2", "sentencepiece", "hf")
# remote-code classes that are SentencePiece tokenizers even when a tokenizer.json sits beside the model
_SP_CLASSES = ("TelechatTokenizer", "Telechat2Tokenizer", "TELECHATTokenizer", "FLMTokenizer", "LlamaTokenizer")


def _is_telechat2_layout(model_path: str) -> bool:
    """ids 0-6 are <_unk> <_start> <_end> <_pad> <_user> <_bot> <_system> (spec §6.1)."""
    from .sp_tokenizer import load_sentencepiece  # pylint: disable=import-outside-toplevel
    sp = load_sentencepiece(model_path)
    size = sp.GetPieceSize()
    return all(want < size and sp.IdToPiece(want) == name for name, want in CORE_SPECIALS.items())


def detect_kind(path: str) -> str:
    """The tokenizer kind of a file or checkpoint directory, from the files present (TokenizerError if none).

    tokenizer.model -> telechat2 when it has TeleChat2's special-token layout, else sentencepiece;
    tokenizer.json / vocab.json -> hf. A directory with both a tokenizer.model and a tokenizer.json uses the
    SentencePiece model when tokenizer_config.json names a SentencePiece class (TeleChat, FLM, Llama slow),
    else tokenizer.json (what transformers' AutoTokenizer loads by default).
    """
    from .tokenizer_files import read_settings  # pylint: disable=import-outside-toplevel
    if os.path.isfile(path):
        name = os.path.basename(path)
        if name.endswith(".json"):
            return "hf"
        return "telechat2" if _is_telechat2_layout(path) else "sentencepiece"
    if not os.path.isdir(path):
        raise TokenizerError(f"{path}: no such tokenizer file or checkpoint directory")
    model = os.path.join(path, "tokenizer.model")
    has_json = os.path.isfile(os.path.join(path, "tokenizer.json"))
    has_bpe = os.path.isfile(os.path.join(path, "vocab.json"))
    if os.path.isfile(model):
        cls = (read_settings(path).tokenizer_class or "").replace("Fast", "")
        if not has_json or cls in _SP_CLASSES:
            return "telechat2" if _is_telechat2_layout(model) else "sentencepiece"
    if has_json or has_bpe:
        return "hf"
    raise TokenizerError(f"{path}: no tokenizer found (expected tokenizer.model, tokenizer.json or "
                         "vocab.json + merges.txt)")


def load_tokenizer(path: str, kind: str | None = None):
    """The tokenizer of a file or checkpoint directory: kind telechat2 | sentencepiece | hf (None or "auto":
    detect_kind).

    Every kind has the same interface (telechat_ms/data/tokenizer_base.py); ids equal what the checkpoint's
    transformers tokenizer produces. Errors are TokenizerError naming the file.
    """
    if kind is None or kind == "auto":
        kind = detect_kind(path)
    if kind == "telechat2":
        return TelechatTokenizer(path)
    if kind == "sentencepiece":
        from .sp_tokenizer import SentencePieceTokenizer  # pylint: disable=import-outside-toplevel
        return SentencePieceTokenizer(path)
    if kind == "hf":
        from .hf_tokenizer import HFTokenizer  # pylint: disable=import-outside-toplevel
        return HFTokenizer(path)
    raise TokenizerError(f"unknown tokenizer kind {kind!r} (known: {', '.join(KINDS)})")
