"""In-memory tensor sources: numpy state dicts (hf_to_ms / ms_to_hf, tests) and the small constant tensors
ms2hf re-creates (buffers the HF source carried), served through the same `Source` interface as files."""
from __future__ import annotations

import numpy as np

from ..io.sources import Source
from ..io.tensorfile import TensorInfo


class ArraySource(Source):
    """{key: array} as a Source: `read` returns flat element ranges in the array's own dtype."""

    def __init__(self, arrays, description: str = "<in-memory state dict>", dtypes=None):
        """`dtypes` names the dtype of arrays that hold raw bits (bfloat16 as uint16)."""
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        dtypes = dtypes or {}
        infos = {k: TensorInfo(k, dtypes.get(k, a.dtype.name), tuple(a.shape), description)
                 for k, a in self.arrays.items()}
        super().__init__(infos, description, "memory")

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        return self.arrays[key].reshape(-1)[start:stop]

    def byte_ranges(self, key: str, start: int, stop: int):
        return None


class WithConstants(Source):
    """A file source plus in-memory constants under their own keys (never shadowing a file tensor)."""

    def __init__(self, base: Source, constants: ArraySource):
        twice = set(base.infos) & set(constants.infos)
        if twice:
            raise ValueError(f"internal error: constant keys {sorted(twice)} shadow source tensors")
        super().__init__({**base.infos, **constants.infos}, base.description, base.kind)
        self.base, self.constants = base, constants

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        owner = self.constants if key in self.constants.infos else self.base
        return owner.read(key, start, stop)

    def byte_ranges(self, key: str, start: int, stop: int):
        return None if key in self.constants.infos else self.base.byte_ranges(key, start, stop)

    def close(self):
        self.base.close()
