"""Training settings, read strictly from a MindFormers-format run yaml (docs/training.md).

The yaml is the one `run_mindformer.py` takes, so one file drives both `telechat-ms train` (native loop) and
MindFormers' Trainer. Sections read here: top-level run keys, `context`, `runner_config`, `runner_wrapper`,
`optimizer`, `lr_schedule`, `train_dataset`, `callbacks`. `model` is read by TelechatConfig and the parallel
sections by the parallel config. Unknown keys fail naming the key; every other MindFormers key is classified in
config/train_keys.py (inert, honoured only by --engine mindformers, or refused) and listed in docs/training.md.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from . import train_keys as keys
from .base import ConfigError, check_positive, check_type, strict_from_dict

AMP_LEVELS = ("O0", "O1", "O2")
RUN_MODES = ("train", "finetune")
DEVICE_TARGETS = ("CPU", "Ascend", "GPU")
LR_SCHEDULES = ("CosineWithWarmUpLR", "ConstantWarmUpLR")
OPTIMIZERS = ("AdamW",)

# sections other configs read: model (TelechatConfig + MODEL_RUN keys), parallel_config / recompute_config
# (ParallelConfig), moe_config (checked against the model, train_keys.check_moe_config)
READ_ELSEWHERE = frozenset({"model", "parallel_config", "recompute_config", "moe_config",
                            "lora"})     # LoRA: `lora:` and model.model_config.pet_config -> TrainConfig.lora
WRAPPER_TYPES = ("MFTrainOneStepCell", "TelechatTrainOneStepCell", "TrainOneStepWithLossScaleCell",
                 "MFPipelineWithLossScaleCell")
DATASET_COLUMNS = ("input_ids", "labels", "position_ids", "document_ids")   # what `telechat-ms preprocess` writes
DATASET_TASKS = ("CausalLanguageModelDataset",)


def to_float(name: str, value: Any, allow_none: bool = False) -> float | None:
    """`value` as a finite float. Numeric strings are accepted because PyYAML (YAML 1.1) reads `5e-3` (an
    exponent without a dot) as the string '5e-3'. NaN/inf are refused: a NaN learning rate or scale turns every
    step into a skipped overflow step."""
    if value is None and allow_none:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass
class OptimizerConfig:
    """AdamW with decoupled weight decay (torch semantics, bias-corrected); biases and norm weights never decay."""
    type: str = "AdamW"
    betas: tuple = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1

    def __post_init__(self):
        if self.type not in OPTIMIZERS:
            raise ConfigError(f"optimizer.type must be one of {OPTIMIZERS}, got {self.type!r}")
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
            raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = tuple(to_float("optimizer.betas", b) for b in self.betas)
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), got {self.betas!r}")
        self.eps = to_float("optimizer.eps", self.eps)
        self.weight_decay = to_float("optimizer.weight_decay", self.weight_decay)
        if self.eps <= 0 or self.weight_decay < 0:
            raise ConfigError(f"optimizer.eps ({self.eps}) must be > 0 and weight_decay ({self.weight_decay}) >= 0")


@dataclass
class LrScheduleConfig:
    """MindFormers' CosineWithWarmUpLR / ConstantWarmUpLR, same formulas (train/schedule.py)."""
    type: str = "CosineWithWarmUpLR"
    learning_rate: float = 1e-5
    lr_end: float = 0.0
    warmup_lr_init: float = 0.0
    warmup_steps: int = 0
    warmup_ratio: float | None = None        # overrides warmup_steps: int(total_steps * ratio)
    total_steps: int = -1                    # -1: the whole run, epochs x steps per epoch (not stop_step)
    num_cycles: float = 0.5

    def __post_init__(self):
        if self.type not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule.type must be one of {LR_SCHEDULES}, got {self.type!r}")
        for name in ("learning_rate", "lr_end", "warmup_lr_init", "num_cycles"):
            setattr(self, name, to_float(f"lr_schedule.{name}", getattr(self, name)))
        check_type("lr_schedule.warmup_steps", self.warmup_steps, int)
        check_type("lr_schedule.total_steps", self.total_steps, int)
        self.warmup_ratio = to_float("lr_schedule.warmup_ratio", self.warmup_ratio, allow_none=True)
        if self.learning_rate <= 0 or self.warmup_steps < 0:
            raise ConfigError(f"lr_schedule.learning_rate ({self.learning_rate}) must be > 0 and "
                              f"warmup_steps ({self.warmup_steps}) >= 0")
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio <= 1:
            raise ConfigError(f"lr_schedule.warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        if self.total_steps == 0 or self.total_steps < -1:
            raise ConfigError(f"lr_schedule.total_steps must be -1 (the run's steps) or > 0, got {self.total_steps}")


@dataclass
class LossScaleConfig:
    """Loss scaling. dynamic=None: dynamic for float16 compute, none (scale 1) for float32/bfloat16."""
    dynamic: bool | None = None
    loss_scale_value: float = 65536.0
    scale_factor: float = 2.0
    scale_window: int = 1000

    def __post_init__(self):
        check_type("loss scale dynamic", self.dynamic, bool, allow_none=True)
        self.loss_scale_value = to_float("loss_scale_value", self.loss_scale_value)
        self.scale_factor = to_float("scale_factor", self.scale_factor)
        check_positive("scale_window", self.scale_window)
        if self.loss_scale_value <= 0 or self.scale_factor <= 1:
            raise ConfigError(f"loss_scale_value ({self.loss_scale_value}) must be > 0 and "
                              f"scale_factor ({self.scale_factor}) > 1")


@dataclass
class CheckpointConfig:
    """CheckpointMonitor: save every N optimizer steps (and at the end), keep the K newest."""
    prefix: str = "telechat"
    save_checkpoint_steps: int = 1000
    keep_checkpoint_max: int = 3

    def __post_init__(self):
        check_positive("save_checkpoint_steps", self.save_checkpoint_steps)
        check_positive("keep_checkpoint_max", self.keep_checkpoint_max)


@dataclass
class TrainConfig:
    seed: int = 0
    output_dir: str = "./output"
    run_mode: str = "finetune"
    load_checkpoint: str = ""              # converted model dir / step checkpoint dir (finetune, resume)
    resume_training: bool | str = False    # True: newest checkpoint; a string: that step directory name
    use_parallel: bool = False             # data parallel over msrun workers (native loop)
    amp_level: str | None = None           # None: O2 if model compute_dtype is 16-bit, else O0
    device_target: str = "CPU"
    mode: int = 0                          # 0 GRAPH_MODE, 1 PYNATIVE_MODE
    device_peak_tflops: float | None = None  # for the MFU estimate; None: table by device (train/logs.py)
    epochs: int = 1
    batch_size: int = 1                    # per device micro batch
    gradient_accumulation_steps: int = 1
    stop_step: int = 0                     # > 0: stop after this many optimizer steps (the schedule is unchanged)
    overwrite_output_dir: bool = False     # a fresh run may delete the checkpoints of an earlier one (ours)
    max_consecutive_skips: int = 50        # stop after this many skipped steps in a row (ours; see below)
    use_clip_grad: bool = True
    max_grad_norm: float = 1.0
    log_interval: int = 1
    dataset_dir: str = ""
    shuffle: bool = True
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lr_schedule: LrScheduleConfig = field(default_factory=LrScheduleConfig)
    loss_scale: LossScaleConfig = field(default_factory=LossScaleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tensorboard_dir: str | None = None     # `tensorboard: {tensorboard_dir}`: scalars in <dir>/rank_0 (train/logs.py)
    num_parallel_workers: int = 1          # dataset reader threads
    prefetch_size: int | None = None       # dataset prefetch depth (mindspore.dataset.config)
    context: dict = field(default_factory=dict)           # context keys applied with mindspore.set_context
    # settings only --engine mindformers honours ({'section.key': 'value: why'}); the native loop refuses them
    mindformers_only: dict = field(default_factory=dict, compare=False)
    # `parallel` settings the native loop cannot honour under use_parallel (semi-auto, parallel optimizer)
    parallel_settings: dict = field(default_factory=dict, compare=False)
    # the layout sections (parallel_config, recompute_config, parallel, model_config offset, moe_config)
    parallel: Any = field(default=None, compare=False)
    moe_config: dict = field(default_factory=dict, compare=False)   # checked against the model (train_keys)
    # LoRA (issue 12): telechat_ms.lora.LoraConfig from the `lora:` section or MindFormers' pet_config; None =
    # full finetuning
    lora: Any = field(default=None, compare=False)
    source: str = "config"

    def __post_init__(self):
        check_type("seed", self.seed, int)
        if self.run_mode not in RUN_MODES:
            raise ConfigError(f"run_mode must be one of {RUN_MODES}, got {self.run_mode!r}")
        if self.amp_level is not None and self.amp_level not in AMP_LEVELS:
            raise ConfigError(f"amp_level must be one of {AMP_LEVELS}, got {self.amp_level!r}")
        if self.device_target not in DEVICE_TARGETS:
            raise ConfigError(f"context.device_target must be one of {DEVICE_TARGETS}, got {self.device_target!r}")
        if self.mode not in (0, 1):
            raise ConfigError(f"context.mode must be 0 (graph) or 1 (pynative), got {self.mode!r}")
        # 50 > the 32 halvings of the largest usual initial scale (2^32) down to 1: a healthy fp16 start
        # never skips that many steps in a row
        for name in ("epochs", "batch_size", "gradient_accumulation_steps", "log_interval", "max_consecutive_skips",
                     "num_parallel_workers"):
            check_positive(name, getattr(self, name))
        check_type("stop_step", self.stop_step, int)
        check_type("prefetch_size", self.prefetch_size, int, allow_none=True)
        check_type("tensorboard_dir", self.tensorboard_dir, str, allow_none=True)
        check_type("context", self.context, dict)
        check_type("resume_training", self.resume_training, (bool, str))
        for name in ("use_parallel", "use_clip_grad", "shuffle", "overwrite_output_dir"):
            check_type(name, getattr(self, name), bool)
        self.max_grad_norm = to_float("max_grad_norm", self.max_grad_norm)
        self.device_peak_tflops = to_float("device_peak_tflops", self.device_peak_tflops, allow_none=True)
        if self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.overwrite_output_dir and self.resume_training:
            raise ConfigError("overwrite_output_dir deletes the checkpoints resume_training would continue; "
                              "set only one of them")

    def replace(self, **changes) -> "TrainConfig":
        try:
            return dataclasses.replace(self, **changes)
        except ConfigError as exc:
            raise ConfigError(f"{self.source}: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str) -> "TrainConfig":
        """`base_config` inheritance resolved as MindFormers does (telechat_ms.parallel.run_yaml)."""
        from ..parallel.run_yaml import load_run_yaml   # pylint: disable=import-outside-toplevel
        data = load_run_yaml(path)
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a mapping (a MindFormers run yaml), got {type(data).__name__}")
        return cls.from_dict(data, source=path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """A run yaml must state its recipe: an empty one (or one without a learning rate) would otherwise
        train on the defaults and exit 0."""
        if not data:
            raise ConfigError(f"{source}: the run yaml is empty; start from yaml_configs/tiny/train_tiny.yaml "
                              "(or a size yaml) and see docs/training.md")
        schedule = data.get("lr_schedule")
        if not isinstance(schedule, Mapping) or "learning_rate" not in schedule:
            raise ConfigError(f"{source}: no lr_schedule.learning_rate; a run yaml sets at least the learning rate "
                              "(see yaml_configs/tiny/train_tiny.yaml and docs/training.md)")
        kwargs: dict[str, Any] = {"source": source, "mindformers_only": {}}
        rest = keys.check_section(keys.TOP, data, source, "", kwargs["mindformers_only"])
        for key, value in rest.items():
            if key in _SECTIONS:
                _SECTIONS[key](value, kwargs, f"{source}: {key}")
            elif key in _TOP_KEYS:
                kwargs[key] = value
            elif key not in READ_ELSEWHERE:
                raise ConfigError(f"{source}: unknown config key '{key}' (run keys: {', '.join(sorted(_TOP_KEYS))}; "
                                  f"sections: {', '.join(sorted(_SECTIONS))}; see docs/training.md)")
        from .parallel import ParallelConfig   # pylint: disable=import-outside-toplevel
        kwargs["parallel"] = ParallelConfig.from_run_config(data, source)
        kwargs["moe_config"] = dict(_mapping(data.get("moe_config") or {}, f"{source}: moe_config"))
        from ..lora.config import lora_from_run   # pylint: disable=import-outside-toplevel
        kwargs["lora"] = lora_from_run(data, source)
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def check_layout_enabled(self) -> None:
        """A layout over several devices without use_parallel would be dropped silently (MindFormers resets it to
        one device in stand-alone mode): refused by both engines."""
        par = self.parallel
        if par is not None and not self.use_parallel and par.device_num > 1:
            raise ConfigError(f"{self.source}: parallel_config describes {par.describe()} but use_parallel is false; "
                              "set use_parallel: true (and launch with msrun) or a one-device layout")


_TOP_KEYS = frozenset({"seed", "output_dir", "run_mode", "load_checkpoint", "resume_training", "use_parallel",
                       "amp_level", "device_peak_tflops", "overwrite_output_dir", "max_consecutive_skips"})


def _mapping(value, where: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _pick(value, where: str, names: dict[str, str], rules: Mapping, kwargs: dict) -> dict[str, Any]:
    """{our field: value} for the keys in `names` (yaml key -> field); other keys must have a rule in `rules`
    (train_keys.py: refused values raise, mindformers-only values are recorded in kwargs['mindformers_only'])."""
    dotted = where.split(": ", 1)[-1]
    rest = keys.check_section(rules, _mapping(value, where), where, dotted, kwargs.setdefault("mindformers_only", {}))
    out = {}
    for key, item in rest.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key '{key}' (accepted: {', '.join(sorted(set(names) | set(rules)))})")
        out[names[key]] = item
    return out


_CONTEXT_RULES = {**keys.CONTEXT, **{k: keys.inert("mindspore.set_context") for k in keys.CONTEXT_APPLIED}}


def _context(value, kwargs, where):
    kwargs.update(_pick(value, where, {"device_target": "device_target", "mode": "mode"}, _CONTEXT_RULES, kwargs))
    kwargs["context"] = {k: v for k, v in _mapping(value, where).items() if k in keys.CONTEXT_APPLIED}


def _runner(value, kwargs, where):
    names = {k: k for k in ("epochs", "batch_size", "gradient_accumulation_steps", "stop_step")}
    kwargs.update(_pick(value, where, names, keys.RUNNER, kwargs))


def _wrapper(value, kwargs, where):
    picked = _pick(value, where, {"type": "type", "scale_sense": "scale_sense", "use_clip_grad": "use_clip_grad",
                                  "max_grad_norm": "max_grad_norm"}, keys.WRAPPER, kwargs)
    if picked.pop("type", WRAPPER_TYPES[0]) not in WRAPPER_TYPES:
        raise ConfigError(f"{where}: type must be one of {WRAPPER_TYPES}")
    if "scale_sense" in picked:
        kwargs["loss_scale"] = _scale_sense(picked.pop("scale_sense"), f"{where}.scale_sense")
    kwargs.update(picked)


def _scale_sense(value, where: str) -> LossScaleConfig:
    """A number (fixed scale) or {type: DynamicLossScaleUpdateCell | FixedLossScaleUpdateCell, ...}."""
    if not isinstance(value, Mapping):
        try:
            return LossScaleConfig(dynamic=False, loss_scale_value=value)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    fields = _pick(value, where, {k: k for k in ("type", "loss_scale_value", "scale_factor", "scale_window")},
                   {}, {})
    kind = fields.pop("type", "DynamicLossScaleUpdateCell")
    if kind not in ("DynamicLossScaleUpdateCell", "FixedLossScaleUpdateCell"):
        raise ConfigError(f"{where}: type must be DynamicLossScaleUpdateCell or FixedLossScaleUpdateCell, got {kind!r}")
    if kind == "FixedLossScaleUpdateCell" and set(fields) - {"loss_scale_value"}:
        raise ConfigError(f"{where}: FixedLossScaleUpdateCell takes only loss_scale_value")
    try:
        return LossScaleConfig(dynamic=kind == "DynamicLossScaleUpdateCell", **fields)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _section(cls, value, where: str, ignored: frozenset = frozenset()):
    data = {k: v for k, v in _mapping(value, where).items() if k not in ignored}
    return strict_from_dict(cls, data, where)


def _optimizer(value, kwargs, where):
    kwargs["optimizer"] = _section(OptimizerConfig, value, where)


def _lr_schedule(value, kwargs, where):
    kwargs["lr_schedule"] = _section(LrScheduleConfig, value, where)


def _dataset(value, kwargs, where):
    names = {"data_loader": "data_loader", "input_columns": "input_columns",
             "num_parallel_workers": "num_parallel_workers", "prefetch_size": "prefetch_size"}
    picked = _pick(value, where, names, keys.DATASET, kwargs)
    _check_columns(picked.pop("input_columns", None), f"{where}.input_columns")
    loader = picked.pop("data_loader", {})
    kwargs.update(picked)
    loader_type = _mapping(loader, f"{where}.data_loader").get("type", "MindDataset")
    if loader_type != "MindDataset":
        raise ConfigError(f"{where}.data_loader: type must be MindDataset (write it with `telechat-ms preprocess`), "
                          f"got {loader_type!r}")
    loader = {k: v for k, v in loader.items() if k != "type"}
    kwargs.update(_pick(loader, f"{where}.data_loader", {"dataset_dir": "dataset_dir", "shuffle": "shuffle"},
                        keys.LOADER, kwargs))


def _check_columns(columns, where: str) -> None:
    """Both engines feed every column preprocess writes: MindFormers passes exactly input_columns to the model, so a
    list without position_ids / document_ids would let packed samples attend to each other."""
    if columns is None:
        return
    if not isinstance(columns, (list, tuple)) or not all(isinstance(c, str) for c in columns):
        raise ConfigError(f"{where}: expected a list of column names, got {columns!r}")
    unknown = [c for c in columns if c not in DATASET_COLUMNS]
    missing = [c for c in DATASET_COLUMNS if c not in columns]
    if unknown or missing or len(set(columns)) != len(columns):
        raise ConfigError(f"{where}: must name the columns `telechat-ms preprocess` writes, {list(DATASET_COLUMNS)} "
                          f"(got {list(columns)}; missing {missing}, unknown {unknown}); without position_ids and "
                          "document_ids packed samples would attend to each other")


def _task(value, kwargs, where):
    kind = _mapping(value, where).get("type", DATASET_TASKS[0])
    if kind not in DATASET_TASKS:
        raise ConfigError(f"{where}: type must be {DATASET_TASKS[0]} (the MindRecord rows of `telechat-ms "
                          f"preprocess`), got {kind!r}")
    for key in value:
        if key not in ("type", "dataset_config"):
            raise ConfigError(f"{where}: unknown key '{key}' (accepted: type, dataset_config = train_dataset)")


def _tensorboard(value, kwargs, where):
    if value is not None:
        kwargs.update(_pick(value, where, {"tensorboard_dir": "tensorboard_dir"}, keys.TENSORBOARD, kwargs))


def _parallel(value, kwargs, where):
    kwargs["parallel_settings"] = keys.check_parallel_section(_mapping(value, where), where)


def _callbacks(value, kwargs, where):
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of {{type: ...}} callbacks")
    found = kwargs.setdefault("mindformers_only", {})
    for i, item in enumerate(value):
        kind = _mapping(item, f"{where}[{i}]").get("type")
        if kind == "CheckpointMonitor":
            checkpoint = keys.check_section(keys.CHECKPOINT, item, f"{where}[{i}]", "CheckpointMonitor", found)
            kwargs["checkpoint"] = _section(CheckpointConfig, checkpoint, f"{where}[{i}]")
        elif kind == "MFLossMonitor":
            for key in item:
                if key not in ("type", "per_print_times"):
                    raise ConfigError(f"{where}[{i}]: MFLossMonitor: unknown key '{key}' (accepted: per_print_times)")
            if "per_print_times" in item:
                kwargs["log_interval"] = item["per_print_times"]
        elif kind in keys.CALLBACKS_MF_ONLY:
            found[f"callbacks.{kind}"] = keys.CALLBACKS_MF_ONLY[kind]
        else:
            raise ConfigError(f"{where}[{i}]: unknown callback type {kind!r} (accepted: CheckpointMonitor, "
                              f"MFLossMonitor, {', '.join(sorted(keys.CALLBACKS_MF_ONLY))})")


_SECTIONS = {"context": _context, "runner_config": _runner, "runner_wrapper": _wrapper, "optimizer": _optimizer,
             "lr_schedule": _lr_schedule, "train_dataset": _dataset, "callbacks": _callbacks,
             "train_dataset_task": _task, "parallel": _parallel, "tensorboard": _tensorboard}
