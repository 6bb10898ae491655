"""Linear layer with torch's (out, in) weight layout, so checkpoints map without transposes."""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, Zero, initializer


class Linear(nn.Cell):
    """y = x @ weight.T (+ bias), weight (out, in); computed in `compute_dtype`, params kept in `param_dtype`."""

    def __init__(self, in_features: int, out_features: int, has_bias: bool, compute_dtype=ms.float32,
                 param_dtype=ms.float32, init_std: float = 0.02):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # initializer() defers allocation only inside mindspore.nn.utils.no_init_parameters() (used by the
        # static validator for real sizes); otherwise the weights are drawn here
        self.weight = Parameter(initializer(Normal(init_std), (out_features, in_features), param_dtype),
                                name="weight")
        self.has_bias = has_bias
        if has_bias:
            self.bias = Parameter(initializer(Zero(), (out_features,), param_dtype), name="bias")
            # BiasAdd (channel = the last axis of the (N, out) rows): the same sum as Add, without the index
            # tables MindSpore's CPU kernels build for a broadcasting Add
            self.bias_add = ops.BiasAdd()
        self.compute_dtype = compute_dtype
        self.cast = ops.Cast()
        self.reshape = ops.Reshape()
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        out_shape = x.shape[:-1] + (self.out_features,)
        x = self.reshape(self.cast(x, self.compute_dtype), (-1, self.in_features))      # (N, in)
        y = self.matmul(x, self.cast(self.weight, self.compute_dtype))                 # (N, out)
        if self.has_bias:
            y = self.bias_add(y, self.cast(self.bias, self.compute_dtype))
        return self.reshape(y, out_shape)                                               # (..., out)

    def shard(self, parallel, role: str = "replicated") -> None:
        """Layout by role: "column" (out split by mp), "row" (in split by mp, reduced before the bias),
        "head" (vocab split unless vocab_emb_dp), "replicated"; see telechat_ms/parallel/strategies.py."""
        from ..parallel.strategies import shard_cell   # pylint: disable=import-outside-toplevel
        self.parallel_role = role      # kept so the static validator can re-derive this cell's plan
        shard_cell(self, parallel)
