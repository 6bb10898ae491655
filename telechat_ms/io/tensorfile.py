"""Lazy, bounded reads of tensors stored as raw bytes in files (safetensors, MindSpore .ckpt).

A tensor is described by `TensorInfo` (dtype, shape and the file byte extents that, concatenated, hold it in C
order). Reads are by flat element range with plain seek+readinto into a fresh buffer: no mmap, so the
process never keeps file pages mapped and its RSS stays at the size of the chunk being converted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .dtypes import BY_NAME
from .errors import ConvertError


@dataclass(frozen=True)
class TensorInfo:
    key: str
    dtype: str                                   # our dtype name (dtypes.BY_NAME), or the raw code if unknown
    shape: tuple[int, ...]
    path: str                                    # file holding it (for messages and reads)
    extents: tuple[tuple[int, int], ...] = ()    # (file offset, nbytes); empty for torch-held tensors

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return BY_NAME[self.dtype].itemsize if self.dtype in BY_NAME else 0

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


def byte_ranges(info: TensorInfo, start: int, stop: int) -> list[tuple[int, int]]:
    """(file offset, nbytes) pieces holding elements [start, stop) of the flattened tensor."""
    lo, hi = start * info.itemsize, stop * info.itemsize           # byte range inside the tensor
    out, pos = [], 0
    for offset, size in info.extents:
        a, b = max(lo, pos), min(hi, pos + size)
        if a < b:
            out.append((offset + a - pos, b - a))
        pos += size
    return out


class ExtentReader:
    """Reads element ranges of TensorInfo extents; keeps at most one file open."""

    def __init__(self):
        self._path, self._fh = None, None

    def file(self, path: str):
        if path != self._path:
            self.close()
            self._fh, self._path = open(path, "rb", buffering=0), path   # pylint: disable=consider-using-with
        return self._fh

    def read(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        """Elements [start, stop) of the flattened tensor as a 1-D array of its storage dtype."""
        out = np.empty(stop - start, dtype=BY_NAME[info.dtype].storage)
        view, done = memoryview(out).cast("B"), 0
        fh = self.file(info.path)
        for offset, size in byte_ranges(info, start, stop):
            fh.seek(offset)
            got = fh.readinto(view[done:done + size])
            if got != size:
                raise ConvertError(f"{info.path}: truncated while reading tensor '{info.key}' "
                                   f"(expected {size} bytes at offset {offset}, got {got})")
            done += size
        return out

    def close(self):
        if self._fh is not None:
            self._fh.close()
        self._path, self._fh = None, None
