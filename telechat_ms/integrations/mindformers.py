"""MindFormers 1.9.0 integration — the only module of the package that imports mindformers.

Importing it registers, under the names TeleChat2 yamls use:
    config     TelechatConfig            -> MFTelechatConfig (carries a telechat_ms TelechatConfig)
    models     TelechatForCausalLM       -> MFTelechatForCausalLM (our model; parameter names unchanged)
    tokenizer  TelechatTokenizer         -> MFTelechatTokenizer (encode/decode of telechat_ms.data)
    wrapper    TelechatTrainOneStepCell  -> MFTrainOneStepCell that also works on CPU
`run_yaml(path, overrides)` does what run_mindformer.py's main does (output path, context, Trainer; not
ConfigTemplate.apply_template, which turns sections into plain dicts that 1.9.0's Trainer cannot read).
For MindFormers' own run_mindformer.py: `--register_path <dir of this file>` and `auto_register:
telechat_register.TelechatConfig` in the yaml's model_config (telechat_register.py imports this module).

MindFormers 1.9.0 quirks handled here (measured on CPU, ../shared/spec/mindspore_cpu.md):
* MFTrainOneStepCell's overflow check calls NPUGetFloatStatusV2 (no CPU kernel): on CPU the wrapper sets
  ascend_910b_target=True and enable_allfinite=False, which makes it use a plain isfinite check.
* sink mode miscounts steps on CPU: run_yaml turns it off there; max_device_memory and jit_config are dropped.
* bfloat16 has no CPU kernels: the model's compute dtype follows amp_level (train/amp.py), fp16 on CPU.
"""
from __future__ import annotations

import dataclasses

import mindspore as ms
from mindformers.models.configuration_utils import PretrainedConfig
from mindformers.models.modeling_utils import PreTrainedModel
from mindformers.tools.register import MindFormerModuleType, MindFormerRegister
from mindformers.wrapper.wrapper import MFTrainOneStepCell

from ..config.base import ConfigError
from ..config.model import TelechatConfig
from ..model import Kernels, TelechatForCausalLM
from ..train.amp import apply_amp, model_config_for_amp, resolve_amp_level

_FIELDS = frozenset(f.name for f in dataclasses.fields(TelechatConfig))


@MindFormerRegister.register(MindFormerModuleType.CONFIG, alias="TelechatConfig")
class MFTelechatConfig(PretrainedConfig):
    """MindFormers config: our architecture fields are validated by TelechatConfig; MindFormers' own keys
    (parallel_config, checkpoint_name_or_path, ...) stay on the PretrainedConfig. `amp_level` (O0/O1/O2) is
    our extension; without it a 16-bit compute_dtype means O2."""
    model_type = "telechat_ms"

    def __init__(self, amp_level: str | None = None, **kwargs):
        ours = {k: kwargs.pop(k) for k in list(kwargs) if k in _FIELDS}
        self.telechat = TelechatConfig.from_dict(ours, source="model.model_config")
        self.amp_level = resolve_amp_level(amp_level, self.telechat)
        super().__init__(**kwargs)
        for key, value in self.telechat.to_dict().items():   # MindFormers reads e.g. seq_length, hidden_size
            setattr(self, key, value)


@MindFormerRegister.register(MindFormerModuleType.MODELS, alias="TelechatForCausalLM")
class MFTelechatForCausalLM(PreTrainedModel):
    """Our TelechatForCausalLM inside a MindFormers PreTrainedModel. auto_prefix=False keeps the parameter names
    of telechat_ms (= the official MindSpore port's), so converted checkpoints load unchanged."""
    config_class = MFTelechatConfig
    base_model_prefix = "telechat"

    def __init__(self, config, **kwargs):
        super().__init__(config, auto_prefix=False, **kwargs)
        device = ms.get_context("device_target")
        model_config = model_config_for_amp(config.telechat, config.amp_level, device)
        self.network = apply_amp(TelechatForCausalLM(model_config, Kernels.for_device(device)),
                                 config.amp_level, device)

    def construct(self, input_ids, labels=None):
        return self.network(input_ids, labels)


@MindFormerRegister.register(MindFormerModuleType.TOKENIZER, alias="TelechatTokenizer")
class MFTelechatTokenizer:
    """telechat_ms.data.TelechatTokenizer behind the calls MindFormers' data/predict code makes
    (encode, decode, __call__, special ids). Not a full PreTrainedTokenizer."""

    def __init__(self, vocab_file: str, **_ignored):
        from ..data.tokenizer import TelechatTokenizer   # pylint: disable=import-outside-toplevel
        self.tokenizer = TelechatTokenizer(vocab_file)
        self.vocab_size = self.tokenizer.vocab_size
        t = self.tokenizer
        self.bos_token_id, self.eos_token_id, self.pad_token_id, self.unk_token_id = t.bos_id, t.eos_id, t.pad_id, t.unk_id

    def encode(self, text: str, **_ignored) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids, skip_special_tokens: bool = True, **_ignored) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens)

    def __call__(self, text, **_ignored) -> dict:
        ids = [self.encode(t) for t in text] if isinstance(text, (list, tuple)) else self.encode(text)
        return {"input_ids": ids}


@MindFormerRegister.register(MindFormerModuleType.WRAPPER, alias="TelechatTrainOneStepCell")
class MFTelechatTrainOneStepCell(MFTrainOneStepCell):
    """MFTrainOneStepCell with the CPU overflow-check workaround (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if ms.get_context("device_target") == "CPU":
            self.ascend_910b_target = True
            self.enable_allfinite = False


# telechat-ms train flag -> MindFormers config path
_OVERRIDE_PATHS = {
    "run_mode": ("run_mode",), "load_checkpoint": ("load_checkpoint",), "use_parallel": ("use_parallel",),
    "resume_training": ("resume_training",), "output_dir": ("output_dir",), "seed": ("seed",),
    "amp_level": ("model", "model_config", "amp_level"), "device_target": ("context", "device_target"),
    "dataset_dir": ("train_dataset", "data_loader", "dataset_dir"), "epochs": ("runner_config", "epochs"),
    "batch_size": ("runner_config", "batch_size"), "stop_step": ("runner_config", "stop_step"),
    "gradient_accumulation_steps": ("runner_config", "gradient_accumulation_steps"),
}


def load_config(path: str, overrides: dict | None = None):
    """MindFormerConfig of `path` with the CLI overrides and the CPU adjustments applied."""
    from mindformers import MindFormerConfig   # pylint: disable=import-outside-toplevel
    config = MindFormerConfig(path)
    if "amp_level" in config and "amp_level" not in (overrides or {}):
        config.model.model_config.amp_level = config.amp_level     # top-level key of our yamls
    for key, value in (overrides or {}).items():
        if key not in _OVERRIDE_PATHS:
            raise ConfigError(f"--{key} is not supported with --engine mindformers")
        *parents, leaf = _OVERRIDE_PATHS[key]
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    if config.context.device_target == "CPU":
        config.runner_config.sink_mode = False
        for key in ("max_device_memory", "jit_config"):
            config.context.pop(key, None)
    return config


def run_yaml(path: str, overrides: dict | None = None):
    """Train with MindFormers' Trainer (run_mindformer.py's main for run_mode train/finetune)."""
    from mindformers import Trainer   # pylint: disable=import-outside-toplevel
    from mindformers.core.context import build_context   # pylint: disable=import-outside-toplevel
    from mindformers.utils import set_output_path   # pylint: disable=import-outside-toplevel
    config = load_config(path, overrides)
    if config.run_mode not in ("train", "finetune"):
        raise ConfigError(f"{path}: run_mode must be train or finetune, got {config.run_mode!r}")
    set_output_path(config.output_dir)
    build_context(config)
    trainer = Trainer(config)
    trainer.train()
    return trainer
