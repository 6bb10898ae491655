"""Generic SentencePiece tokenizer with the semantics of transformers' slow `LlamaTokenizer` (4.57).

For TeleChat-12B, TeleChat-52B / FLM (TELECHATTokenizer, FLMTokenizer) and Llama-2 / Firefly checkpoints that
ship a `tokenizer.model`. What is reproduced, because it changes ids:
  * added tokens (checkpoint `added_tokens_decoder` / `added_tokens.json`, plus every special token of the
    config) are split out of the text first, leftmost-longest, with their lstrip / rstrip / single_word flags;
    a special token missing from the SentencePiece vocab gets the next free id, as in HF `_add_tokens`;
  * `legacy` (default true): every text chunk is encoded on its own, so each gets SentencePiece's dummy-prefix
    `▁`; `legacy: false`: the dummy prefix is turned off, the text gets one leading `▁` (add_prefix_space) and
    chunks that start with a space are encoded behind the unk token, exactly as LlamaTokenizer does;
  * `add_bos_token` (LlamaTokenizer default true) / `add_eos_token` (default false) when add_special_tokens.
One deliberate addition: SentencePiece *control* pieces still in a text chunk after the added-token split
(TeleChat-12B's `<_user>` / `<_bot>`, ids 20/21, which its config does not register; a control piece a
single_word flag merged back into the text) are recognised as their ids. The official code inserts them as
ids; a text template can only reach them this way (HF would split them into plain pieces).
"""
from __future__ import annotations

import os
import re
from typing import Iterable

from .tokenizer_base import BaseTokenizer, Offsets, clean_up_tokenization, sp_pieces
from .tokenizer_files import SPECIAL_KEYS, AddedTokenSpec, TokenizerError, TokenizerSettings, read_settings

MODEL_FILE = "tokenizer.model"
SPIECE_UNDERLINE = "▁"
# class defaults of transformers' LlamaTokenizer; other classes default to the model's own unk/bos/eos/pad pieces
_LLAMA_DEFAULTS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


def resolve_model_path(path: str) -> tuple[str, str | None]:
    """(tokenizer.model path, checkpoint directory or None) for a model file or a checkpoint directory."""
    if os.path.isdir(path):
        return os.path.join(path, MODEL_FILE), path
    return path, None


def load_sentencepiece(model_path: str, add_dummy_prefix: bool | None = None):
    """A SentencePieceProcessor; add_dummy_prefix=False rewrites the model's normalizer (HF legacy=False)."""
    import sentencepiece as spm  # pylint: disable=import-outside-toplevel
    if not os.path.isfile(model_path):
        raise TokenizerError(f"{model_path}: tokenizer model file not found")
    sp = spm.SentencePieceProcessor()
    try:
        if add_dummy_prefix is None:
            sp.Load(model_path)
        else:
            try:
                from sentencepiece import sentencepiece_model_pb2  # pylint: disable=import-outside-toplevel
            except ImportError as exc:
                raise TokenizerError(f"{model_path}: legacy=false needs the protobuf package to rewrite the model's "
                                     f"normalizer ({exc})") from None
            with open(model_path, "rb") as fh:
                proto = sentencepiece_model_pb2.ModelProto.FromString(fh.read())
            proto.normalizer_spec.add_dummy_prefix = add_dummy_prefix
            sp.LoadFromSerializedProto(proto.SerializeToString())
    except TokenizerError:
        raise
    except Exception as exc:  # noqa: BLE001  sentencepiece/protobuf raise RuntimeError, OSError, DecodeError
        raise TokenizerError(f"{model_path}: not a SentencePiece model ({type(exc).__name__}: {exc})") from None
    return sp


def _defaults(sp, tokenizer_class: str | None) -> dict[str, str]:
    if tokenizer_class and tokenizer_class.replace("Fast", "") in ("LlamaTokenizer", "CodeLlamaTokenizer"):
        return dict(_LLAMA_DEFAULTS)
    out = {}
    for key, pid in (("unk_token", sp.unk_id()), ("bos_token", sp.bos_id()), ("eos_token", sp.eos_id()),
                     ("pad_token", sp.pad_id())):
        if 0 <= pid < sp.GetPieceSize():
            out[key] = sp.IdToPiece(pid)
    return out


class SentencePieceTokenizer(BaseTokenizer):
    """`SentencePieceTokenizer(path)`: path = tokenizer.model or a checkpoint directory holding it."""

    kind = "sentencepiece"

    def __init__(self, path: str, settings: TokenizerSettings | None = None):
        model_path, directory = resolve_model_path(path)
        self.path = model_path
        self.sp = load_sentencepiece(model_path)
        self.settings = settings if settings is not None else read_settings(directory)
        self.legacy = bool(self.settings.flag("legacy", True))
        self.add_prefix_space = bool(self.settings.flag("add_prefix_space", True))
        self.add_bos = bool(self.settings.flag("add_bos_token", True))
        self.add_eos = bool(self.settings.flag("add_eos_token", False))
        self.clean_up_spaces = bool(self.settings.flag("clean_up_tokenization_spaces", False))
        self.split_special = bool(self.settings.flag("split_special_tokens", False))
        # legacy=False encodes with the dummy prefix switched off (HF rewrites the model proto the same way)
        self._text_sp = self.sp if self.legacy else load_sentencepiece(model_path, add_dummy_prefix=False)
        self._register_tokens()
        for flag, key in ((self.add_bos, "bos_token"), (self.add_eos, "eos_token")):
            if flag and self._special_id(key) is None:
                raise TokenizerError(f"{self.path}: add_{key} is true but the checkpoint defines no {key}")

    # ---- added tokens (HF PreTrainedTokenizer.__init__ / _add_tokens) ------------------------------------
    def _register_tokens(self) -> None:
        size = self.sp.GetPieceSize()
        specials = {k: AddedTokenSpec(v) for k, v in _defaults(self.sp, self.settings.tokenizer_class).items()}
        specials.update(self.settings.special)
        self._specials = {k: specials[k] for k in SPECIAL_KEYS if specials.get(k) is not None}
        self._additional = list(self.settings.additional_special)
        self._added: dict[int, AddedTokenSpec] = dict(self.settings.added)
        vocab = {self.sp.IdToPiece(i): i for i in range(size)}
        vocab.update({spec.content: tid for tid, spec in self._added.items()})
        self._encoder = {spec.content: tid for tid, spec in self._added.items()}
        for spec in list(self._specials.values()) + self._additional:
            if spec.content in self._encoder or not spec.content:
                continue
            tid = vocab.get(spec.content, len(vocab))
            vocab[spec.content] = tid
            self._added[tid] = AddedTokenSpec(spec.content, True, spec.lstrip, spec.rstrip, spec.single_word,
                                              spec.normalized)
            self._encoder[spec.content] = tid
        self.vocab_size = max([size] + [tid + 1 for tid in self._added])
        # control pieces left in a text chunk (never registered, or merged back by a single_word flag, as
        # TeleChat-12B's config does with <_end>) cannot come from SentencePiece: they are their ids
        self._controls = {self.sp.IdToPiece(i): i for i in range(size) if self.sp.IsControl(i)}
        self._added_re = _alternation(self._encoder)
        self._control_re = _alternation(self._controls)
        self._special_strings = set(self.all_special_tokens)
        self._underline_id = self.sp.PieceToId(SPIECE_UNDERLINE)

    def _lookup(self, token: str) -> int | None:
        if token in self._encoder:
            return self._encoder[token]
        pid = self.sp.PieceToId(token)
        return pid if self.sp.IdToPiece(pid) == token else None

    def id_to_token(self, tid: int) -> str:
        tid = int(tid)
        if tid in self._added:
            return self._added[tid].content
        if 0 <= tid < self.sp.GetPieceSize():
            return self.sp.IdToPiece(tid)
        raise TokenizerError(f"token id {tid} is outside the vocab (size {self.vocab_size})")

    # ---- encode -------------------------------------------------------------------------------------------
    def encode_with_offsets(self, text: str, parse_special: bool = True,
                            add_special_tokens: bool = False) -> tuple[list[int], Offsets]:
        ids, offsets = self._tokenize(text, parse_special and not self.split_special)
        if add_special_tokens and self.add_bos:
            ids, offsets = [self.bos_id] + ids, [(0, 0)] + offsets
        if add_special_tokens and self.add_eos:
            ids, offsets = ids + [self.eos_id], offsets + [(len(text), len(text))]
        return ids, offsets

    def _tokenize(self, text: str, parse_special: bool) -> tuple[list[int], Offsets]:
        shift = 0
        if not self.legacy and text:
            text = text.replace(SPIECE_UNDERLINE, " ")
            if self.add_prefix_space:       # one virtual character before the text: offsets shift back by 1
                text, shift = SPIECE_UNDERLINE + text, 1
        chunks = self._split_added(text) if parse_special and self._encoder else [[text, 0]]
        out: list[tuple[int, int, int]] = []
        specials_at: set[int] = set()
        for chunk, start in chunks:
            if not chunk:
                continue
            if parse_special and chunk in self._encoder:
                specials_at.add(len(out))
                out.append((self._encoder[chunk], start, start + len(chunk)))
            else:
                out += self._encode_text(chunk, start, parse_special)
        if not self.legacy and len(out) > 1 and out[0][0] == self._underline_id and 1 in specials_at \
                and self._added[out[1][0]].content in self._special_strings:
            out = out[1:]                   # LlamaTokenizer drops the prefix `▁` before a leading special token
        return [t[0] for t in out], [(max(s - shift, 0), max(e - shift, 0)) for _, s, e in out]

    def _split_added(self, text: str) -> list[list]:
        """HF tokens_trie.split + the lstrip/rstrip/single_word pass of PreTrainedTokenizer.tokenize."""
        chunks: list[list] = []
        pos = 0
        for match in self._added_re.finditer(text):
            chunks += [[text[pos:match.start()], pos], [match.group(), match.start()]]
            pos = match.end()
        chunks.append([text[pos:], pos])
        chunks = [c for i, c in enumerate(chunks) if c[0] or i % 2]        # HF keeps no empty text chunks
        for i, (token, start) in enumerate(chunks):
            spec = self._added.get(self._encoder[token]) if token in self._encoder else None
            if spec is None:
                continue
            left = chunks[i - 1][0] if i > 0 else None
            right = chunks[i + 1][0] if i < len(chunks) - 1 else None
            if spec.rstrip and right:
                chunks[i + 1] = [right.lstrip(), chunks[i + 1][1] + len(right) - len(right.lstrip())]
            if spec.lstrip and left:
                chunks[i - 1][0] = left.rstrip()
            if spec.single_word and left and left[-1] != " ":
                chunks[i - 1][0] += token
                chunks[i][0] = ""
            elif spec.single_word and right and right[0] != " ":
                chunks[i + 1] = [token + chunks[i + 1][0], start]
                chunks[i][0] = ""
        return chunks

    def _encode_text(self, chunk: str, start: int, parse_special: bool) -> list[tuple[int, int, int]]:
        """A text chunk: control-piece strings become their ids (see module doc), the rest SentencePiece."""
        if not (parse_special and self._controls):
            return self._sp_chunk(chunk, start)
        out: list[tuple[int, int, int]] = []
        pos = 0
        for match in self._control_re.finditer(chunk):
            out += self._sp_chunk(chunk[pos:match.start()], start + pos)
            out.append((self._controls[match.group()], start + match.start(), start + match.end()))
            pos = match.end()
        return out + self._sp_chunk(chunk[pos:], start + pos)

    def _sp_chunk(self, chunk: str, start: int) -> list[tuple[int, int, int]]:
        if not chunk:
            return []
        if self.legacy or not chunk.startswith((SPIECE_UNDERLINE, " ")):
            return [(i, start + s, start + e) for i, s, e in sp_pieces(self._text_sp, chunk)]
        # LlamaTokenizer._tokenize (legacy=False): encode "<unk>" + chunk and drop the unk pieces, so the
        # leading space survives without the dummy prefix
        unk = self.unk_token or ""
        drop = len(self._text_sp.encode(unk))
        pieces = sp_pieces(self._text_sp, unk + chunk)
        pieces = pieces[drop:] if len(pieces) >= drop else pieces
        return [(i, start + max(s - len(unk), 0), start + max(e - len(unk), 0)) for i, s, e in pieces]

    # ---- decode -------------------------------------------------------------------------------------------
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """HF PreTrainedTokenizer._decode: specials dropped when skip_special_tokens, non-special added tokens
        written apart and joined by spaces, the rest through convert_tokens_to_string (LlamaTokenizer's for
        Llama-class and unnamed checkpoints, plain SentencePiece decoding for the remote-code classes)."""
        special = self.special_ids | set(self._controls.values())
        tokens = [self.id_to_token(t) for t in self._check_ids(ids) if not (skip_special_tokens and t in special)]
        specials = self._special_strings | set(self._controls)
        size = self.sp.GetPieceSize()
        apart = {t for t, i in self._encoder.items() if t not in specials or i >= size and t in
                 {a.content for a in self._additional}}
        texts: list[str] = []
        run: list[str] = []
        for token in tokens:
            if token in apart:
                if run and (text := self._tokens_to_string(run, specials)):
                    texts.append(text)
                run = []
                texts.append(token)
            else:
                run.append(token)
        if run:
            texts.append(self._tokens_to_string(run, specials))
        text = " ".join(texts)
        return clean_up_tokenization(text) if self.clean_up_spaces else text

    def _tokens_to_string(self, tokens: list[str], specials: set) -> str:
        llama = (self.settings.tokenizer_class or "LlamaTokenizer").replace("Fast", "") in _LLAMA_LIKE
        tokens = list(tokens)
        if llama and tokens[0].startswith(SPIECE_UNDERLINE) and self.add_prefix_space:
            tokens[0] = tokens[0][1:]       # LlamaTokenizer removes the prefix space it added
        out, run, prev_special = "", [], False
        for i, token in enumerate(tokens):
            if token in specials:
                if llama and self.legacy and not prev_special and i != 0:
                    out += " "
                out += self._text_sp.DecodePieces(run) + token
                run, prev_special = [], True
            else:
                if llama and prev_special and i == 1 and self.add_prefix_space \
                        and not token.startswith(SPIECE_UNDERLINE):
                    out += " "
                run.append(token)
                prev_special = False
        return out + self._text_sp.DecodePieces(run)


_LLAMA_LIKE = ("LlamaTokenizer", "CodeLlamaTokenizer")


def _alternation(tokens) -> re.Pattern:
    """Leftmost-longest matcher for a set of literal strings (HF's Trie.split order)."""
    if not tokens:
        return re.compile(r"(?!x)x")
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))
