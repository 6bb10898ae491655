"""telechat_ms: TeleChat2 (dense and MoE) as MindSpore Cells for Ascend, tested on CPU."""
from .config import ConfigError, TelechatConfig
from .model import Kernels, TelechatForCausalLM

__version__ = "0.1.0"
__all__ = ["TelechatConfig", "TelechatForCausalLM", "Kernels", "ConfigError", "__version__"]
