"""MindSpore Cells of TeleChat2: single-device math; parallel layouts live in telechat_ms.parallel."""
from .causal_lm import TelechatForCausalLM
from .decoder import DecoderLayer, TelechatModel
from .kernels import Kernels

__all__ = ["TelechatForCausalLM", "TelechatModel", "DecoderLayer", "Kernels"]
