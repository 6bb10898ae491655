"""What every decoder layer reads besides the hidden states, built once per forward by TelechatModel: the rotary
tables and the boolean attention mask. They are Cells so that each op carries a planned shard strategy
(telechat_ms/parallel/strategies.py); the constant parts are host tables (graph constants in GRAPH_MODE)."""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from .dtypes import to_ms_dtype
from .kernels import Kernels
from .rotary import RopeSpec, expand_tables, rotary_tables


class RopeTables(nn.Cell):
    """(cos_q, sin_q, cos_k, sin_k) for positions 0..S-1, or gathered per token with `position_ids` (packed rows).

    Fused rope (Ascend): (S, D) or (B, 1, S, D) tables, the kernel broadcasts them. Plain path: expanded here to
    the query (B, N, S, D) and key (B, N_kv, S, D) shapes with Tile, once for all layers, so every layer's
    products run on equal shapes (MindSpore's CPU kernels keep large index tables for broadcasting ops).
    """

    def __init__(self, config, kernels: Kernels = Kernels()):
        super().__init__()
        self.spec = RopeSpec.from_config(config)
        self.dtype = to_ms_dtype(config.compute_dtype)
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.expand = not kernels.fused_rope
        self.cast = ops.Cast()
        self.reshape = ops.Reshape()
        self.gather_cos = ops.Gather()
        self.gather_sin = ops.Gather()
        self.tile_cos_q, self.tile_sin_q = ops.Tile(), ops.Tile()
        self.tile_cos_k, self.tile_sin_k = ops.Tile(), ops.Tile()

    def tables(self, seq_len: int, ntk_len: int = 0):
        """Host cos, sin (S, D) for positions 0..S-1; NTK alpha/mscale from `ntk_len` (0: seq_len, the HF rule)."""
        cos, sin = rotary_tables(self.spec, ntk_len or seq_len, 0, seq_len)
        return self.cast(Tensor(cos), self.dtype), self.cast(Tensor(sin), self.dtype)

    def construct(self, bsz: int, seq: int, position_ids=None, ntk_len: int = 0):
        cos, sin = self.tables(seq, ntk_len)                                           # (S, D) each
        if position_ids is not None:
            cos = self.reshape(self.gather_cos(cos, position_ids, 0), (bsz, 1, seq, -1))    # (B, 1, S, D)
            sin = self.reshape(self.gather_sin(sin, position_ids, 0), (bsz, 1, seq, -1))
        if not self.expand:
            return cos, sin, cos, sin
        dim = self.spec.head_dim
        cos_q, sin_q = expand_tables(self.tile_cos_q, self.tile_sin_q, self.reshape, cos, sin,
                                     (bsz, self.num_heads, seq, dim))                  # (B, N, S, D)
        if self.num_kv_heads == self.num_heads:
            return cos_q, sin_q, cos_q, sin_q
        cos_k, sin_k = expand_tables(self.tile_cos_k, self.tile_sin_k, self.reshape, cos, sin,
                                     (bsz, self.num_kv_heads, seq, dim))               # (B, N_kv, S, D)
        return cos_q, sin_q, cos_k, sin_k

    def shard(self, parallel) -> None:
        from ..parallel.strategies import shard_cell   # pylint: disable=import-outside-toplevel
        shard_cell(self, parallel)


class AttentionMask(nn.Cell):
    """Boolean (B, 1, S, S) mask, True = masked: key after query, key is padding (`attention_mask` (B, S) == 0,
    HF semantics), or key and query in different packed documents (`document_ids` (B, S)).

    The causal triangle is a host constant; with `native_broadcast` off (CPU) the (B, 1, 1, S) / (B, 1, S, 1)
    operands are tiled to (B, 1, S, S) first, so the logical ops run on equal shapes.
    """

    def __init__(self, kernels: Kernels = Kernels()):
        super().__init__()
        self.native_broadcast = kernels.native_broadcast
        self.cast = ops.Cast()
        self.reshape = ops.Reshape()
        self.tile_causal = ops.Tile()
        self.is_pad = ops.LogicalNot()
        self.tile_pad = ops.Tile()
        self.or_pad = ops.LogicalOr()
        self.tile_doc_q, self.tile_doc_k = ops.Tile(), ops.Tile()
        self.other_doc = ops.NotEqual()
        self.or_doc = ops.LogicalOr()

    def construct(self, bsz: int, seq: int, attention_mask=None, document_ids=None):
        causal = Tensor(np.triu(np.ones((1, 1, seq, seq), dtype=np.bool_), k=1))      # (1, 1, S, S) constant
        mask = self.tile_causal(causal, (bsz, 1, 1, 1))                                 # (B, 1, S, S)
        if attention_mask is not None:
            pad = self.is_pad(self.cast(attention_mask, ms.bool_))                      # (B, S)
            pad = self.reshape(pad, (bsz, 1, 1, seq))                                   # (B, 1, 1, S)
            if not self.native_broadcast:
                pad = self.tile_pad(pad, (1, 1, seq, 1))                                # (B, 1, S, S)
            mask = self.or_pad(mask, pad)
        if document_ids is not None:
            query = self.reshape(document_ids, (bsz, 1, seq, 1))                        # (B, 1, S, 1)
            key = self.reshape(document_ids, (bsz, 1, 1, seq))                          # (B, 1, 1, S)
            if not self.native_broadcast:
                query, key = self.tile_doc_q(query, (1, 1, 1, seq)), self.tile_doc_k(key, (1, 1, seq, 1))
            mask = self.or_doc(mask, self.other_doc(query, key))                        # (B, 1, S, S)
        return mask

    def shard(self, parallel) -> None:
        from ..parallel.strategies import shard_cell   # pylint: disable=import-outside-toplevel
        shard_cell(self, parallel)
