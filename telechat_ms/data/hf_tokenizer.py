"""HF fast tokenizers through the `tokenizers` library: `tokenizer.json`, or a GPT-2 byte-level BPE pair
`vocab.json` + `merges.txt` (TeleChat-7B's BloomTokenizerFast, Aquila2's GPT2Tokenizer).

Reproduces what transformers' `PreTrainedTokenizerFast.__init__` (4.57) does on top of the file:
  * tokens of the checkpoint's `added_tokens_decoder` and every special token of the config that the backend
    does not know yet are added (special ones as special), in HF's order, so they get HF's ids;
  * a ByteLevel pre-tokenizer's `add_prefix_space` is set to the config's value (HF default false);
  * Llama-class configs (`tokenizer_class` LlamaTokenizer[Fast]) get the BOS/EOS post-processor from
    add_bos_token (default true) / add_eos_token (default false), as LlamaTokenizerFast.update_post_processor;
  * a vocab.json + merges.txt pair is built like transformers' GPT2Converter: byte-level BPE, ByteLevel
    pre-tokenizer and decoder, BOS post-processor only when add_bos_token.
"""
from __future__ import annotations

import json
import os
from typing import Iterable

from .tokenizer_base import BaseTokenizer, Offsets, clean_up_tokenization
from .tokenizer_files import SPECIAL_KEYS, AddedTokenSpec, TokenizerError, TokenizerSettings, read_settings

TOKENIZER_JSON = "tokenizer.json"
VOCAB_JSON = "vocab.json"
MERGES_TXT = "merges.txt"
# class defaults for special tokens the config leaves out (transformers' __init__ signatures)
_CLASS_DEFAULTS = {
    "GPT2Tokenizer": {"unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"},
    "BloomTokenizer": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"},
    "LlamaTokenizer": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
}
_LLAMA_CLASSES = ("LlamaTokenizer", "CodeLlamaTokenizer")


def resolve_files(path: str) -> tuple[str, str | None, str | None]:
    """(tokenizer.json or vocab.json path, merges.txt path or None, checkpoint directory or None)."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, TOKENIZER_JSON)):
            return os.path.join(path, TOKENIZER_JSON), None, path
        return os.path.join(path, VOCAB_JSON), os.path.join(path, MERGES_TXT), path
    if os.path.basename(path) == VOCAB_JSON or path.endswith(".vocab.json"):
        return path, os.path.join(os.path.dirname(path), MERGES_TXT), None
    return path, None, None


def _class_name(settings: TokenizerSettings) -> str:
    return (settings.tokenizer_class or "").replace("Fast", "")


def _backend_from_json(path: str):
    from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
    if not os.path.isfile(path):
        raise TokenizerError(f"{path}: tokenizer file not found")
    try:
        return Tokenizer.from_file(path)
    except Exception as exc:  # noqa: BLE001  the Rust side raises plain Exception
        raise TokenizerError(f"{path}: not a valid tokenizers JSON file ({exc})") from None


def _backend_from_bpe(vocab: str, merges: str, settings: TokenizerSettings, specials: dict):
    """transformers' GPT2Converter, rebuilt with the tokenizers library."""
    # pylint: disable=import-outside-toplevel
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    for path in (vocab, merges):
        if not os.path.isfile(path):
            raise TokenizerError(f"{path}: tokenizer file not found (a GPT-2 BPE tokenizer needs vocab.json "
                                 "and merges.txt side by side)")
    try:
        table, merge_list = models.BPE.read_file(vocab, merges)
        bpe = models.BPE(table, merge_list, dropout=None, continuing_subword_prefix="", end_of_word_suffix="",
                         fuse_unk=False)
    except Exception as exc:  # noqa: BLE001
        raise TokenizerError(f"{vocab} / {merges}: not a valid BPE vocab/merges pair ({exc})") from None
    backend = Tokenizer(bpe)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(settings.flag("add_prefix_space",
                                                                                         False)))
    backend.decoder = decoders.ByteLevel()
    bos = specials.get("bos_token")
    if settings.flag("add_bos_token", False) and bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos.content}:0 $A:0", pair=f"{bos.content}:0 $A:0 $B:1",
            special_tokens=[(bos.content, table.get(bos.content, 0))])
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend


class HFTokenizer(BaseTokenizer):
    """`HFTokenizer(path)`: tokenizer.json, vocab.json (merges.txt beside it) or a checkpoint directory."""

    kind = "hf"

    def __init__(self, path: str, settings: TokenizerSettings | None = None):
        main, merges, directory = resolve_files(path)
        self.path = main
        self.settings = settings if settings is not None else read_settings(directory)
        cls = _class_name(self.settings)
        specials = {k: AddedTokenSpec(v) for k, v in _CLASS_DEFAULTS.get(cls, {}).items()}
        specials.update(self.settings.special)
        self._specials = {k: specials[k] for k in SPECIAL_KEYS if specials.get(k) is not None}
        self._additional = list(self.settings.additional_special)
        if merges is None:
            self.backend = _backend_from_json(main)
        else:
            self.backend = _backend_from_bpe(main, merges, self.settings, self._specials)
        self._add_missing_tokens()
        self._set_prefix_space()
        if cls in _LLAMA_CLASSES:
            self._llama_post_processor()
        self.backend.encode_special_tokens = bool(self.settings.flag("split_special_tokens", False))
        self.clean_up_spaces = bool(self.settings.flag("clean_up_tokenization_spaces", False))
        self.vocab_size = self.backend.get_vocab_size(with_added_tokens=True)

    def _add_missing_tokens(self) -> None:
        from tokenizers import AddedToken  # pylint: disable=import-outside-toplevel
        known = {tok.content for tok in self.backend.get_added_tokens_decoder().values()}
        todo = [spec for _, spec in sorted(self.settings.added.items()) if spec.content not in known]
        names = {spec.content for spec in todo} | known
        todo += [spec for spec in list(self._specials.values()) + self._additional
                 if spec.content not in names and not names.add(spec.content)]
        special_strings = set(self.all_special_tokens)
        for spec in todo:
            token = AddedToken(spec.content, single_word=spec.single_word, lstrip=spec.lstrip, rstrip=spec.rstrip,
                               normalized=spec.normalized, special=spec.special or spec.content in special_strings)
            self.backend.add_tokens([token])

    def _set_prefix_space(self) -> None:
        """HF: a pre-tokenizer carrying add_prefix_space gets the config's value (default false)."""
        from tokenizers import pre_tokenizers  # pylint: disable=import-outside-toplevel
        want = bool(self.settings.flag("add_prefix_space", False))
        try:
            state = json.loads(self.backend.pre_tokenizer.__getstate__())
            if state.get("add_prefix_space", want) != want:
                cls = getattr(pre_tokenizers, state.pop("type"))
                state["add_prefix_space"] = want
                self.backend.pre_tokenizer = cls(**state)
        except Exception:  # noqa: BLE001  HF ignores pre-tokenizers it cannot rebuild the same way
            pass

    def _llama_post_processor(self) -> None:
        """LlamaTokenizerFast.update_post_processor: BOS/EOS from add_bos_token / add_eos_token."""
        from tokenizers import processors  # pylint: disable=import-outside-toplevel
        add = {"bos_token": bool(self.settings.flag("add_bos_token", True)),
               "eos_token": bool(self.settings.flag("add_eos_token", False))}
        tokens = {}
        for key, flag in add.items():
            token, tid = self._special_content(key), self._special_id(key)
            if flag and (token is None or tid is None):
                raise TokenizerError(f"{self.path}: add_{key} is true but the checkpoint defines no {key}")
            if flag:
                tokens[key] = (token, tid)
        bos = f"{tokens['bos_token'][0]}:0 " if "bos_token" in tokens else ""
        eos = f" {tokens['eos_token'][0]}:0" if "eos_token" in tokens else ""
        single = f"{bos}$A:0{eos}"
        pair = f"{single} {bos.replace(':0', ':1')}$B:1{eos.replace(':0', ':1')}"
        self.backend.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                                    special_tokens=list(tokens.values()))

    def _lookup(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, tid: int) -> str:
        token = self.backend.id_to_token(int(tid))
        if token is None:
            raise TokenizerError(f"token id {tid} is outside the vocab (size {self.vocab_size})")
        return token

    def encode_with_offsets(self, text: str, parse_special: bool = True,
                            add_special_tokens: bool = False) -> tuple[list[int], Offsets]:
        split = self.backend.encode_special_tokens
        self.backend.encode_special_tokens = split or not parse_special
        try:
            enc = self.backend.encode(text, add_special_tokens=add_special_tokens)
        finally:
            self.backend.encode_special_tokens = split
        return list(enc.ids), [tuple(o) for o in enc.offsets]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        text = self.backend.decode(self._check_ids(ids), skip_special_tokens=skip_special_tokens)
        return clean_up_tokenization(text) if self.clean_up_spaces else text
