"""telechat_ms: TeleChat2 (dense and MoE) as MindSpore Cells for Ascend, tested on CPU.

The config is plain Python; the model classes import MindSpore, so they are loaded on first use
(PEP 562): `import telechat_ms.convert` and the convert CLIs stay light (no MindSpore import).
"""
from .config import ConfigError, TelechatConfig

__version__ = "0.1.0"
__all__ = ["TelechatConfig", "TelechatForCausalLM", "Kernels", "ConfigError", "__version__"]

_LAZY = {"TelechatForCausalLM": "model", "Kernels": "model"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
