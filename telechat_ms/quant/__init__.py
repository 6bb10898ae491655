"""Weight-only-quantized checkpoints (GPTQ, AWQ): formats, packing, conversion and the quantized linear layer.

Modules: spec (QuantizationConfig, the source checkpoint's format), packing (numpy bit packing and our layout),
layout (which tensors of a family's checkpoint are quantized; lazy conversions), convert (hf2ms / ms2hf),
cells (the MindSpore QuantLinear and the swap into a model). Importing this package loads no MindSpore.
See docs/quantization.md.
"""
