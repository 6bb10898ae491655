"""`telechat-ms train --engine mindformers`: the run yaml through MindFormers 1.9.0's Trainer.

What happens before MindFormers sees the yaml (each step closes a gap where MindFormers would silently do
something else than the native loop; docs/training.md, "The MindFormers engine"):
* the yaml is read strictly by our reader first (config/train.py, config/train_keys.py): unknown and refused
  keys fail with one line, exactly as for the native loop;
* the dataset must hold every column train_dataset.input_columns names (one line naming the file and column);
* load_checkpoint may be a converted directory (convert/hf2ms.py) or a native step directory: the architecture
  comes from its model_config.yaml (yaml keys override it, seq_length from the rows), its weight names and shapes
  are checked against the model (MindFormers would skip a missing tensor with a log line), and MindFormers' own
  loader reads it (load_ckpt_format from the files);
* resume_training resolves MindFormers' checkpoint directory and says at start what a resume restores;
* stop_step, max_consecutive_skips and gradient accumulation in stand-alone / data-parallel mode, which
  MindFormers 1.9 drops, are implemented by callbacks and the wrapper (mindformers.py, mf_callbacks.py);
* <output_dir>/model_config.yaml (+ tokenizer files) is written, so convert/ms2hf.py can convert the
  checkpoints MindFormers writes (--config <output_dir>/model_config.yaml).
"""
from __future__ import annotations

import dataclasses
import os
import shutil

from ..config.base import ConfigError, atomic_write_text
from ..config.model import TelechatConfig
from ..config.train import DATASET_COLUMNS
from ..config.train_keys import CONTEXT_NOT_ON_CPU, check_moe_config
from ..io.checkpoint import MODEL_CONFIG
from ..io.output import TOKENIZER_FILES, copy_side_files
from ..train.batches import check_columns
from . import mf_checkpoints as mfc

# telechat-ms train flag -> MindFormers config path
_OVERRIDE_PATHS = {
    "run_mode": ("run_mode",), "load_checkpoint": ("load_checkpoint",), "use_parallel": ("use_parallel",),
    "resume_training": ("resume_training",), "output_dir": ("output_dir",), "seed": ("seed",),
    "amp_level": ("model", "model_config", "amp_level"), "device_target": ("context", "device_target"),
    "dataset_dir": ("train_dataset", "data_loader", "dataset_dir"), "epochs": ("runner_config", "epochs"),
    "batch_size": ("runner_config", "batch_size"), "stop_step": ("runner_config", "stop_step"),
    "gradient_accumulation_steps": ("runner_config", "gradient_accumulation_steps"),
}
# kept beside the checkpoints so convert/ms2hf.py writes the source's config.json back (docs/convert.md)
HF_SOURCE_FILES = ("hf_config.json", "convert_meta.json")
_OURS = ("amp_level", "device_peak_tflops", "overwrite_output_dir", "max_consecutive_skips")   # not MindFormers'


@dataclasses.dataclass
class EnginePlan:
    """Everything run_yaml decided before building MindFormers' Trainer (tests read it)."""
    config: object                    # TrainConfig (our strict reading, overrides applied)
    model: TelechatConfig             # the architecture trained
    notes: list                       # lines printed at start
    resume: object = None             # mf_checkpoints.ResumePoint
    weights_dir: str | None = None    # model directory the weights come from (finetune)


def plan_run(path: str, overrides: dict | None = None) -> tuple[EnginePlan, object]:
    """(EnginePlan, MindFormerConfig) of a run yaml with the CLI overrides: every check, no training."""
    from ..train.trainer import load_run, resolve_model_config   # pylint: disable=import-outside-toplevel
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(_OVERRIDE_PATHS) - {"overwrite_output_dir"})
    if unknown:
        raise ConfigError(f"--{unknown[0]} is not supported with --engine mindformers")
    config, model_overrides, _parallel, run = load_run(path, with_run=True)
    config = config.replace(**overrides)
    config.check_layout_enabled()
    _check_output(config)
    notes = []
    if getattr(config, "lora", None) is not None:
        raise ConfigError(f"{config.source}: LoRA (lora / model_config.pet_config) is trained by the native loop only "
                          "(MindFormers' pet does not know TelechatForCausalLM); drop --engine mindformers")
    _files, row_length = _dataset(config)
    if config.device_target == "CPU" and config.use_parallel and (config.load_checkpoint or config.resume_training):
        raise ConfigError(f"{config.source}: with use_parallel on CPU MindFormers cannot load a checkpoint (its "
                          "loaders synchronise the workers with a barrier, which has no CPU kernel): train data "
                          "parallel on CPU from random weights, or finetune / resume with the native loop")
    resume = mfc.resolve_resume(config) if config.resume_training else None
    # resume: the architecture the run wrote into output_dir (else the yaml's), not load_checkpoint's
    arch_from = config.replace(load_checkpoint=resume.model_dir or "", run_mode="train") if resume else config
    model, model_dir = resolve_model_config(arch_from, model_overrides, row_length)
    check_moe_config(config.moe_config, model, f"{config.source}: moe_config")
    weights = None
    if config.load_checkpoint and not resume:
        weights = mfc.check_weights(config.load_checkpoint, model)
        mfc.check_parallel_load(config, weights[0], run)
    mf_config = _mindformers_config(path, config, overrides, model, notes)
    if resume:
        mfc.apply_resume(mf_config, resume)
        notes.append(resume.announcement())
    elif weights:
        mf_config.load_checkpoint, mf_config.load_ckpt_format = weights
    notes += _accumulation(mf_config, config)
    return EnginePlan(config, model, notes, resume, model_dir), mf_config


def _dataset(config) -> tuple[list[str], int]:
    from ..data.dataset import mindrecord_files, row_length   # pylint: disable=import-outside-toplevel
    if not config.dataset_dir:
        raise ConfigError(f"{config.source}: train_dataset.data_loader.dataset_dir is empty (set it or pass "
                          "--train_dataset)")
    files = mindrecord_files(config.dataset_dir)
    check_columns(files, DATASET_COLUMNS)
    return files, row_length(config.dataset_dir)


def _mindformers_config(path: str, config, overrides: dict, model: TelechatConfig, notes: list):
    """MindFormerConfig of `path` with the overrides, the resolved architecture and the CPU adjustments."""
    from mindformers import MindFormerConfig   # pylint: disable=import-outside-toplevel
    mf = MindFormerConfig(os.path.abspath(path))
    for key in _OURS:
        mf.pop(key, None)
    for key, value in overrides.items():
        if key in _OVERRIDE_PATHS:
            *parents, leaf = _OVERRIDE_PATHS[key]
            node = mf
            for name in parents:
                if node.get(name) is None:
                    node[name] = MindFormerConfig()
                node = node[name]
            node[leaf] = value
    mf.output_dir = os.path.abspath(config.output_dir)
    arch = {k: v for k, v in (mf.model.model_config or {}).items() if k not in TelechatConfig.__dataclass_fields__}
    arch.update(model.to_dict())
    arch["amp_level"] = config.amp_level
    mf.model.model_config = MindFormerConfig(**arch)
    mf.train_dataset.input_columns = list(DATASET_COLUMNS)
    mf.train_dataset.data_loader.dataset_dir = os.path.abspath(config.dataset_dir)
    if mf.runner_wrapper.type == "MFTrainOneStepCell":     # same class + the CPU fix and accumulation
        mf.runner_wrapper.type = "TelechatTrainOneStepCell"
    if config.device_target == "CPU":
        if mf.runner_config.sink_mode:
            notes.append("runner_config.sink_mode: off on CPU (MindFormers 1.9 miscounts steps in sink mode there)")
            mf.runner_config.sink_mode = False
        for key in CONTEXT_NOT_ON_CPU:
            if mf.context.pop(key, None) is not None:
                notes.append(f"context.{key}: not applied on CPU (an Ascend setting)")
    return mf


def _accumulation(mf, config) -> list[str]:
    """MindFormers 1.9 accumulates only under semi-auto parallel (and resets gradient_accumulation_steps to 1 in
    stand-alone / data-parallel mode): there the wrapper runs the micro batches of one step itself."""
    steps = config.gradient_accumulation_steps
    semi = config.use_parallel and (mf.parallel or {}).get("parallel_mode", 0) in (1, 2, "semi_auto_parallel",
                                                                                    "auto_parallel")
    if steps == 1 or semi:
        return []
    if mf.runner_wrapper.type != "TelechatTrainOneStepCell":
        raise ConfigError(f"{config.source}: gradient_accumulation_steps {steps} without semi-auto parallel needs "
                          "runner_wrapper.type TelechatTrainOneStepCell (MindFormers 1.9 drops it otherwise)")
    mf.runner_config.gradient_accumulation_steps = 1
    mf.runner_config.batch_size = config.batch_size * steps
    mf.runner_wrapper.gradient_accumulation_steps = steps
    return [f"gradient_accumulation_steps {steps}: {steps} micro batches of {config.batch_size} rows per step inside "
            "TelechatTrainOneStepCell (MindFormers 1.9 accumulates only under semi-auto parallel)"]


def _check_output(config) -> list[str]:
    """A fresh run never mixes its checkpoints with an earlier run's (MindFormers' rotation would): the earlier
    run's checkpoint files, which overwrite_output_dir deletes."""
    root = os.path.join(os.path.abspath(config.output_dir), "checkpoint")
    found = mfc.rank_checkpoints(root)
    if found and not config.resume_training and not config.overwrite_output_dir:
        raise ConfigError(f"{root} already holds checkpoints of an earlier run ({len(found)} files, e.g. "
                          f"{found[-1]}); pass --resume_training to continue it, another --output_dir for a new "
                          "run, or --overwrite_output_dir to delete them and start over")
    return [] if config.resume_training else found


def _prepare_output(plan: EnginePlan) -> None:
    """Delete an earlier run's checkpoints (overwrite_output_dir); the model config (+ tokenizer files) goes
    beside the new ones for resume and convert/ms2hf.py."""
    config = plan.config
    root = os.path.join(os.path.abspath(config.output_dir), "checkpoint")
    found = _check_output(config)
    if found:
        shutil.rmtree(root)
        plan.notes.append(f"overwrite_output_dir: deleted {len(found)} checkpoint files of an earlier run in {root}")
    os.makedirs(config.output_dir, exist_ok=True)
    export = dataclasses.replace(plan.model, param_dtype="float32")
    atomic_write_text(os.path.join(config.output_dir, MODEL_CONFIG), export.to_yaml())
    here = os.path.realpath(config.output_dir)
    sources = [d for d in (plan.weights_dir, config.load_checkpoint)
               if d and os.path.isdir(d) and os.path.realpath(d) != here]
    copy_side_files(sources, config.output_dir, TOKENIZER_FILES + (HF_SOURCE_FILES))


def run_yaml(path: str, overrides: dict | None = None, printer=print):
    """Train with MindFormers' Trainer; returns the Trainer. Every check of plan_run comes first (a refused
    setting fails before MindFormers is imported)."""
    plan, mf_config = plan_run(path, overrides)
    _prepare_output(plan)
    from ..runtime import host_dispatch_for   # pylint: disable=import-outside-toplevel
    host_dispatch_for(plan.config.device_target)    # before MindFormers runs any op (telechat_ms/runtime.py)
    from mindformers import Trainer   # pylint: disable=import-outside-toplevel
    from mindformers.core.context import build_context   # pylint: disable=import-outside-toplevel
    from mindformers.utils import set_output_path   # pylint: disable=import-outside-toplevel
    import mindspore as ms   # pylint: disable=import-outside-toplevel
    from . import mindformers as _registered   # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    from .mf_callbacks import callbacks_for   # pylint: disable=import-outside-toplevel
    for line in plan.notes:
        printer(line)
    set_output_path(mf_config.output_dir)
    build_context(mf_config)
    ms.set_seed(plan.config.seed)
    trainer = Trainer(mf_config, callbacks=callbacks_for(plan))
    trainer.train()
    return trainer
