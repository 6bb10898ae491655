"""Adapters of a live model: load a PEFT directory into it (chat without merging), save its adapters."""
from __future__ import annotations

from ..io.output import staged_output
from .inject import adapter_arrays, add_adapters, linear_modules
from .peft_format import adapters_for_model, write_adapter


def load_adapter(model, path: str) -> dict:
    """Wrap the modules a PEFT adapter directory names (any family spelling) with its weights; the base
    weights are untouched. Returns its adapter_config."""
    adapters, settings = adapters_for_model(path, model.config, linear_modules(model))
    add_adapters(model, adapters)
    return settings


def save_adapter(model, dst: str, base: str = "", overwrite: bool = False, dropout: float = 0.0,
                 rslora: bool = False) -> str:
    """The model's adapters as a PEFT directory `dst` (staged: complete or absent)."""
    with staged_output(dst, overwrite) as out:
        write_adapter(out, model.config, adapter_arrays(model), base, dropout, rslora)
    return dst
