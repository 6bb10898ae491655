"""`telechat-ms preprocess`: SFT jsonl (mindformers or official format) -> packed MindRecord for training.

Pipeline: read lines (errors name file:line) -> messages -> chat template (jinja) -> (input_ids, labels) with
loss only on assistant answers and their end marker -> fit to seq_length + 1 (truncate / skip / error,
counted) -> greedy packing with per-document boundaries -> MindRecord written in a temporary directory and
renamed into place. Any tokenizer kind and chat template (--tokenizer-kind, --chat-template). Column
contract: telechat_ms/data/packing.py and docs/data.md. Exit codes: 0 ok, 2 bad input.
"""
from __future__ import annotations

import argparse
import glob
import os
import random
import signal
import shutil
import sys
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from ..config.base import ConfigError
from .chat_template import IGNORE_INDEX, STYLES, ChatTemplate, TemplateError, render_training, resolve_template
from .formats import FORMATS, PARSERS, DataError, Sample, count_lines, detect_format, read_jsonl
from .packing import COLUMNS, Packer, Row
from .templates import BUILTIN_TEMPLATES
from .tokenizer import KINDS, load_tokenizer

OVERFLOW = ("truncate", "skip", "error")
MAX_WARNINGS = 5


@dataclass
class Options:
    seq_length: int = 8192
    input_format: str = "auto"           # auto | mindformers | official (auto: from each file's first record)
    template: str = "auto"               # auto | chat | mindformers (auto: chat for official, mindformers else)
    chat_template: str | None = None     # built-in name, jinja file or "checkpoint"; overrides `template`
    default_template: str | None = None  # used by auto for non-TeleChat2 tokenizers without a checkpoint template
    tokenizer_kind: str = "auto"         # auto | telechat2 | sentencepiece | hf
    train_turn_tokens: bool = False      # also train <_user>/<_bot> (official DeepSpeed loss mask)
    overflow: str = "truncate"           # over-long samples: truncate | skip | error
    pack: bool = True
    shuffle: bool = False
    seed: int = 2024
    skip_bad: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        if not isinstance(self.seq_length, int) or self.seq_length < 2:
            raise ConfigError(f"seq_length must be an integer >= 2, got {self.seq_length!r}")
        for name, value, allowed in (("format", self.input_format, ("auto",) + FORMATS),
                                     ("template", self.template, ("auto",) + STYLES),
                                     ("tokenizer kind", self.tokenizer_kind, ("auto",) + KINDS),
                                     ("overflow", self.overflow, OVERFLOW)):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")

    @property
    def row_length(self) -> int:
        return self.seq_length + 1


@dataclass
class Summary:
    row_length: int
    files: int = 0
    lines: int = 0                 # non-blank lines read
    bad_skipped: int = 0           # --skip-bad
    samples: int = 0               # lines parsed into a sample
    written: int = 0               # samples that are in the output
    truncated: int = 0             # written, but cut to row_length
    skipped_too_long: int = 0      # --overflow skip
    skipped_no_target: int = 0     # truncation removed every trained token
    rows: int = 0
    tokens: int = 0                # non-padding tokens in the rows
    trained_tokens: int = 0        # tokens with a label
    warnings: int = field(default=0, repr=False)

    @property
    def fill_rate(self) -> float:
        return self.tokens / (self.rows * self.row_length) if self.rows else 0.0

    def check(self) -> None:
        """The accounting identity: every line is a written sample or a reported skip."""
        if self.lines != self.samples + self.bad_skipped or \
                self.samples != self.written + self.skipped_too_long + self.skipped_no_target:
            raise RuntimeError(f"internal: sample accounting does not add up: {self}")

    def format(self) -> str:
        return "\n".join([
            f"preprocess summary: {self.files} file(s), {self.lines} lines, {self.samples} samples "
            f"({self.bad_skipped} bad lines skipped)",
            f"  written {self.written} samples in {self.rows} packs (rows of {self.row_length} tokens = "
            f"seq_length {self.row_length - 1} + 1)",
            f"  over-long: {self.truncated} truncated, {self.skipped_too_long} skipped, "
            f"{self.skipped_no_target} skipped (nothing left to train after truncation)",
            f"  tokens {self.tokens} ({self.trained_tokens} with loss), fill rate {100 * self.fill_rate:.1f}%"])


def _warn(summary: Summary, message: str) -> None:
    summary.warnings += 1
    if summary.warnings <= MAX_WARNINGS:
        print(f"warning: {message}", file=sys.stderr)
    elif summary.warnings == MAX_WARNINGS + 1:
        print("warning: further warnings suppressed; the summary has the counts", file=sys.stderr)


def read_samples(paths: Iterable[str], opts: Options, summary: Summary, bar=None,
                 templates: dict | None = None) -> Iterator[Sample]:
    """Parsed samples of all files in order; bad lines raise DataError(file:line) or are counted.
    `templates` maps an input format to the ChatTemplate its samples are rendered with."""
    for path in paths:
        summary.files += 1
        fmt = None if opts.input_format == "auto" else opts.input_format
        last = 0
        for lineno, obj, error in read_jsonl(path):
            if bar is not None:
                bar.update(lineno - last)
            last = lineno
            summary.lines += 1
            fmt = fmt or detect_format(obj)
            try:
                if error is not None:
                    raise DataError(error)
                if fmt is None:
                    raise DataError("cannot tell the format: expected 'input'/'output' (mindformers) "
                                    "or 'dialog' (official) fields")
                sample = PARSERS[fmt](obj)
            except DataError as exc:
                if not opts.skip_bad:
                    raise DataError(f"{path}:{lineno}: {exc} (use --skip-bad to skip bad lines)") from None
                summary.bad_skipped += 1
                _warn(summary, f"{path}:{lineno}: skipped: {exc}")
                continue
            sample.where = f"{path}:{lineno}"
            sample.template = (templates or {}).get(fmt)
            summary.samples += 1
            yield sample


def tokenize_sample(tokenizer, sample: Sample, opts: Options) -> tuple[list[int], list[int]]:
    if sample.tool and tokenizer.kind == "telechat2" and not tokenizer.has_tool_tokens:
        raise DataError(f"{sample.where}: the sample is marked \"tool\": true but the tokenizer has no tool "
                        "tokens (115B layout); use a 3B/7B/35B-Nov tokenizer or drop tool samples")
    try:
        return render_training(tokenizer, sample.messages, sample.template, sample.tools,
                               train_turn_tokens=opts.train_turn_tokens)
    except TemplateError as exc:
        raise DataError(f"{sample.where}: {exc}") from None


def pick_templates(opts: Options, tokenizer, tokenizer_path: str | None) -> dict[str, ChatTemplate]:
    """The template of each input format: --chat-template for all; else --template; else (auto) TeleChat2's
    chat / mindformers layouts for a TeleChat2 tokenizer, and for other tokenizers the checkpoint's
    chat_template or `default_template`."""
    if opts.chat_template == "checkpoint":
        chosen = resolve_template(None, tokenizer_path, None)
    elif opts.chat_template is not None:
        chosen = resolve_template(opts.chat_template)
    elif opts.template != "auto":
        chosen = resolve_template(opts.template)
    elif tokenizer.kind == "telechat2":
        return {"official": resolve_template("chat"), "mindformers": resolve_template("mindformers")}
    else:
        chosen = resolve_template(None, tokenizer_path, opts.default_template)
    return {fmt: chosen for fmt in FORMATS}


def pad_id_of(tokenizer) -> int:
    """Padding id: the tokenizer's pad token, else unk, else eos (padding is never trained nor attended)."""
    for tid in (tokenizer.pad_id, tokenizer.unk_id, tokenizer.eos_id):
        if tid is not None:
            return tid
    return 0


def fit(ids: list[int], labels: list[int], where: str, opts: Options, summary: Summary):
    """The sample cut to row_length (or None when skipped); every outcome is counted."""
    limit = opts.row_length
    if len(ids) <= limit:
        return ids, labels
    if opts.overflow == "error":
        raise DataError(f"{where}: sample has {len(ids)} tokens, more than seq_length + 1 = {limit} "
                        "(use --overflow truncate or --overflow skip)")
    if opts.overflow == "skip":
        summary.skipped_too_long += 1
        _warn(summary, f"{where}: skipped: {len(ids)} tokens > {limit}")
        return None
    ids, labels = ids[:limit], labels[:limit]
    if all(label == IGNORE_INDEX for label in labels):
        summary.skipped_no_target += 1
        _warn(summary, f"{where}: skipped: truncated to {limit} tokens, no answer token left")
        return None
    summary.truncated += 1
    _warn(summary, f"{where}: truncated to {limit} tokens")
    return ids, labels


def build_rows(tokenizer, samples: Iterable[Sample], opts: Options, summary: Summary) -> Iterator[Row]:
    packer = Packer(opts.row_length, pad_id_of(tokenizer), opts.pack)

    def account(rows: list[Row]) -> list[Row]:
        for row in rows:
            summary.rows += 1
            summary.tokens += row.num_tokens
            summary.trained_tokens += int((row.labels != IGNORE_INDEX).sum())
        return rows

    for sample in samples:
        fitted = fit(*tokenize_sample(tokenizer, sample, opts), sample.where, opts, summary)
        if fitted is None:
            continue
        summary.written += 1
        yield from account(packer.add(*fitted))
    yield from account(packer.flush())


class AtomicMindRecord:
    """FileWriter into a hidden temporary directory beside `output`; renamed into place on success only.

    MindRecord refuses files whose name differs from the one they were written under (the .db index
    records it), so the temporary directory keeps the final base name and only the directory changes.
    """

    def __init__(self, output: str, row_length: int, overwrite: bool):
        self.output = os.path.abspath(output)
        self.paths = (self.output, self.output + ".db")
        existing = [p for p in self.paths if os.path.exists(p)]
        if existing and not overwrite:
            raise DataError(f"{existing[0]}: output exists; pass --overwrite to replace it")
        self.row_length = row_length
        self.tmpdir = None
        self.writer = None
        self._buffer: list[dict] = []

    def __enter__(self):
        from mindspore.mindrecord import FileWriter  # pylint: disable=import-outside-toplevel
        from ..io.tempdirs import make_owned_tempdir, remove_stale_tempdirs  # pylint: disable=import-outside-toplevel
        parent, base = os.path.dirname(self.output), os.path.basename(self.output)
        os.makedirs(parent, exist_ok=True)
        # leftovers of a killed run into the same output (never a live run's): removed, and said so on stderr
        remove_stale_tempdirs(parent, f".{glob.escape(base)}.tmp-*", what="partial preprocess output")
        self.tmpdir = make_owned_tempdir(parent, f".{base}.tmp-")
        self.writer = FileWriter(os.path.join(self.tmpdir, os.path.basename(self.output)), shard_num=1,
                                 overwrite=True)
        # MindRecord's default 32 MB pages make a tiny file 50 MB (sparse); short rows get smaller pages
        # (>= 256 rows each), long rows keep the default so the page index in the header stays small
        row_bytes = 4 * len(COLUMNS) * self.row_length
        self.writer.set_page_size(min(max(1 << 20, 1 << (256 * row_bytes - 1).bit_length()), 1 << 25))
        self.writer.add_schema({name: {"type": "int32", "shape": [self.row_length]} for name in COLUMNS},
                               "telechat_sft")
        return self

    def write(self, row: Row) -> None:
        self._buffer.append(row.as_dict())
        if len(self._buffer) >= 256:
            self._drain()

    def _drain(self) -> None:
        if self._buffer:
            self.writer.write_raw_data(self._buffer)
            self._buffer = []

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._drain()
                self.writer.commit()
                base = os.path.basename(self.output)
                # index first, data file last: a reader opens the data file, which appears complete
                os.replace(os.path.join(self.tmpdir, base + ".db"), self.paths[1])
                os.replace(os.path.join(self.tmpdir, base), self.paths[0])
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        return False


def resolve_output(output: str) -> str:
    """A directory (existing, or written with a trailing slash) gets dataset.mindrecord, as in MindFormers."""
    if os.path.isdir(output) or output.endswith(("/", os.sep)):
        return os.path.join(output, "dataset.mindrecord")
    return output


def preprocess(inputs: list[str], output: str, tokenizer, opts: Options) -> Summary:
    """Run the pipeline; returns the summary. Raises DataError (nothing written) on bad input."""
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    tokenizer_path = tokenizer if isinstance(tokenizer, str) else getattr(tokenizer, "path", None)
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer, None if opts.tokenizer_kind == "auto" else opts.tokenizer_kind)
    templates = pick_templates(opts, tokenizer, tokenizer_path)
    for path in inputs:
        if not os.path.isfile(path):
            raise DataError(f"{path}: input file not found")
    summary = Summary(opts.row_length)
    writer = AtomicMindRecord(resolve_output(output), opts.row_length, opts.overwrite)
    total = sum(count_lines(p) for p in inputs)
    with tqdm(total=total, unit="line", desc="preprocess", disable=not opts.progress, file=sys.stderr) as bar:
        samples: Iterable[Sample] = read_samples(inputs, opts, summary, bar, templates)
        if opts.shuffle:            # needs every sample in memory; without it the pipeline streams
            samples = list(samples)
            random.Random(opts.seed).shuffle(samples)
        with writer:
            for row in build_rows(tokenizer, samples, opts, summary):
                writer.write(row)
            if summary.rows == 0:
                raise DataError(f"no sample left to write ({summary.samples} samples read); nothing written")
            summary.check()            # before the rename: a miscount must not leave an output behind
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="telechat-ms preprocess", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", "--input_dataset_file", dest="input", nargs="+", required=True,
                   help="jsonl file(s)")
    p.add_argument("--output", "--output_path", dest="output", required=True,
                   help="output .mindrecord file (a directory gets dataset.mindrecord)")
    p.add_argument("--tokenizer", "--vocab_file_path", dest="tokenizer", required=True,
                   help="checkpoint directory, tokenizer.model, tokenizer.json or vocab.json (merges.txt beside)")
    p.add_argument("--tokenizer-kind", dest="tokenizer_kind", choices=("auto",) + KINDS, default="auto",
                   help="auto: from the files present (docs/data.md)")
    p.add_argument("--seq-length", "--max_length", dest="seq_length", type=int, default=8192,
                   help="model sequence length; rows hold seq_length + 1 tokens (default 8192)")
    p.add_argument("--format", dest="input_format", choices=("auto",) + FORMATS, default="auto")
    p.add_argument("--template", choices=("auto",) + STYLES, default="auto",
                   help="chat: TeleChat2 chat template; mindformers: <_start><_user>q<_bot>a<_end> "
                        "(auto: chat for the official format, mindformers for the mindformers format)")
    p.add_argument("--chat-template", dest="chat_template", metavar="NAME|FILE",
                   help="render every sample with this template: a built-in (" + ", ".join(BUILTIN_TEMPLATES)
                        + "), a jinja file, or 'checkpoint' (the tokenizer directory's chat_template); "
                        "overrides --template. Default for non-TeleChat2 tokenizers: the checkpoint's template")
    p.add_argument("--train-turn-tokens", action="store_true",
                   help="also put the loss on <_user>/<_bot> (as the official DeepSpeed SFT code)")
    p.add_argument("--overflow", choices=OVERFLOW, default="truncate",
                   help="samples longer than seq_length + 1: truncate, skip (both counted) or error")
    p.add_argument("--no-pack", dest="pack", action="store_false", help="one sample per row")
    p.add_argument("--shuffle", action="store_true", help="shuffle samples before packing")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) malformed lines instead of failing")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def _family_defaults(tokenizer: str, fields: dict) -> dict:
    """A converted model directory as --tokenizer: its family's tokenizer kind and default template (explicit
    flags win)."""
    config_path = os.path.join(tokenizer, "model_config.yaml")
    if not os.path.isfile(config_path):
        return {}
    from ..config.model import TelechatConfig   # pylint: disable=import-outside-toplevel
    from ..families import get   # pylint: disable=import-outside-toplevel
    family = get(TelechatConfig.from_yaml(config_path).family)
    out = {}
    if fields.get("tokenizer_kind", "auto") == "auto" and family.tokenizer_kind != "auto":
        out["tokenizer_kind"] = family.tokenizer_kind
    if fields.get("default_template") is None:
        out["default_template"] = family.default_template
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:          # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    previous = signal.signal(signal.SIGTERM, _sigterm)   # timeout / Slurm / Kubernetes: clean up like Ctrl-C
    try:
        fields = {k: v for k, v in vars(args).items() if k not in ("input", "output", "tokenizer")}
        opts = Options(**{**fields, **_family_defaults(args.tokenizer, fields)})
        summary = preprocess(args.input, args.output, args.tokenizer, opts)
    except ConfigError as exc:         # DataError, TokenizerError, TemplateError: bad input
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:             # read-only or full disk: the temp directory is removed, nothing written
        print(f"error: {args.output}: cannot write: {exc.strerror or exc}"
              f"{f' ({exc.filename})' if exc.filename else ''}; nothing was written", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(summary.format())
    print(f"  output: {os.path.abspath(resolve_output(args.output))} (+ .db)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
