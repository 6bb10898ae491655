"""LoRA for every model family (docs/training.md, "LoRA"): adapters by composition around the linear cells,
trained with a frozen base, saved and loaded in the HF PEFT format under the family's HF module names, merged
into the base weights (`telechat-ms merge-lora`) or applied at chat time (`telechat-ms chat --adapter`).

    from telechat_ms.lora import LoraConfig, apply_lora, load_adapter, save_adapter
    model = TelechatForCausalLM.from_pretrained(base_dir)
    apply_lora(model, LoraConfig(rank=8, alpha=16, target_modules=["wq", "wk_v"]))   # fresh adapters
    load_adapter(model, "adapter_dir")                                                # or a PEFT adapter
"""
from __future__ import annotations

from .config import LoraConfig, lora_from_run

__all__ = ["LoraConfig", "lora_from_run", "apply_lora", "load_adapter", "save_adapter", "adapter_arrays"]


def __getattr__(name):
    # the MindSpore-side functions load MindSpore only when used (configs are checked without it)
    if name in ("apply_lora", "adapter_arrays", "add_adapters"):
        from . import inject
        return getattr(inject, name)
    if name in ("load_adapter", "save_adapter"):
        from . import adapters
        return getattr(adapters, name)
    raise AttributeError(name)
