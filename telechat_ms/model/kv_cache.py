"""Static-shape key/value cache of one attention layer (pre-allocated for `max_len` positions).

Keys are stored *before* rotary: the attention rotates all slots with the tables of the current total length,
so a cached step equals the full forward even when dynamic NTK changes alpha/mscale (telechat_ms/infer/engine.py).
New entries are written with a one-hot placement matrix (S_new, max_len) from the host: an exact copy
(x*1 + 0s), no dynamic-shape scatter, the same graph for every decode step.
"""
from __future__ import annotations

import numpy as np
from mindspore import Parameter, Tensor, nn, ops


class KVCache(nn.Cell):
    def __init__(self, batch: int, num_kv_heads: int, max_len: int, head_dim: int, dtype):
        super().__init__()
        shape = (batch, num_kv_heads, max_len, head_dim)
        self.max_len = max_len
        self.key_cache = Parameter(Tensor(np.zeros(shape), dtype), name="key_cache",
                                   requires_grad=False)
        self.value_cache = Parameter(Tensor(np.zeros(shape), dtype), name="value_cache",
                                     requires_grad=False)
        self.matmul = ops.MatMul()
        self.transpose = ops.Transpose()
        self.reshape = ops.Reshape()
        self.assign = ops.Assign()

    def _write(self, cache, new, placement):
        bsz, heads, seq, dim = new.shape
        moved = self.reshape(self.transpose(new, (0, 1, 3, 2)), (bsz * heads * dim, seq))     # (B*Nkv*D, S)
        placed = self.reshape(self.matmul(moved, placement), (bsz, heads, dim, self.max_len))  # (B, Nkv, D, M)
        placed = self.transpose(placed, (0, 1, 3, 2))                                          # (B, Nkv, M, D)
        keep = 1.0 - placement.sum(axis=0).reshape(1, 1, self.max_len, 1)                      # (1, 1, M, 1)
        full = cache * keep.astype(cache.dtype) + placed
        self.assign(cache, full)
        return full

    def construct(self, k, v, placement):
        """k, v (B, Nkv, S_new, D) written at the placement's slots -> all slots (B, Nkv, max_len, D)."""
        return self._write(self.key_cache, k, placement), self._write(self.value_cache, v, placement)
