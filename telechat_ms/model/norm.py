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
        if self.fused:
            self.rms_norm = ops.RmsNorm(epsilon=eps)

    def construct(self, x):
        dtype = x.dtype
        if self.fused:
            return self.rms_norm(x, self.cast(self.weight, dtype))[0]
        x32 = self.cast(x, ms.float32)
        variance = self.mean(self.square(x32), -1)
        normed = self.cast(self.mul(x32, self.rsqrt(self.add(variance, self.eps))), dtype)
        return self.mul_weight(normed, self.cast(self.weight, dtype))

    def shard(self, parallel) -> None:
        """Tokens split (dp, sp): with sequence parallel the norm runs on a slice of the sequence."""
        from ..parallel.strategies import shard_cell   # pylint: disable=import-outside-toplevel
        shard_cell(self, parallel)
