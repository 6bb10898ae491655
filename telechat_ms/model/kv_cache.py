"""Static-shape key/value cache of one attention layer (pre-allocated for `max_len` positions).

Keys are stored *before* rotary: the attention rotates all slots with the tables of the current total length,
so a cached step equals the full forward even when dynamic NTK changes alpha/mscale (telechat_ms/infer/engine.py).
New entries are written in place with ScatterNdUpdate at host-made indices (B, N_kv, S_new, 3) = (row, kv head,
slot): an exact copy, one op per buffer, the same graph for every decode step (static shapes). A matmul with a
one-hot placement did the same in ~12 ops per buffer; on the CPU each op costs ~13 us of dispatch besides its
kernel, a quarter of a decode step (docs/performance.md).
"""
from __future__ import annotations

import numpy as np
from mindspore import Parameter, Tensor, nn, ops


def write_indices(batch: int, num_kv_heads: int, slots: np.ndarray) -> np.ndarray:
    """int32 (B, N_kv, S_new, 3) indices of (row, kv head, slot) for new entries going to `slots` (S_new,) of
    every row (KVCache.construct)."""
    rows, heads, cols = np.meshgrid(np.arange(batch), np.arange(num_kv_heads), np.asarray(slots), indexing="ij")
    return np.stack([rows, heads, cols], axis=-1).astype(np.int32)                     # (B, N_kv, S_new, 3)


class KVCache(nn.Cell):
    def __init__(self, batch: int, num_kv_heads: int, max_len: int, head_dim: int, dtype):
        super().__init__()
        shape = (batch, num_kv_heads, max_len, head_dim)
        self.max_len = max_len
        self.key_cache = Parameter(Tensor(np.zeros(shape), dtype), name="key_cache",
                                   requires_grad=False)
        self.value_cache = Parameter(Tensor(np.zeros(shape), dtype), name="value_cache",
                                     requires_grad=False)
        self.scatter_key = ops.ScatterNdUpdate()
        self.scatter_value = ops.ScatterNdUpdate()

    def construct(self, k, v, indices):
        """k, v (B, Nkv, S_new, D) written at `indices` (B, Nkv, S_new, 3) (write_indices) -> all slots
        (B, Nkv, max_len, D), the buffers after the write."""
        return self.scatter_key(self.key_cache, indices, k), self.scatter_value(self.value_cache, indices, v)
