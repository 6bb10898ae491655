"""Packing tokenized samples into fixed-length rows with per-document boundaries (the column contract).

Every row has `row_length` = seq_length + 1 int32 tokens (the model shifts inside: logits[:, :-1] against
labels[:, 1:]) and four columns (docs/data.md is the authoritative description):
  input_ids     token ids; padding is <_pad> (3) at the right end
  labels        = input_ids where the loss counts, -100 elsewhere (padding included)
  position_ids  0, 1, 2, ... restarting at every document (padding counts 0, 1, ... as its own run)
  document_ids  1, 2, ... per packed sample, 0 on padding
Attention must stay inside a document: query i may see key j iff j <= i and document_ids[i] == document_ids[j]
(`document_attention_mask`); Ascend's FlashAttention takes the same boundaries as cumulative
`actual_seq_len` (`actual_seq_len`). Because the first token of every document (<_start> / <_system>) has
label -100, no position is ever trained to predict a token of the next document.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE_INDEX = -100
COLUMNS = ("input_ids", "labels", "position_ids", "document_ids")


@dataclass
class Row:
    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    document_ids: np.ndarray
    num_docs: int
    num_tokens: int        # non-padding tokens

    def as_dict(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in COLUMNS}


@dataclass
class Packer:
    """Greedy in-order packing: a sample goes into the open row if it fits, otherwise the row is closed.

    Samples must already be <= row_length (the caller truncates or skips, and counts it). With pack=False
    every sample gets its own row. `flush()` returns the last, partially filled row — never dropped.
    """
    row_length: int
    pad_id: int = 3
    pack: bool = True
    _ids: list = field(default_factory=list)
    _labels: list = field(default_factory=list)
    _lengths: list = field(default_factory=list)

    def add(self, input_ids: list[int], labels: list[int]) -> list[Row]:
        if len(input_ids) != len(labels):
            raise ValueError(f"input_ids ({len(input_ids)}) and labels ({len(labels)}) differ in length")
        if not 0 < len(input_ids) <= self.row_length:
            raise ValueError(f"sample length {len(input_ids)} not in [1, {self.row_length}]")
        if labels[0] != IGNORE_INDEX:
            # a trained first token would be "predicted" by the previous document's last position
            raise ValueError("the first token of a sample must have label -100 (document boundary)")
        closed = []
        if self._lengths and (not self.pack or sum(self._lengths) + len(input_ids) > self.row_length):
            closed.append(self._close())
        self._ids += input_ids
        self._labels += labels
        self._lengths.append(len(input_ids))
        return closed

    def flush(self) -> list[Row]:
        return [self._close()] if self._lengths else []

    def _close(self) -> Row:
        used, pad = len(self._ids), self.row_length - len(self._ids)
        positions = [p for n in self._lengths for p in range(n)] + list(range(pad))
        docs = [d + 1 for d, n in enumerate(self._lengths) for _ in range(n)] + [0] * pad
        row = Row(np.asarray(self._ids + [self.pad_id] * pad, np.int32),
                  np.asarray(self._labels + [IGNORE_INDEX] * pad, np.int32),
                  np.asarray(positions, np.int32), np.asarray(docs, np.int32),
                  num_docs=len(self._lengths), num_tokens=used)
        self._ids, self._labels, self._lengths = [], [], []
        return row


def document_attention_mask(document_ids: np.ndarray) -> np.ndarray:
    """Reference mask (..., S) -> (..., S, S) bool, True = may attend: causal and same document.

    Padding (document 0) attends causally to padding only, so its rows stay finite; their outputs carry no loss.
    """
    doc = np.asarray(document_ids)
    seq = doc.shape[-1]
    causal = np.tril(np.ones((seq, seq), dtype=bool))
    return causal & (doc[..., :, None] == doc[..., None, :])


def actual_seq_len(document_ids: np.ndarray, width: int | None = None) -> np.ndarray:
    """Cumulative end offsets of the runs of equal document ids in one row (padding is the last run).

    E.g. [1,1,1,2,2,0,0] -> [3, 5, 7]. With `width` the result is right-filled with the row length so every
    row has the same shape (zero-length trailing segments); a row with more runs than `width` is an error.
    """
    doc = np.asarray(document_ids).reshape(-1)
    ends = np.flatnonzero(np.diff(doc) != 0) + 1
    ends = np.append(ends, doc.shape[0]).astype(np.int32)
    if width is None:
        return ends
    if ends.shape[0] > width:
        raise ValueError(f"row has {ends.shape[0]} segments, more than actual_seq_len width {width}")
    return np.concatenate([ends, np.full(width - ends.shape[0], doc.shape[0], np.int32)])
