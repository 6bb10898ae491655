"""LoRA in the native training loop (train/trainer.py calls these three when the run yaml has `lora:` or a
pet_config):

    build_network   the base model (converted directory or weights file) in the frozen base dtype, with fresh
                    adapters on the targeted linears (or a LoRA step's adapter when finetuning from one)
    writer          what a checkpoint step holds instead of the model weights: the adapter in the PEFT format
                    (HF names of the family; base_model_name_or_path = the base directory, read on resume)
    restore         a LoRA step's adapter and optimizer state back into the network and optimizer

Only adapter parameters are trainable (inject.freeze_base), so the trainer's AdamW, gradient all-reduce and
checkpointed optimizer state hold them alone, without any special case there.
"""
from __future__ import annotations

import dataclasses
import json
import os

from ..config.base import ConfigError
from ..io.checkpoint import MODEL_CONFIG, weight_files
from ..io.errors import ConvertError
from .inject import adapter_arrays, apply_lora, linear_modules, lora_cells, set_adapter_arrays
from .peft_format import CONFIG_FILE, adapters_for_model, is_adapter_dir, write_adapter


def _is_model_dir(path: str) -> bool:
    if not path or not os.path.isfile(os.path.join(path, MODEL_CONFIG)):
        return False
    try:
        weight_files(path)
    except ConvertError:
        return False
    return True


def base_of(adapter_dir: str) -> str:
    """The base model an adapter was trained on (adapter_config.json base_model_name_or_path)."""
    with open(os.path.join(adapter_dir, CONFIG_FILE), encoding="utf-8") as fh:
        base = json.load(fh).get("base_model_name_or_path") or ""
    if not (_is_model_dir(base) or os.path.isfile(base)):
        raise ConfigError(f"{adapter_dir}: its base model {base!r} (adapter_config.json base_model_name_or_path) "
                          "is not a model directory here; pass the base with --load_checkpoint")
    return base


def base_and_adapter(train_config, resume_from: str | None) -> tuple[str, str | None]:
    """(base weights: model directory, weights file or '' for random, adapter to start from or None)."""
    load = train_config.load_checkpoint or ""
    if resume_from:          # the step's adapter is restored later; the base: load_checkpoint or the recorded one
        return (load if _is_model_dir(load) or os.path.isfile(load) else base_of(resume_from)), None
    if load and os.path.isdir(load) and is_adapter_dir(load):
        return base_of(load), load          # finetune on from a LoRA step: its adapter, a fresh optimizer
    return load, None


def base_dtype(lora, model_config) -> str:
    """Frozen base weights: the compute dtype of the run (amp O2: 16-bit) unless lora.base_dtype says."""
    return model_config.compute_dtype if lora.base_dtype == "auto" else lora.base_dtype


def build_network(train_config, model_config, kernels, resume_from: str | None):
    """(network with adapters, base path). `model_config`: the architecture with the run's compute dtype."""
    from ..model import TelechatForCausalLM   # pylint: disable=import-outside-toplevel
    lora = train_config.lora
    base, init_adapter = base_and_adapter(train_config, resume_from)
    config = dataclasses.replace(model_config, param_dtype=base_dtype(lora, model_config))
    cls = TelechatForCausalLM
    if getattr(config, "quantization", None) is not None:      # QLoRA: the weight-only-quantized base
        from ..quant.cells import model_class   # pylint: disable=import-outside-toplevel
        cls = model_class(config)
    if _is_model_dir(base):
        network = cls.from_pretrained(base, kernels, **dataclasses.asdict(config))
    else:
        network = cls(config, kernels)
        if base:
            from ..train.trainer import load_weights_file   # pylint: disable=import-outside-toplevel
            load_weights_file(network, base)
    apply_lora(network, lora)
    if init_adapter:
        adapters, _ = adapters_for_model(init_adapter, network.config, linear_modules(network))
        set_adapter_arrays(network, adapters)
    return network, os.path.abspath(base) if base else ""


def describe(network) -> str:
    """'LoRA 12 layers, 49152 trainable params (0.19 MB fp32)' for the start line."""
    cells = lora_cells(network)
    count = sum(c.lora_a.size + c.lora_b.size for c in cells.values())
    return f"LoRA on {len(cells)} linears, {count:,} trainable params ({count * 4 / 2**20:.2f} MiB fp32)"


def writer(network, lora, base: str):
    """checkpoint.save's write_model: the adapter (PEFT format) instead of model weights."""
    def write(directory: str) -> None:
        write_adapter(directory, network.config, adapter_arrays(network), base, lora.dropout, lora.use_rslora)
    return write


def restore(path: str, network, optimizer) -> dict:
    """Adapter and optimizer state of LoRA step `path` into the cells; returns trainer_state."""
    import mindspore as ms   # pylint: disable=import-outside-toplevel
    from ..train import checkpoint as ckpt   # pylint: disable=import-outside-toplevel
    if not is_adapter_dir(path):
        raise ConfigError(f"{path}: not a LoRA checkpoint (no {CONFIG_FILE}); this run has lora set: resume a "
                          "LoRA run's step, or drop lora to resume a full finetune")
    adapters, _ = adapters_for_model(path, network.config, linear_modules(network))
    set_adapter_arrays(network, adapters)
    state = ckpt.load_tensors(os.path.join(path, ckpt.OPTIMIZER_FILE))
    wanted = optimizer.state()
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise ConfigError(f"{path}: optimizer state lacks {len(missing)} tensor(s), e.g. {missing[:3]} (another "
                          "lora target set or rank?)")
    ckpt.check_shapes(path, wanted, state)
    ms.load_param_into_net(optimizer, {k: state[k] for k in wanted}, strict_load=True)
    return ckpt.read_state(path)
