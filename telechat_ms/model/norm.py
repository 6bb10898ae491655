"""RMSNorm with the HF TeleChat2 rounding order (spec §2.3)."""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import One, initializer

from .kernels import Kernels


class RMSNorm(nn.Cell):
    """y = cast(x_fp32 * rsqrt(mean(x_fp32^2) + eps), x.dtype) * weight.

    HF casts back to the input dtype *before* multiplying by the weight; we keep that order so fp16
    results match bit for bit. The Ascend fused kernel multiplies in fp32 (identical in fp32).
    The plain path (CPU) expands rsqrt (..., 1) and the weight (H,) to x's shape with Tile before the
    multiplications (same products; MindSpore's CPU kernels hold large index tables for broadcasting ops).
    """

    def __init__(self, hidden_size: int, eps: float, param_dtype=ms.float32, kernels: Kernels = Kernels()):
        super().__init__()
        self.weight = Parameter(initializer(One(), (hidden_size,), param_dtype), name="weight")
        self.eps = eps
        self.fused = kernels.fused_rms_norm
        self.cast = ops.Cast()
        self.square = ops.Square()
        self.mean = ops.ReduceMean(keep_dims=True)
        self.add = ops.Add()
        self.rsqrt = ops.Rsqrt()
        self.mul = ops.Mul()
        self.mul_weight = ops.Mul()
        self.tile_rsqrt = ops.Tile()
        self.tile_weight = ops.Tile()
        self.reshape = ops.Reshape()
        if self.fused:
            self.rms_norm = ops.RmsNorm(epsilon=eps)

    def construct(self, x):
        dtype = x.dtype
        if self.fused:
            return self.rms_norm(x, self.cast(self.weight, dtype))[0]
        x32 = self.cast(x, ms.float32)
        variance = self.mean(self.square(x32), -1)                                    # (..., 1)
        inv = self.tile_rsqrt(self.rsqrt(self.add(variance, self.eps)), (1,) * (x.ndim - 1) + (x.shape[-1],))
        normed = self.cast(self.mul(x32, inv), dtype)
        weight = self.reshape(self.cast(self.weight, dtype), (1,) * (x.ndim - 1) + (x.shape[-1],))  # (1.., H)
        return self.mul_weight(normed, self.tile_weight(weight, x.shape[:-1] + (1,)))

    def shard(self, parallel) -> None:
        """Tokens split (dp, sp): with sequence parallel the norm runs on a slice of the sequence."""
        from ..parallel.strategies import shard_cell   # pylint: disable=import-outside-toplevel
        shard_cell(self, parallel)
