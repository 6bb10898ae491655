"""Self-attention with TeleChat2's fused, per-head interleaved key_value projection (spec §2.4)."""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.ops.operations.nn_ops import FlashAttentionScore

from .dtypes import to_ms_dtype
from .kernels import Kernels
from .kv_cache import KVCache
from .linear import Linear
from .rotary import RotaryEmbedding


class ScoresSoftmax(nn.Cell):
    """Softmax over the last axis of the scores with its gradient written out: dx = y * (dy - sum(y * dy)),
    MindSpore's own formula, but with the row sum tiled to the scores' shape before the subtraction --
    MindSpore's CPU Sub keeps 16 bytes of broadcast index tables per element of the (B, N, S, S) scores for the
    lifetime of the graph, one table per layer -- and taken over a 2-D (rows, S) view: MindSpore's CPU
    ReduceSum has a fast path for 2-D inputs only (0.32 ms for 8 x 512 x 512 fp32 against 7.5 ms on the 4-D
    tensor, docs/performance.md). `softmax` is the parent's primitive (it carries the plan and the
    select-recompute flag)."""

    def __init__(self, softmax):
        super().__init__()
        self.softmax = softmax
        self.mul_out = ops.Mul()
        self.reshape = ops.Reshape()
        self.sum_rows = ops.ReduceSum(keep_dims=True)
        self.tile_rows = ops.Tile()
        self.sub = ops.Sub()
        self.mul_dx = ops.Mul()

    def construct(self, x):
        return self.softmax(x)

    def bprop(self, x, out, dout):
        cols = x.shape[-1]
        rows = self.reshape(self.mul_out(out, dout), (-1, cols))                     # (B*N*Sq, Sk)
        rows = self.reshape(self.sum_rows(rows, -1), x.shape[:-1] + (1,))            # (..., 1)
        return (self.mul_dx(out, self.sub(dout, self.tile_rows(rows, (1,) * (x.ndim - 1) + (cols,)))),)


class CoreAttention(nn.Cell):
    """softmax(Q K^T / sqrt(d), masked) V on (B, N, S, D) tensors; mask (B, 1, S_q, S_k) bool, True = masked.

    Plain path: scores scaled in fp32 and rounded back to the compute dtype (HF multiplies the fp16 einsum
    result by a Python float; in fp32 these casts are no-ops that MindSpore removes), masked positions filled
    with the fp32 minimum (MaskedFill on the mask tiled over the heads: same shape as the scores, no fill
    tensor), softmax in fp32, probabilities cast back. Ascend: FlashAttentionScore.
    """

    def __init__(self, num_heads: int, head_dim: int, attention_dropout: float, kernels: Kernels):
        super().__init__()
        self.scale = 1.0 / math.sqrt(head_dim)
        self.flash = kernels.flash_attention
        self.cast = ops.Cast()
        self.qk = ops.BatchMatMul(transpose_b=True)
        self.pv = ops.BatchMatMul()
        self.mul_scale = ops.Mul()
        self.tile_mask = ops.Tile()
        self.fill = ops.MaskedFill()
        self.fill_value = Tensor(-3.4028234663852886e38, ms.float32)
        self.softmax = ops.Softmax(axis=-1)
        self.dropout = nn.Dropout(p=attention_dropout) if attention_dropout > 0 else nn.Identity()
        if not self.flash:
            self.scores_softmax = ScoresSoftmax(self.softmax)
        else:
            if attention_dropout > 0:   # would need a generated drop mask; every TeleChat2 config uses 0.0
                raise ValueError(f"attention_dropout ({attention_dropout}) > 0 is not supported with flash attention")
            self.flash_attention = FlashAttentionScore(head_num=num_heads, scale_value=self.scale,
                                                       input_layout="BNSD", sparse_mode=0)

    def construct(self, q, k, v, mask):
        dtype = q.dtype
        if self.flash:
            return self.flash_attention(q, k, v, None, None, None, self.cast(mask, ms.uint8))[3]
        scores = self.cast(self.qk(q, k), ms.float32)                                # (B, N, Sq, Sk)
        scores = self.cast(self.cast(self.mul_scale(scores, self.scale), dtype), ms.float32)
        mask = self.tile_mask(mask, (1, scores.shape[1], 1, 1))                      # (B, N, Sq, Sk)
        scores = self.fill(scores, mask, self.fill_value)
        probs = self.dropout(self.cast(self.scores_softmax(scores), dtype))
        return self.pv(probs, v)                                                     # (B, N, Sq, D)

    def shard(self, parallel) -> None:
        """Batch by dp, heads by mp; flash attention takes the same layout plus the mask by dp."""
        from ..parallel.strategies import shard_cell   # pylint: disable=import-outside-toplevel
        shard_cell(self, parallel)


class Attention(nn.Cell):
    """query (no bias), fused key_value (no bias, rows [K_0; V_0; K_1; V_1; ...]), dense (bias unless
    config.attention_out_bias is off). Families with split q/k/v weights are converted into this layout."""

    def __init__(self, config, kernels: Kernels = Kernels()):
        super().__init__()
        compute, param = to_ms_dtype(config.compute_dtype), to_ms_dtype(config.param_dtype)
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.n_rep = config.num_heads // config.num_kv_heads
        hidden, std = config.hidden_size, config.initializer_range
        self.wq = Linear(hidden, self.num_heads * self.head_dim, False, compute, param, std)
        self.wk_v = Linear(hidden, 2 * self.num_kv_heads * self.head_dim, False, compute, param, std)
        self.wo = Linear(self.num_heads * self.head_dim, hidden, config.attention_out_bias, compute, param, std)
        self.rotary = RotaryEmbedding.from_config(config, kernels)
        self.core = CoreAttention(config.num_heads, config.head_dim, config.attention_dropout, kernels)
        self.reshape = ops.Reshape()
        self.transpose = ops.Transpose()
        self.transpose_back = ops.Transpose()      # context (B, N, S, D) -> (B, S, N, D), sharded by heads
        self.split_kv = ops.Split(axis=-1, output_num=2)   # per-head [K_h | V_h] -> K, V
        self.tile_kv = ops.Tile()                  # GQA: each kv head repeated for its n_rep query heads
        self.kv_cache = None                       # set by enable_kv_cache() for incremental decoding
        self.cache_shape = (config.num_kv_heads, config.head_dim, compute)

    def enable_kv_cache(self, batch: int, max_len: int) -> None:
        """Attach a (batch, n_kv, max_len, head_dim) cache; reused when the shape is unchanged."""
        heads, dim, dtype = self.cache_shape
        if self.kv_cache is None or self.kv_cache.key_cache.shape != (batch, heads, max_len, dim):
            self.kv_cache = KVCache(batch, heads, max_len, dim, dtype)
            # attached after the model was built: name the buffers after this layer (unique per model)
            prefix = self.wq.weight.name[: -len("wq.weight")] + "kv_cache."           # model.layers.{i}.attention.
            self.kv_cache.key_cache.name = prefix + "key_cache"
            self.kv_cache.value_cache.name = prefix + "value_cache"

    def construct(self, x, rope, mask, placement=None):
        """x (B, S, H); rope = (cos_q, sin_q, cos_k, sin_k), each (S, D) or per token (B, 1, S, D);
        mask (B, 1, S, S_k) True = masked; placement: the KV cache write indices (B, Nkv, S, 3), or a serving slot
        cache's one-hot (B, S, max_len), only for cached decoding."""
        cos_q, sin_q, cos_k, sin_k = rope
        bsz, seq, _ = x.shape
        q = self.reshape(self.wq(x), (bsz, seq, self.num_heads, self.head_dim))
        q = self.transpose(q, (0, 2, 1, 3))                                          # (B, N, S, D)
        kv = self.reshape(self.wk_v(x), (bsz, seq, self.num_kv_heads, 2 * self.head_dim))  # per-head [K_h|V_h]
        k, v = self.split_kv(kv)                                                     # (B, S, Nkv, D) each
        k = self.transpose(k, (0, 2, 1, 3))                                          # (B, Nkv, S, D)
        v = self.transpose(v, (0, 2, 1, 3))                                          # (B, Nkv, S, D)
        q = self.rotary(q, cos_q, sin_q)
        if placement is not None:
            # incremental decoding: every cache slot (still before rotary), rotated below with the tables
            # of the current total length, so NTK changes apply to old keys as in the HF full forward
            k, v = self.kv_cache(k, v, placement)                                     # (B, Nkv, M, D)
        k = self.rotary(k, cos_k, sin_k)
        if self.n_rep > 1:
            # query head h reads kv head h // n_rep (HF repeat_kv grouping)
            k, v = self._repeat_kv(k), self._repeat_kv(v)                             # (B, N, S_k, D)
        context = self.transpose_back(self.core(q, k, v, mask), (0, 2, 1, 3))       # (B, S, N, D)
        context = self.reshape(context, (bsz, seq, self.num_heads * self.head_dim))  # (B, S, H)
        return self.wo(context)

    def _repeat_kv(self, x):
        """(B, Nkv, S, D) -> (B, N, S, D), kv head j copied to query heads j*n_rep .. j*n_rep + n_rep - 1."""
        bsz, heads, seq, dim = x.shape
        x = self.tile_kv(self.reshape(x, (bsz, heads, 1, seq, dim)), (1, 1, self.n_rep, 1, 1))  # (B, Nkv, r, S, D)
        return self.reshape(x, (bsz, heads * self.n_rep, seq, dim))

    def shard(self, parallel) -> None:
        """query / key_value column-parallel over whole heads (the per-head interleaved key_value rows split
        into whole (K_h, V_h) pairs when n_kv % mp == 0), dense row-parallel."""
        from ..parallel.strategies import shard_cell   # pylint: disable=import-outside-toplevel
        shard_cell(self, parallel)
        self.wq.shard(parallel, "column")
        self.wk_v.shard(parallel, "column")
        self.wo.shard(parallel, "row")
        self.rotary.shard(parallel)
        self.core.shard(parallel)
