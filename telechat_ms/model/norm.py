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
    The plain path (CPU) runs on the (tokens, H) rows: RMSNormRows.
    """

    def __init__(self, hidden_size: int, eps: float, param_dtype=ms.float32, kernels: Kernels = Kernels()):
        super().__init__()
        self.weight = Parameter(initializer(One(), (hidden_size,), param_dtype), name="weight")
        self.eps = eps
        self.fused = kernels.fused_rms_norm
        self.cast = ops.Cast()
        self.reshape = ops.Reshape()
        if self.fused:
            self.rms_norm = ops.RmsNorm(epsilon=eps)
        else:
            self.rows = RMSNormRows(eps)

    def construct(self, x):
        weight = self.cast(self.weight, x.dtype)
        if self.fused:
            return self.rms_norm(x, weight)[0]
        rows = self.reshape(x, (-1, x.shape[-1]))                                      # (N, H)
        return self.reshape(self.rows(rows, weight), x.shape)                         # (..., H)

    def shard(self, parallel) -> None:
        """Tokens split (dp, sp): with sequence parallel the norm runs on a slice of the sequence."""
        from ..parallel.strategies import shard_cell   # pylint: disable=import-outside-toplevel
        shard_cell(self, parallel)


class RMSNormRows(nn.Cell):
    """The plain-ops RMSNorm on (N, H) rows with its gradient written out (no parameters: the weight is an input).

    Why not MindSpore's automatic gradient: on the CPU its reductions are 2-D-fast only (ReduceMean of
    (512, 512) takes 0.03 ms, of (1, 512, 512) 1 ms) and the gradient of the Tile that expands rsqrt and the
    weight to (N, H) (needed: MindSpore's CPU kernels keep index tables for broadcasting ops) is a ReduceSum over
    a 4-D interleaved view, 1-7.5 ms each (docs/performance.md). Here every reduction is on a 2-D tensor, and
    the backward recomputes rsqrt instead of keeping (N, H) fp32 copies. Same formulas:
        n = x32 * r, r = rsqrt(mean(x32^2) + eps);  y = cast(n, dtype) * w
        dw = sum_rows(dy * cast(n, dtype));  g = cast(dy * w, fp32);  dx = cast(r * (g - n * mean(g * n)), dtype)
    """

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps
        self.cast = ops.Cast()
        self.reshape = ops.Reshape()
        self.square = ops.Mul()           # x * x: the same value as Square, 3x faster on the CPU
        self.mean = ops.ReduceMean(keep_dims=True)
        self.add = ops.Add()
        self.rsqrt = ops.Rsqrt()
        self.tile_rsqrt = ops.Tile()
        self.mul = ops.Mul()
        self.tile_weight = ops.Tile()
        self.mul_weight = ops.Mul()
        # backward only
        self.mul_dw = ops.Mul()
        self.sum_dw = ops.ReduceSum()
        self.mul_g = ops.Mul()
        self.mul_gn = ops.Mul()
        self.mean_gn = ops.ReduceMean(keep_dims=True)
        self.tile_gn = ops.Tile()
        self.mul_n = ops.Mul()
        self.sub = ops.Sub()
        self.mul_dx = ops.Mul()

    def _scaled(self, x32):
        """(x32 * r, r) with r = rsqrt(mean(x32^2) + eps) tiled to (N, H)."""
        variance = self.mean(self.square(x32, x32), -1)                               # (N, 1)
        inv = self.tile_rsqrt(self.rsqrt(self.add(variance, self.eps)), (1, x32.shape[-1]))   # (N, H)
        return self.mul(x32, inv), inv

    def _weight(self, weight, rows: int):
        return self.tile_weight(self.reshape(weight, (1, weight.shape[0])), (rows, 1))  # (N, H)

    def construct(self, x, weight):
        normed, _ = self._scaled(self.cast(x, ms.float32))
        return self.mul_weight(self.cast(normed, x.dtype), self._weight(weight, x.shape[0]))

    def bprop(self, x, weight, out, dout):
        normed, inv = self._scaled(self.cast(x, ms.float32))                          # recomputed, (N, H) fp32
        dweight = self.sum_dw(self.mul_dw(dout, self.cast(normed, x.dtype)), 0)        # (H,)
        g = self.cast(self.mul_g(dout, self._weight(weight, x.shape[0])), ms.float32)  # (N, H)
        dot = self.tile_gn(self.mean_gn(self.mul_gn(g, normed), -1), (1, x.shape[-1]))  # (N, H)
        dx = self.mul_dx(inv, self.sub(g, self.mul_n(normed, dot)))
        return self.cast(dx, x.dtype), dweight
