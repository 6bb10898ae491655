"""MindRecord written by `telechat-ms preprocess` -> a batched mindspore.dataset pipeline for training.

Stored columns (int32, one row = seq_length + 1 tokens; see packing.py / docs/data.md):
    input_ids, labels, position_ids, document_ids
Derived columns, computed per row on request:
    loss_mask       int32  1 where labels != -100 (mindformers' column of that name)
    attention_mask  int32  1 on real tokens, 0 on padding (TelechatForCausalLM's `attention_mask`)
    actual_seq_len  int32  cumulative document ends within the row, right-filled with the row length to a
                           fixed width (FlashAttention TND / mindformers' compressed EOD mask)
"""
from __future__ import annotations

import glob
import os
from typing import Sequence

import numpy as np

from ..config.base import ConfigError
from .packing import COLUMNS, IGNORE_INDEX, actual_seq_len

DERIVED = ("loss_mask", "attention_mask", "actual_seq_len")


def mindrecord_files(path: str) -> list[str]:
    """A .mindrecord file, or every *.mindrecord file in a directory (sorted)."""
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.mindrecord")))
        if not files:
            raise ConfigError(f"{path}: no *.mindrecord file in this directory")
        return files
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: dataset file not found")
    return [path]


def row_length(path: str) -> int:
    """Tokens per row (seq_length + 1), read from the MindRecord schema; checks the column contract."""
    from mindspore.mindrecord import FileReader  # pylint: disable=import-outside-toplevel
    lengths = set()
    for file in mindrecord_files(path):
        reader = FileReader(file)
        try:
            schema = reader.schema()
        finally:
            reader.close()
        for name in COLUMNS:
            spec = schema.get(name)
            if spec is None or spec.get("type") != "int32" or len(spec.get("shape", [])) != 1:
                raise ConfigError(f"{file}: column '{name}' missing or not int32 [length] (found {spec}); "
                                  "write the dataset with `telechat-ms preprocess`")
            lengths.add(int(spec["shape"][0]))
    if len(lengths) != 1 or min(lengths) < 2:
        raise ConfigError(f"{path}: rows of unequal or invalid length {sorted(lengths)}")
    return lengths.pop()


def _derive(labels: np.ndarray, document_ids: np.ndarray, width: int):
    loss_mask = (labels != IGNORE_INDEX).astype(np.int32)
    attention_mask = (document_ids != 0).astype(np.int32)
    return labels, document_ids, loss_mask, attention_mask, actual_seq_len(document_ids, width)


def create_dataset(path: str, batch_size: int, seq_length: int | None = None,
                   columns: Sequence[str] = COLUMNS, shuffle: bool = True, seed: int | None = None,
                   num_shards: int | None = None, shard_id: int | None = None, drop_remainder: bool = True,
                   actual_seq_len_width: int | None = None, num_parallel_workers: int = 1):
    """Batched dataset yielding `columns` in that order, each (batch_size, row_length) int32 (actual_seq_len:
    (batch_size, width)). `seq_length`, when given, must match the stored rows (seq_length + 1 tokens).
    `num_shards`/`shard_id` split the rows between data-parallel ranks."""
    import mindspore.dataset as ds  # pylint: disable=import-outside-toplevel
    unknown = [c for c in columns if c not in COLUMNS + DERIVED]
    if unknown or not columns:
        raise ConfigError(f"unknown dataset column(s) {unknown or '(none given)'}; "
                          f"available: {', '.join(COLUMNS + DERIVED)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    length = row_length(path)
    if seq_length is not None and length != seq_length + 1:
        raise ConfigError(f"{path}: rows hold {length} tokens = seq_length {length - 1} + 1, but the model's "
                          f"seq_length is {seq_length}; re-run preprocess with --seq-length {seq_length}")
    if seed is not None:
        ds.config.set_seed(seed)
    dataset = ds.MindDataset(mindrecord_files(path), columns_list=list(COLUMNS), shuffle=shuffle,
                             num_shards=num_shards, shard_id=shard_id, num_parallel_workers=num_parallel_workers)
    if any(c in DERIVED for c in columns):
        width = actual_seq_len_width or length
        dataset = dataset.map(operations=lambda lab, doc: _derive(lab, doc, width),
                              input_columns=["labels", "document_ids"],
                              output_columns=["labels", "document_ids"] + list(DERIVED))
    dataset = dataset.project(list(columns))
    return dataset.batch(batch_size, drop_remainder=drop_remainder)


def read_rows(path: str) -> dict[str, np.ndarray]:
    """All stored rows as numpy arrays (num_rows, row_length), in file order (tests, inspection)."""
    import mindspore.dataset as ds  # pylint: disable=import-outside-toplevel
    row_length(path)
    dataset = ds.MindDataset(mindrecord_files(path), columns_list=list(COLUMNS), shuffle=False)
    rows = {name: [] for name in COLUMNS}
    for item in dataset.create_dict_iterator(output_numpy=True, num_epochs=1):
        for name in COLUMNS:
            rows[name].append(item[name])
    return {name: np.stack(values) for name, values in rows.items()}
