"""Perplexity: exp of the token-weighted mean negative log-likelihood over every scored token of a data file.

Documents: a .txt file is one document (the HF recipe joins its corpus into one text as well); a .jsonl file
gives one document per line: a `text` field (or `--text-key`), or a chat row (`{"messages": [...]}`, or the
official / mindformers SFT formats of `telechat-ms preprocess`) rendered with the model's chat template. With
`answers_only` only the assistant answers of chat rows count (the tokens SFT trains on: the perplexity is then
exp of the SFT loss on that data), each read with the whole conversation before it as context.

Long documents use the sliding window of the HF perplexity recipe (transformers docs, "Perplexity of
fixed-length models"): windows start every `stride` tokens, each at most `max_length` tokens, and a window
scores only the tokens after the previous window's end, with everything before them in the window as
context. The first token of a document is never scored (nothing predicts it). stride = max_length gives
disjoint windows. Unlike the recipe's printed code, which weighs each window's mean loss by a token count
that is one too small for every window after the first, we sum the exact per-token NLLs: the mean is
over exactly the scored tokens.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..config.base import ConfigError


@dataclass
class Window:
    document: int
    begin: int                 # first token of the window in the document
    end: int                   # one past the last token
    n_scored: int              # the window's last n_scored tokens are scored


def sliding_windows(n_tokens: int, max_length: int, stride: int | None = None, document: int = 0) -> list[Window]:
    """The HF recipe's windows over a document of n_tokens tokens:

        prev_end = 0
        for begin in range(0, n, stride):
            end = min(begin + max_length, n); trg_len = end - prev_end   # labels[:-trg_len] = -100
            ...; prev_end = end; if end == n: break

    The model shifts labels by one, so the window's first token is never a target: n_scored = min(trg_len,
    end - begin - 1)."""
    stride = max_length if stride is None else stride
    if max_length < 2:
        raise ConfigError(f"max_length must be >= 2 (one context token and one target), got {max_length}")
    if not 1 <= stride <= max_length:
        raise ConfigError(f"stride must be in [1, max_length={max_length}], got {stride}")
    windows, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        n_scored = min(end - prev_end, end - begin - 1)
        if n_scored > 0:
            windows.append(Window(document, begin, end, n_scored))
        prev_end = end
        if end == n_tokens:
            break
    return windows


@dataclass
class PerplexityReport:
    perplexity: float
    nll_mean: float                      # natural log, per scored token
    tokens_scored: int
    documents: int
    windows: int
    max_length: int
    stride: int
    batch_size: int
    seconds: float
    model: str = ""
    data: str = ""
    answers_only: bool = False           # only the assistant answers of chat rows were counted
    per_document: list = field(default_factory=list)    # [{"document", "tokens_scored", "nll_mean", "perplexity"}]

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2) + "\n"

    def summary(self) -> str:
        what = "answer tokens" if self.answers_only else "tokens"
        return (f"perplexity {self.perplexity:.4f} (mean NLL {self.nll_mean:.6f} nats over {self.tokens_scored} "
                f"{what}, {self.documents} documents, {self.windows} windows of <= {self.max_length} tokens, "
                f"stride {self.stride}) | {self.seconds:.1f} s")


def perplexity(scorer, documents: list[list[int]], max_length: int, stride: int | None = None,
               progress: bool = True, masks: list | None = None) -> PerplexityReport:
    """Token-weighted perplexity of token-id documents under `scorer` (a telechat_ms.eval.scoring.TokenScorer).
    `masks[d]` (bool per token of document d, or None for all): only these tokens count as targets (the
    assistant answers of a chat row, the tokens SFT trains on); the windows are the same."""
    from tqdm import tqdm   # pylint: disable=import-outside-toplevel
    stride = max_length if stride is None else stride
    masks = masks or [None] * len(documents)
    windows = [w for d, ids in enumerate(documents) for w in sliding_windows(len(ids), max_length, stride, d)
               if masks[d] is None or masks[d][w.end - w.n_scored:w.end].any()]
    if not windows:
        raise ConfigError("no token to score: every document has fewer than 2 tokens (or no answer tokens)")
    requests = [(documents[w.document][w.begin:w.end], w.n_scored) for w in windows]
    start = time.perf_counter()
    with tqdm(total=sum(w.n_scored for w in windows), desc="perplexity", unit="tok", disable=not progress,
              dynamic_ncols=True) as bar:
        scored = scorer.score(requests, on_batch=lambda done: bar.update(sum(windows[i].n_scored for i in done)))
    seconds = time.perf_counter() - start
    nll = [0.0] * len(documents)
    count = [0] * len(documents)
    for w, s in zip(windows, scored):
        keep = masks[w.document]
        keep = slice(None) if keep is None else keep[w.end - w.n_scored:w.end]
        nll[w.document] -= float(s.logprobs[keep].sum())
        count[w.document] += int(np.ones(w.n_scored, bool)[keep].sum())
    total_tokens = sum(count)
    mean = sum(nll) / total_tokens
    per_doc = [{"document": d, "tokens_scored": c, "nll_mean": n / c, "perplexity": _exp(n / c)}
               for d, (n, c) in enumerate(zip(nll, count)) if c]
    return PerplexityReport(_exp(mean), mean, total_tokens, len(documents), len(windows), max_length, stride,
                            scorer.batch_size, seconds, per_document=per_doc)


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else float("inf")


# ---- reading documents -------------------------------------------------------------------------------------

def read_documents(path: str, tokenizer, text_key: str = "text", template=None,
                   answers_only: bool = False) -> tuple[list[list[int]], list]:
    """(token ids of each document, masks) of a .txt / .jsonl file (module docstring); masks[d] is None (every
    token counts) or, with `answers_only`, True on the assistant-answer tokens of a chat row. Errors name file
    and line."""
    if not os.path.isfile(path):
        raise ConfigError(f"--data {path}: no such file")
    if path.endswith(".jsonl"):
        return _read_jsonl(path, tokenizer, text_key, template, answers_only)
    if answers_only:
        raise ConfigError(f"--answers-only: {path} is plain text; it needs chat rows (.jsonl)")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--data {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise ConfigError(f"--data {path}: the file is empty")
    return [tokenizer.encode(text)], [None]


def _read_jsonl(path: str, tokenizer, text_key: str, template, answers_only: bool):
    docs, masks = [], []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                ids, mask = _row_ids(json.loads(raw.decode("utf-8")), tokenizer, text_key, template, answers_only)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ConfigError(f"{path}:{lineno}: not a JSON line ({exc})") from None
            except ConfigError as exc:
                raise ConfigError(f"{path}:{lineno}: {exc}") from None
            docs.append(ids)
            masks.append(mask)
    if not docs:
        raise ConfigError(f"--data {path}: no documents (every line is blank)")
    return docs, masks


def _row_ids(row, tokenizer, text_key: str, template, answers_only: bool):
    """A text row is encoded as the tokenizer does (BOS where the checkpoint's tokenizer adds one); a chat
    row is the rendered conversation, as training sees it (with `answers_only`, masked to the tokens whose
    SFT label is set)."""
    if isinstance(row, dict) and isinstance(row.get(text_key), str):
        if answers_only:
            raise ConfigError(f"--answers-only needs chat rows, got a '{text_key}' row")
        return tokenizer.encode(row[text_key]), None
    from ..data.chat_template import render_ids, render_training   # pylint: disable=import-outside-toplevel
    from ..data.formats import PARSERS, detect_format   # pylint: disable=import-outside-toplevel
    if isinstance(row, dict) and isinstance(row.get("messages"), list):
        messages, tools = row["messages"], None
    elif (kind := detect_format(row)) is not None:
        sample = PARSERS[kind](row)
        messages, tools = sample.messages, sample.tools
    else:
        raise ConfigError(f"expected a '{text_key}' string field, a 'messages' list or an SFT row (official "
                          "'dialog' / mindformers 'input'+'output')")
    if not answers_only:
        return render_ids(tokenizer, messages, template, tools), None
    ids, labels = render_training(tokenizer, messages, template, tools)
    return list(ids), np.asarray(labels) != -100
