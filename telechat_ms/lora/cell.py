"""The LoRA wrapper Cell: y = base(x) + scaling * B(A(dropout(x))), around any linear Cell by composition.

The base cell (model/linear.Linear, or a weight-only-quantized cell of telechat_ms/quant) is kept whole and
frozen, so the decoder code does not change and the base computes exactly what it computed before; only A
(r, in) and B (out, r) -- torch/PEFT orientation -- are trainable, kept in float32 (master weights) and cast to
the compute dtype like the base weights. B starts at zero: a fresh adapter leaves every output unchanged.
Dropout touches the adapter input only (PEFT's lora_dropout); it is active in training mode only.
"""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import HeUniform, Normal, Zero, initializer


def features(base) -> tuple[int, int]:
    """(in, out) of a linear cell: Linear / QuantLinear carry them; the split-kv quantized cell (k and v
    projections whose outputs are interleaved per head) has them on its halves."""
    if hasattr(base, "in_features"):
        return base.in_features, base.out_features
    k = getattr(base, "k", None)
    if k is not None and hasattr(k, "in_features"):
        return k.in_features, 2 * k.out_features
    raise TypeError(f"{type(base).__name__} is not a linear cell (no in_features / out_features)")


def compute_dtype_of(base):
    if hasattr(base, "compute_dtype"):
        return base.compute_dtype
    return base.k.compute_dtype


class LoraLinear(nn.Cell):
    """`base` plus a rank-`rank` adapter. The wrapper keeps the base's parameter names (set by
    telechat_ms.lora.inject); its own are `<module>.lora_a` (r, in) and `<module>.lora_b` (out, r)."""

    def __init__(self, base, rank: int, scaling: float, dropout: float = 0.0, init_a: str = "kaiming_uniform"):
        super().__init__()
        self.base_layer = base
        self.in_features, self.out_features = features(base)
        self.rank, self.scaling = rank, float(scaling)
        self.blocks = None            # see inject.Adapter.blocks (set when loaded from independent LoRAs)
        self.compute_dtype = compute_dtype_of(base)
        # PEFT's default init of A is kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)) (HeUniform with that
        # slope); MindFormers' lora_a_init 'normal' is N(0, 0.01)
        init = HeUniform(negative_slope=math.sqrt(5)) if init_a == "kaiming_uniform" else Normal(0.01)
        self.lora_a = Parameter(initializer(init, (rank, self.in_features), ms.float32), name="lora_a")
        self.lora_b = Parameter(initializer(Zero(), (self.out_features, rank), ms.float32), name="lora_b")
        self.dropout = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.cast = ops.Cast()
        self.reshape = ops.Reshape()
        self.matmul_a = ops.MatMul(transpose_b=True)
        self.matmul_b = ops.MatMul(transpose_b=True)
        self.add = ops.Add()

    @property
    def weight(self):
        """The base weight (callers name caches after it, e.g. Attention.enable_kv_cache)."""
        return self.base_layer.weight

    def construct(self, x):
        y = self.base_layer(x)                                                           # (..., out)
        h = self.reshape(self.cast(self.dropout(x), self.compute_dtype), (-1, self.in_features))  # (N, in)
        h = self.matmul_a(h, self.cast(self.lora_a, self.compute_dtype))                 # (N, r)
        h = self.matmul_b(h, self.cast(self.lora_b, self.compute_dtype)) * self.scaling  # (N, out)
        return self.add(y, self.reshape(self.cast(h, y.dtype), y.shape))                 # (..., out)

    def shard(self, parallel, role: str = "replicated") -> None:
        """The base keeps its layout; the adapter matmuls are small and run replicated."""
        self.base_layer.shard(parallel, role)
