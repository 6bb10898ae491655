"""Which implementation of a fused op the model uses: the Ascend kernel or the plain-ops path.

The choice is made once, by whoever builds the model (from the device target), and passed in; model code
never reads the global context. Both paths compute the same math; CPU always uses the plain path
(no CPU kernels exist for flash attention, RmsNorm, ApplyRotaryPosEmb, GroupedMatmul / MoeTokenPermute or
WeightQuantBatchMatmul, see docs/architecture.md, docs/moe.md and docs/quantization.md).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kernels:
    flash_attention: bool = False   # ops FlashAttentionScore (BNSD) instead of matmul-softmax-matmul
    fused_rms_norm: bool = False    # ops.rms_norm instead of fp32 square-mean-rsqrt
    fused_rope: bool = False        # ops.rotary_position_embedding (rotate-half mode) instead of slicing
    grouped_matmul: bool = False    # MoE dropless experts: moe_token_permute + GroupedMatmul + moe_token_unpermute
    # weight-only-quantized linears (telechat_ms/quant/cells.py): WeightQuantBatchMatmul instead of
    # dequantize-then-MatMul
    weight_quant_matmul: bool = False
    # Elementwise ops broadcast their small operand themselves (Ascend). Off (CPU): the small operand is
    # expanded with Tile first, so the op runs on equal shapes -- MindSpore's CPU binary kernels keep index
    # tables of 16-24 bytes per output element for the lifetime of a broadcasting op (docs/performance.md).
    native_broadcast: bool = False
    # Decoder-layer cell reuse (mindspore.lazy_inline): graph mode compiles one layer and reuses it for every
    # layer. MindSpore 2.9's CPU backend rejects it ("Input[0] must be a Primitive ValueNode"), so Ascend only.
    cell_reuse: bool = False

    @classmethod
    def plain(cls) -> "Kernels":
        return cls()

    @classmethod
    def for_device(cls, device_target: str) -> "Kernels":
        """Fast paths on Ascend, plain ops everywhere else."""
        if device_target not in ("Ascend", "CPU", "GPU"):
            raise ValueError(f"device_target must be Ascend, CPU or GPU, got {device_target!r}")
        if device_target == "Ascend":
            return cls(flash_attention=True, fused_rms_norm=True, fused_rope=True, grouped_matmul=True,
                       weight_quant_matmul=True, native_broadcast=True, cell_reuse=True)
        return cls()
