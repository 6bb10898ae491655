"""A lazy tensor: a shape plus ordered element ranges of source tensors whose concatenation (C order) is it.

Every layout change the converters need for plain (row-major, untransposed) layouts is expressible this way
without reading data: expert stacking (concat), unstacking (row slice), reshapes, and de-fusing fused
projections (row slices). Writers stream a Virtual chunk by chunk from its Source.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .tensorfile import TensorInfo


@dataclass(frozen=True)
class Segment:
    key: str
    dtype: str
    start: int          # element range of the flattened source tensor
    stop: int


@dataclass(frozen=True)
class Virtual:
    shape: tuple[int, ...]
    segments: tuple[Segment, ...]

    @classmethod
    def whole(cls, info: TensorInfo, shape=None) -> "Virtual":
        return cls(tuple(shape or info.shape), (Segment(info.key, info.dtype, 0, info.numel),))

    @classmethod
    def concat(cls, parts: list["Virtual"], shape) -> "Virtual":
        return cls(tuple(shape), tuple(s for p in parts for s in p.segments))

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def rows(self, start: int, stop: int, shape=None) -> "Virtual":
        """Rows [start, stop) of axis 0, as `shape` (default: the sliced shape)."""
        row = math.prod(self.shape[1:])
        lo, hi = start * row, stop * row                   # element range inside this tensor
        picked, pos = [], 0
        for seg in self.segments:
            size = seg.stop - seg.start
            a, b = max(lo, pos), min(hi, pos + size)
            if a < b:
                picked.append(Segment(seg.key, seg.dtype, seg.start + a - pos, seg.start + b - pos))
            pos += size
        return Virtual(tuple(shape or (stop - start,) + self.shape[1:]), tuple(picked))
