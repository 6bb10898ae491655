"""Put LoRA wrappers into a built model: swap the targeted linear cells, keep every base parameter name,
freeze the base. The model code is untouched (composition, lora/cell.py).

    targets = apply_lora(model, lora_config)          # from a LoraConfig (training)
    add_adapters(model, {name: Adapter, ...})         # from saved adapters (chat, resume, merge tests)
    adapters = adapter_arrays(model)                  # {module: Adapter} as numpy (saving)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config.base import ConfigError
from .cell import LoraLinear
from .names import select_targets

# the linear cells LoRA can wrap (the float Linear and the weight-only-quantized cells of telechat_ms/quant)
LINEAR_CELLS = ("Linear", "QuantLinear", "QuantKVLinear")
SUFFIXES = (".lora_a", ".lora_b")


@dataclass
class Adapter:
    """One LoRA in torch / PEFT orientation: delta W (out, in) = scaling * b @ a."""
    a: np.ndarray          # (r, in)
    b: np.ndarray          # (out, r)
    scaling: float
    # column blocks of independent LoRAs fused into this one (k_proj + v_proj -> wk_v: (r_k, r_v)); None = one
    # LoRA. Converting back drops a block that is zero on a module's rows (layouts.py), so the pair returns.
    blocks: tuple | None = None

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    def delta(self) -> np.ndarray:
        """scaling * B @ A in float64 (merging rounds once, into the weight's dtype)."""
        return self.scaling * (self.b.astype(np.float64) @ self.a.astype(np.float64))


def linear_modules(model) -> list[str]:
    """Names of the linear cells of `model` that LoRA can wrap, in model order (wrapped ones included)."""
    out = []
    for name, cell in model.cells_and_names():
        kind = type(cell).__name__
        if kind == "LoraLinear":
            out.append(name)
        elif kind in LINEAR_CELLS and not _inside(name, out):
            out.append(name)
    return out


def _inside(name: str, parents: list[str]) -> bool:
    return any(name.startswith(p + ".") for p in parents)


def _parent(model, name: str):
    *path, attr = name.split(".")
    cell = model
    for part in path:
        cell = cell[int(part)] if part.isdigit() else getattr(cell, part)
    return cell, attr


def lora_cells(model) -> dict[str, LoraLinear]:
    return {name: cell for name, cell in model.cells_and_names() if isinstance(cell, LoraLinear)}


def add_adapters(model, adapters: dict, dropout: float = 0.0, init_a: str = "kaiming_uniform") -> list[str]:
    """Wrap each module of `adapters` ({module: Adapter (weights loaded) or (rank, scaling) (fresh: A drawn
    by `init_a`, B zero)}) in a LoraLinear, restore the base parameter names MindSpore's re-parenting changes,
    name the adapter parameters `<module>.lora_a/b` and freeze every other parameter."""
    names = {id(p): p.name for p in model.get_parameters()}
    known = set(linear_modules(model))
    wrapped = lora_cells(model)
    for module, spec in adapters.items():
        if module not in known:
            raise ConfigError(f"adapter module {module!r} is not a linear of this model (e.g. {sorted(known)[:3]})")
        if module in wrapped:
            raise ConfigError(f"{module} already has a LoRA adapter")
        parent, attr = _parent(model, module)
        rank, scaling = (spec.rank, spec.scaling) if isinstance(spec, Adapter) else spec
        cell = LoraLinear(getattr(parent, attr), rank, scaling, dropout, init_a)
        setattr(parent, attr, cell)
        if isinstance(spec, Adapter):
            _assign(cell, spec, module)
            cell.blocks = spec.blocks
    for param in model.get_parameters():
        if id(param) in names:
            param.name = names[id(param)]
    for module, cell in lora_cells(model).items():
        cell.lora_a.name, cell.lora_b.name = module + ".lora_a", module + ".lora_b"
    freeze_base(model)
    return list(adapters)


def _assign(cell: LoraLinear, adapter: Adapter, module: str) -> None:
    from mindspore import Tensor   # pylint: disable=import-outside-toplevel
    for param, value, what in ((cell.lora_a, adapter.a, "A"), (cell.lora_b, adapter.b, "B")):
        if tuple(param.shape) != tuple(value.shape):
            raise ConfigError(f"{module}: LoRA {what} has shape {list(value.shape)}, the layer needs "
                              f"{list(param.shape)}")
        param.set_data(Tensor(np.ascontiguousarray(value, dtype=np.float32)))


def set_adapter_arrays(model, adapters: dict) -> None:
    """Load {module: Adapter} into already wrapped modules (same ranks; scalings must agree)."""
    cells = lora_cells(model)
    missing = sorted(set(cells) - set(adapters))
    extra = sorted(set(adapters) - set(cells))
    if missing or extra:
        raise ConfigError(f"adapter modules differ from the model's LoRA layers: missing {missing[:3]}, "
                          f"unexpected {extra[:3]}")
    for module, adapter in adapters.items():
        cell = cells[module]
        if not np.isclose(cell.scaling, adapter.scaling, rtol=1e-6):
            raise ConfigError(f"{module}: adapter scaling {adapter.scaling:g} differs from the layer's "
                              f"{cell.scaling:g} (rank / alpha changed?)")
        _assign(cell, adapter, module)


def freeze_base(model) -> None:
    """Only adapter parameters train: everything else is a frozen base weight (fp16/bf16 allowed)."""
    for param in model.get_parameters():
        param.requires_grad = param.name.endswith(SUFFIXES)


def adapter_arrays(model) -> dict[str, Adapter]:
    """{module: Adapter} of the model's LoRA layers, float32 numpy, model order."""
    return {module: Adapter(cell.lora_a.asnumpy().astype(np.float32), cell.lora_b.asnumpy().astype(np.float32),
                            cell.scaling, cell.blocks)
            for module, cell in lora_cells(model).items()}


def apply_lora(model, lora) -> list[str]:
    """Fresh adapters (A drawn, B zero) on the linears `lora` (LoraConfig) targets; returns their names."""
    targets = select_targets(lora, model.config, linear_modules(model))
    return add_adapters(model, {m: (lora.rank, lora.scaling) for m in targets}, lora.dropout, lora.init_a)
