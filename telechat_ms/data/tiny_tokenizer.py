"""Train a tiny SentencePiece BPE model with TeleChat2's special-token layout (tests and the CPU demo).

The real TeleChat2 tokenizer.model (spec §6.1) is a 131072-piece BPE model; this one keeps every property
the data pipeline depends on — ids 0-8 and the tool tokens at 9-12 (or the 115B control pieces at 9-17),
byte fallback, split digits, dummy prefix, identity normalizer, no whitespace squeezing — in <= 512 pieces so
it fits the `tiny` model preset. Training is deterministic (one thread, fixed corpus order), so

    python -m telechat_ms.data.tiny_tokenizer --out data/tiny_tokenizer.model

reproduces the shipped data/tiny_tokenizer.model from data/sample_sft*.jsonl and the built-in text below.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path

from .chat_template import DEFAULT_SYSTEM_PROMPT, TOOLS_FOOTER, TOOLS_HEADER

# ids 4.. in order (ids 0-3 are unk/bos/eos/pad). The 3B/7B layout replaces the 115B control pieces at
# 9-12 with the tool tokens (spec §6.1; the exact 3B/7B pieces at 13-17 are unverified, so none are added).
CONTROL_PIECES = {
    "tools": ["<_user>", "<_bot>", "<_system>", "<_observation>", "<_sep>",
              "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"],
    "115b": ["<_user>", "<_bot>", "<_system>", "<_observation>", "<_sep>"]
            + [f"<_control{i}>" for i in range(1, 10)],
}
# the 115B model's user-defined pieces after the control block (its <reserveN> pieces are left out to save room)
USER_DEFINED = [str(d) for d in range(10)] + ["_", "\n", "\t", "__", "___", "____"]

REPO_DATA = Path(__file__).resolve().parents[2] / "data"
DEFAULT_CORPUS_FILES = ("sample_sft.jsonl", "sample_sft_mindformers.jsonl")

_BUILTIN_TEXT = """\
The quick brown fox jumps over the lazy dog.
Hello, world! This is a tiny tokenizer for testing the TeleChat2 data pipeline on CPU.
Question: what is the answer? Answer: the answer is forty-two.
Please answer the question in one short sentence.
今天天气很好，我们一起去公园散步吧。
请用一句话回答下面的问题。
你好，请问有什么可以帮你的吗？
谢谢你的帮助，再见！
{"name": "get_weather", "arguments": {"city": "Beijing", "unit": "celsius"}}
"""


def corpus_lines(files: list[str] | None = None) -> list[str]:
    """Texts to train on: built-in lines, template literals and every string in the given jsonl files."""
    lines = _BUILTIN_TEXT.splitlines() + [DEFAULT_SYSTEM_PROMPT, TOOLS_HEADER, TOOLS_FOOTER]
    if files is None:
        files = [str(REPO_DATA / name) for name in DEFAULT_CORPUS_FILES if (REPO_DATA / name).exists()]
    for path in files:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    lines.extend(_strings(json.loads(line)))
    # repeat the fixed literals so they get merged pieces (every chat sample carries the system prompt)
    return [text for text in lines if text] + [DEFAULT_SYSTEM_PROMPT] * 20


def keep_frequent_chars(lines: list[str], max_chars: int) -> list[str]:
    """Drop all but the `max_chars` most frequent characters from the training text.

    256 byte pieces + the specials leave ~225 pieces of a 512 vocab; Chinese text has more distinct characters
    than that, and SentencePiece refuses to train when the covered characters do not fit. The dropped ones
    are still encodable (byte fallback), they just cost 3 byte tokens each.
    """
    counts: dict[str, int] = {}
    for line in lines:
        for ch in line:
            counts[ch] = counts.get(ch, 0) + 1
    kept = set(sorted(counts, key=lambda ch: (-counts[ch], ch))[:max_chars])
    stripped = ("".join(ch for ch in line if ch in kept) for line in lines)
    return [line for line in stripped if line.strip()]


def _strings(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for value in obj.values() for s in _strings(value)]
    if isinstance(obj, list):
        return [s for value in obj for s in _strings(value)]
    return []


def train_tiny_tokenizer(out_path: str, layout: str = "tools", vocab_size: int = 512,
                         corpus_files: list[str] | None = None) -> str:
    """Train and write the model file; returns out_path. `layout`: 'tools' (3B/7B) or '115b'."""
    import sentencepiece as spm  # pylint: disable=import-outside-toplevel
    if layout not in CONTROL_PIECES:
        raise ValueError(f"layout must be one of {sorted(CONTROL_PIECES)}, got {layout!r}")
    fixed = 4 + len(CONTROL_PIECES[layout]) + len(USER_DEFINED) + 256
    if vocab_size < fixed + 32:
        raise ValueError(f"vocab_size {vocab_size} leaves no room: {fixed} pieces are fixed (specials, bytes)")
    # keep ~60 pieces for merges (the system prompt and frequent words); the rest are single characters
    lines = keep_frequent_chars(corpus_lines(corpus_files), max(16, vocab_size - fixed - 60))
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model,
        model_type="bpe", vocab_size=vocab_size, character_coverage=1.0, num_threads=1,
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", allow_whitespace_only_pieces=True, hard_vocab_limit=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        unk_piece="<_unk>", bos_piece="<_start>", eos_piece="<_end>", pad_piece="<_pad>",
        control_symbols=CONTROL_PIECES[layout], user_defined_symbols=USER_DEFINED,
        minloglevel=2)
    directory = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(directory, exist_ok=True)
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(model.getvalue())
    os.replace(tmp, out_path)
    return out_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="train the tiny TeleChat2-layout SentencePiece model")
    parser.add_argument("--out", default=str(REPO_DATA / "tiny_tokenizer.model"))
    parser.add_argument("--layout", choices=sorted(CONTROL_PIECES), default="tools")
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--corpus", nargs="*", help="jsonl files whose strings are the corpus "
                        "(default: data/sample_sft*.jsonl of this repository)")
    args = parser.parse_args(argv)
    path = train_tiny_tokenizer(args.out, args.layout, args.vocab_size, args.corpus)
    print(f"wrote {path} ({args.layout} layout, vocab {args.vocab_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
