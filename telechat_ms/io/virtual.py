"""A lazy tensor: a shape plus ordered parts whose concatenation (C order) is the tensor.

A part is either
  * a `Segment`: an element range of a flattened source tensor (expert stacking = concat, unstacking = row
    slice, reshapes, de-fusing fused projections and per-head re-interleaving = row slices), or
  * a `Transposed` block: rows [start, stop) of the transpose of a 2-D inner Virtual, i.e. columns
    [start, stop) of the inner tensor, each becoming one row. GPT-2 Conv1D weights ([in, out]) need it: an
    element range cannot express a transpose.
  * a `Computed` range: elements of a tensor made by a function of whole source tensors -- unpacking,
    act-order permutation and dequantization of GPTQ / AWQ weights (telechat_ms/quant), which neither an
    element range nor a transpose expresses.
Writers stream Segments chunk by chunk; a Transposed block is read once per output tensor (only the columns
that tensor needs, row chunk by row chunk) and then written transposed, so its peak memory is one tensor; a
Computed part is built once when written (peak: one tensor and the sources it reads).
`materialize` builds a Virtual in memory (small models, tests).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .dtypes import BY_NAME, cast
from .tensorfile import TensorInfo


@dataclass(frozen=True)
class Segment:
    key: str
    dtype: str
    start: int          # element range of the flattened source tensor
    stop: int

    @property
    def numel(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True, eq=False)
class Transposed:
    """Columns [start, stop) of the 2-D `inner` (R, C), as (stop - start) rows of length R."""
    inner: "Virtual"
    start: int
    stop: int

    @property
    def dtype(self) -> str:
        return self.inner.dtype

    @property
    def row(self) -> int:
        return self.inner.shape[0]

    @property
    def numel(self) -> int:
        return (self.stop - self.start) * self.row


@dataclass(frozen=True, eq=False)
class Computed:
    """Elements [start, stop) of the flat (C order) array `build(source)`, stored as `dtype` (storage
    dtype: bfloat16 as raw uint16). `keys`: the source tensors `build` reads."""
    build: Callable[[Any], np.ndarray]
    dtype: str
    start: int
    stop: int
    keys: tuple[str, ...] = ()

    @property
    def numel(self) -> int:
        return self.stop - self.start

    def values(self, source) -> np.ndarray:
        flat = np.ascontiguousarray(self.build(source)).reshape(-1)
        if flat.dtype != np.dtype(BY_NAME[self.dtype].storage):
            raise ValueError(f"internal error: computed tensor of {self.keys} is {flat.dtype}, declared {self.dtype}")
        return flat[self.start:self.stop]


@dataclass(frozen=True)
class Virtual:
    shape: tuple[int, ...]
    segments: tuple[Segment | Transposed | Computed, ...]     # the parts, in C order
    # True: writers keep this tensor's stored dtype whatever --dtype says (quantization scales and offsets,
    # which must round-trip bit for bit)
    keep_dtype: bool = False

    @classmethod
    def computed(cls, build: Callable[[Any], np.ndarray], shape, dtype: str, keys=(), keep_dtype=False) -> "Virtual":
        """A tensor of `shape` whose C-order elements are `build(source)` (any shape with that many elements)."""
        return cls(tuple(shape), (Computed(build, dtype, 0, math.prod(shape), tuple(keys)),), keep_dtype)

    @classmethod
    def whole(cls, info: TensorInfo, shape=None) -> "Virtual":
        return cls(tuple(info.shape if shape is None else shape), (Segment(info.key, info.dtype, 0, info.numel),))

    @classmethod
    def concat(cls, parts: list["Virtual"], shape) -> "Virtual":
        return cls(tuple(shape), tuple(s for p in parts for s in p.segments))

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def dtype(self) -> str:
        return self.segments[0].dtype

    def reshaped(self, shape) -> "Virtual":
        if math.prod(shape) != self.numel:
            raise ValueError(f"internal error: cannot view {list(self.shape)} as {list(shape)}")
        return Virtual(tuple(shape), self.segments, self.keep_dtype)

    @property
    def T(self) -> "Virtual":   # pylint: disable=invalid-name
        """The transpose of a 2-D tensor: (R, C) -> (C, R)."""
        rows, cols = self.shape
        only = self.segments[0] if len(self.segments) == 1 else None
        if isinstance(only, Transposed) and only.start == 0 and only.stop == only.inner.shape[1]:
            return only.inner                                           # (x.T).T == x
        return Virtual((cols, rows), (Transposed(self, 0, cols),))

    def rows(self, start: int, stop: int, shape=None) -> "Virtual":
        """Rows [start, stop) of axis 0, as `shape` (default: the sliced shape)."""
        row = math.prod(self.shape[1:])
        lo, hi = start * row, stop * row                   # element range inside this tensor
        picked, pos = [], 0
        for seg in self.segments:
            a, b = max(lo, pos), min(hi, pos + seg.numel)
            if a < b:
                picked.append(_slice(seg, a - pos, b - pos))
            pos += seg.numel
        return Virtual(tuple(shape or (stop - start,) + self.shape[1:]), tuple(picked), self.keep_dtype)


def _slice(part, a: int, b: int):
    """Elements [a, b) of one part (for a Transposed block: whole rows of it)."""
    if isinstance(part, Segment):
        return Segment(part.key, part.dtype, part.start + a, part.start + b)
    if isinstance(part, Computed):
        return Computed(part.build, part.dtype, part.start + a, part.start + b, part.keys)
    if a % part.row or b % part.row:
        raise ValueError(f"internal error: slice [{a}, {b}) cuts rows of length {part.row} of a transposed block")
    return Transposed(part.inner, part.start + a // part.row, part.start + b // part.row)


def read_elements(tensor: Virtual, source, start: int, stop: int, dtype: str | None = None) -> np.ndarray:
    """Elements [start, stop) of the flattened tensor, cast to `dtype` storage (None: as stored)."""
    pieces, pos = [], 0
    for part in tensor.segments:
        a, b = max(start, pos), min(stop, pos + part.numel)
        if a < b:
            if isinstance(part, Segment):
                piece = source.read(part.key, part.start + a - pos, part.start + b - pos)
                pieces.append(piece if dtype is None else cast(piece, part.dtype, dtype))
            elif isinstance(part, Computed):
                piece = part.values(source)[a - pos: b - pos]
                pieces.append(piece if dtype is None else cast(piece, part.dtype, dtype))
            else:                      # whole rows of the block around [a, b), then trimmed
                first, last = (a - pos) // part.row, -(-(b - pos) // part.row)
                block = column_block(part.inner, part.start + first, part.start + last, source, dtype)
                flat = np.ascontiguousarray(block.T).reshape(-1)           # (R, n) -> (n, R) -> flat
                pieces.append(flat[a - pos - first * part.row: b - pos - first * part.row])
        pos += part.numel
    return np.concatenate(pieces) if len(pieces) != 1 else pieces[0]


def column_block(inner: Virtual, start: int, stop: int, source, dtype: str | None,
                 chunk_bytes: int = 32 * 2**20) -> np.ndarray:
    """Columns [start, stop) of the 2-D `inner` (R, C) as an (R, stop-start) array, read in row chunks of
    about `chunk_bytes` (whole rows are read: safetensors stores rows contiguously)."""
    rows, cols = inner.shape
    step = max(1, chunk_bytes // max(1, cols * _itemsize(inner.dtype)))
    out = None
    for r in range(0, rows, step):
        r_end = min(rows, r + step)
        flat = read_elements(inner, source, r * cols, r_end * cols, dtype)
        if out is None:
            out = np.empty((rows, stop - start), dtype=flat.dtype)
        out[r:r_end] = flat.reshape(r_end - r, cols)[:, start:stop]           # (rows chunk, C) -> columns
    return out


def _itemsize(dtype: str) -> int:
    return BY_NAME[dtype].itemsize if dtype in BY_NAME else 8


def materialize(tensor: Virtual, source, dtype: str | None = None) -> np.ndarray:
    """The whole tensor in memory, shaped (small models and tests)."""
    if tensor.numel == 0:
        return np.empty(tensor.shape, dtype=BY_NAME[dtype or tensor.dtype].storage)
    return read_elements(tensor, source, 0, tensor.numel, dtype).reshape(tensor.shape)
