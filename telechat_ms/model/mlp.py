"""Dense SwiGLU MLP (spec §2.6). MoE blocks implement the same interface: x -> (y, aux_loss)."""
from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.ops.auto_generate import SiLU

from .dtypes import to_ms_dtype
from .linear import Linear


class MLP(nn.Cell):
    """w2(silu(w1 x) * w3 x) (+ b2) with w1 = gate_proj, w3 = up_proj, w2 = down_proj (bias on w2 only, when
    config.mlp_out_bias)."""

    def __init__(self, config):
        super().__init__()
        compute, param = to_ms_dtype(config.compute_dtype), to_ms_dtype(config.param_dtype)
        hidden, ffn, std = config.hidden_size, config.ffn_hidden_size, config.initializer_range
        self.w1 = Linear(hidden, ffn, False, compute, param, std)
        self.w3 = Linear(hidden, ffn, False, compute, param, std)
        self.w2 = Linear(ffn, hidden, config.mlp_out_bias, compute, param, std)
        self.silu = SiLU()        # the primitive nn.SiLU runs, held here so that it can carry a strategy
        self.mul = ops.Mul()
        self.zero = Tensor(0.0, ms.float32)

    def construct(self, x):
        """Returns (output, aux_loss); the aux loss is zero for the dense MLP."""
        return self.w2(self.mul(self.silu(self.w1(x)), self.w3(x))), self.zero

    def shard(self, parallel) -> None:
        """gate/up column-parallel, down row-parallel: one reduction per MLP, bias added after it."""
        from ..parallel.strategies import shard_cell   # pylint: disable=import-outside-toplevel
        shard_cell(self, parallel)
        self.w1.shard(parallel, "column")
        self.w3.shard(parallel, "column")
        self.w2.shard(parallel, "row")
