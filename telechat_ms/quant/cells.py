"""The weight-only-quantized linear layer and its swap into a model (docs/quantization.md).

`QuantLinear` computes what `Linear` computes, y = x W^T (+ b), from our quantized layout (quant/packing.py):
int8 weights (K, N) or two int4 per byte (K, N/2), per-group `scale` / `offset` (G, N) and, with act order,
the input permutation `perm` (K,) applied to x once per call (a gather) so that groups are contiguous rows.
  plain path (CPU, and wherever Kernels.weight_quant_matmul is off): unpack the nibbles, W_t = (q + offset) *
             scale of each row's group in fp32, rounded once to the compute dtype, then MatMul -- exactly the
             float weights `hf2ms --dequantize` writes;
  Ascend:    WeightQuantBatchMatmul(x, weight, scale, offset, group size) -- the same antiquant formula in the
             kernel (int4 weights as MindSpore qint4x2). Selected by Kernels.for_device; not run on CPU.
`quantize_linears` replaces the decoder's Linear cells by QuantLinear cells after the model is built, so the
decoder, attention and MLP code is the float model's. Split k/v checkpoints (Llama layouts) keep two
quantized projections whose outputs are interleaved per kv head, the fused key_value layout the attention reads.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Zero, initializer
from mindspore.ops.auto_generate import WeightQuantBatchMatmul

from ..config.base import ConfigError
from ..model.causal_lm import TelechatForCausalLM
from ..model.dtypes import to_ms_dtype
from ..model.kernels import Kernels
from ..model.linear import Linear
from .spec import QuantizationConfig

COLUMN_LINEARS = ("attention.wq", "attention.wk_v", "feed_forward.w1", "feed_forward.w3")
ROW_LINEARS = ("attention.wo", "feed_forward.w2")


class QuantLinear(nn.Cell):
    """y = x @ W_t (+ bias) with W_t (in, out) = (qweight + offset) * scale per input group; x (..., in)."""

    def __init__(self, in_features: int, out_features: int, has_bias: bool, quant: QuantizationConfig,
                 compute_dtype=ms.float32, param_dtype=ms.float32, fused: bool = False):
        super().__init__()
        if quant.bits == 4 and out_features % 2:
            raise ConfigError(f"int4 weights pack two output features per byte: out_features {out_features} is odd")
        self.in_features, self.out_features, self.bits = in_features, out_features, quant.bits
        self.group_size, groups = quant.groups(in_features)
        weight_dtype = ms.qint4x2 if fused and quant.bits == 4 else ms.int8
        self.qweight = Parameter(initializer(Zero(), (in_features, quant.packed_columns(out_features)), weight_dtype),
                                 name="qweight", requires_grad=False)
        scale_dtype = to_ms_dtype(quant.scale_dtype)
        self.scale = Parameter(initializer("ones", (groups, out_features), scale_dtype), name="scale",
                               requires_grad=False)
        self.offset = Parameter(initializer(Zero(), (groups, out_features), scale_dtype), name="offset",
                                requires_grad=False)
        self.act_order = quant.act_order
        if self.act_order:
            self.perm = Parameter(Tensor(np.arange(in_features, dtype=np.int32)), name="perm", requires_grad=False)
        # group of each weight row (rows are sorted by group): a constant of the graph
        self.row_group = Tensor((np.arange(in_features) // self.group_size).astype(np.int32))
        self.has_bias = has_bias
        if has_bias:
            self.bias = Parameter(initializer(Zero(), (out_features,), param_dtype), name="bias")
            self.bias_add = ops.Add()
        self.compute_dtype = compute_dtype
        self.fused = fused
        if fused:
            self.weight_quant_matmul = WeightQuantBatchMatmul(False, False, self.group_size if groups > 1 else 0)
        # tensor-parallel row-parallel layers with act order gather every rank's input features here
        # (telechat_ms/infer/tp.py); identity on one device
        self.input_collective = nn.Identity()
        self.cast = ops.Cast()
        self.reshape = ops.Reshape()
        self.gather = ops.Gather()
        self.floor = ops.Floor()
        self.stack = ops.Stack(axis=-1)
        self.matmul = ops.MatMul()

    @property
    def weight(self):
        """Names the layer as Linear.weight does (Attention names its KV-cache buffers after wq.weight.name);
        the quantized values are `qweight`."""
        return SimpleNamespace(name=self.qweight.name[: -len("qweight")] + "weight")

    def dequantize(self):
        """W_t (in, out) in the compute dtype: (q + offset) * scale in fp32 (exact), rounded once."""
        w = self.cast(self.qweight, ms.float32)                                          # (K, N/2 | N)
        if self.bits == 4:
            # a byte is high * 16 + low with the signed high nibble and the low nibble read unsigned
            high = self.floor(w / 16.0)
            low = w - high * 16.0
            low = low - 16.0 * self.cast(low >= 8.0, ms.float32)                          # signed low nibble
            w = self.reshape(self.stack((low, high)), (self.in_features, self.out_features))  # (K, N/2, 2) -> (K, N)
        scale = self.gather(self.cast(self.scale, ms.float32), self.row_group, 0)        # (G, N) -> (K, N)
        offset = self.gather(self.cast(self.offset, ms.float32), self.row_group, 0)      # (G, N) -> (K, N)
        return self.cast((w + offset) * scale, self.compute_dtype)

    def construct(self, x):
        x = self.input_collective(x)
        out_shape = x.shape[:-1] + (self.out_features,)
        x = self.reshape(self.cast(x, self.compute_dtype), (-1, x.shape[-1]))          # (M, K)
        if self.act_order:
            x = self.gather(x, self.perm, 1)                                              # (M, K) in weight-row order
        if self.fused:
            y = self.weight_quant_matmul(x, self.qweight, self.cast(self.scale, self.compute_dtype),
                                         self.cast(self.offset, self.compute_dtype), None, None, None)
        else:
            y = self.matmul(x, self.dequantize())                                         # (M, N)
        if self.has_bias:
            y = self.bias_add(y, self.cast(self.bias, self.compute_dtype))
        return self.reshape(y, out_shape)                                                 # (..., N)

    def shard(self, parallel, role: str = "replicated") -> None:
        raise ConfigError("semi-auto-parallel layouts of quantized models are not supported: run quantized models "
                          "on one device or with tensor-parallel inference (--tp, telechat_ms/infer/tp.py)")


class QuantKVLinear(nn.Cell):
    """Separately quantized key and value projections (Llama k_proj / v_proj) producing the fused per-head
    interleaved key_value output [K_0 | V_0 | K_1 | V_1 | ...] that Attention reads from wk_v."""

    def __init__(self, hidden: int, num_kv_heads: int, head_dim: int, quant: QuantizationConfig,
                 compute_dtype=ms.float32, param_dtype=ms.float32, fused: bool = False):
        super().__init__()
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.k = QuantLinear(hidden, num_kv_heads * head_dim, False, quant, compute_dtype, param_dtype, fused)
        self.v = QuantLinear(hidden, num_kv_heads * head_dim, False, quant, compute_dtype, param_dtype, fused)
        self.reshape = ops.Reshape()
        self.concat = ops.Concat(axis=-1)

    def construct(self, x):
        lead = x.shape[:-1]
        k = self.reshape(self.k(x), (-1, self.num_kv_heads, self.head_dim))             # (M, n_kv, hd)
        v = self.reshape(self.v(x), (-1, self.num_kv_heads, self.head_dim))             # (M, n_kv, hd)
        kv = self.concat((k, v))                                                          # (M, n_kv, 2 hd)
        return self.reshape(kv, lead + (2 * self.num_kv_heads * self.head_dim,))         # (..., 2 n_kv hd)

    def shard(self, parallel, role: str = "replicated") -> None:
        self.k.shard(parallel, role)


def _replace(linear: Linear, quant: QuantizationConfig, fused: bool) -> QuantLinear:
    return QuantLinear(linear.in_features, linear.out_features, linear.has_bias, quant, linear.compute_dtype,
                       linear.weight.dtype, fused)


def quantize_linears(net, quant: QuantizationConfig, kernels: Kernels | None = None):
    """Swap every decoder layer's query, key/value, output, gate, up and down Linear for its quantized cell
    (same features, bias and dtypes); parameters keep their hierarchical names. Idempotent."""
    fused = (kernels or Kernels.plain()).weight_quant_matmul
    for layer in net.model.layers:
        attention, mlp = layer.attention, layer.feed_forward
        if not all(isinstance(getattr(mlp, name, None), (Linear, QuantLinear)) for name in ("w1", "w2", "w3")):
            raise ConfigError("quantized layers need the dense MLP (w1 / w2 / w3); MoE is not supported")
        for cell, name in ((attention, "wq"), (attention, "wo"), (mlp, "w1"), (mlp, "w2"), (mlp, "w3")):
            if isinstance(getattr(cell, name), Linear):
                setattr(cell, name, _replace(getattr(cell, name), quant, fused))
        if isinstance(attention.wk_v, Linear):
            kv = attention.wk_v
            attention.wk_v = QuantKVLinear(kv.in_features, attention.num_kv_heads, attention.head_dim, quant,
                                           kv.compute_dtype, kv.weight.dtype, fused) if quant.split_kv else \
                _replace(kv, quant, fused)
    for name, param in net.parameters_and_names():      # cells attached after construction: name by the tree
        if param.name != name:
            param.name = name
    return net


def quantized_cells(net, role: str):
    """(module name, QuantLinear) of the column- or row-parallel decoder projections (tensor parallelism)."""
    wanted = COLUMN_LINEARS if role == "column" else ROW_LINEARS
    for name, cell in net.cells_and_names():
        if isinstance(cell, QuantLinear) and any(name.endswith(w) or name.endswith(w + ".k") or
                                                 name.endswith(w + ".v") for w in wanted):
            yield name, cell


class QuantizedCausalLM(TelechatForCausalLM):
    """TelechatForCausalLM whose decoder linears are quantized cells (config.quantization);
    `QuantizedCausalLM.from_pretrained(dir)` loads a directory hf2ms wrote from a GPTQ / AWQ checkpoint."""

    def __init__(self, config, kernels: Kernels | None = None):
        if config.quantization is None:
            raise ConfigError("QuantizedCausalLM needs config.quantization (a float model is TelechatForCausalLM)")
        super().__init__(config, kernels)
        quantize_linears(self, config.quantization, self.kernels)


def model_class(config):
    """The model class for a config: quantized or float."""
    return TelechatForCausalLM if config.quantization is None else QuantizedCausalLM


def load_model(path: str, kernels: Kernels | None = None, **overrides):
    """from_pretrained of the right class for a converted directory (quantized or not)."""
    from ..io.checkpoint import read_config   # pylint: disable=import-outside-toplevel
    return model_class(read_config(path, **overrides)).from_pretrained(path, kernels, **overrides)
