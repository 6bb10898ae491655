"""The native training loop behind `telechat-ms train` (docs/training.md explains why it is not MindFormers' Trainer).

    config, model_overrides, parallel = load_run(path)
    trainer = Trainer(config, model_overrides, parallel)
    result = trainer.train()          # result.losses, result.checkpoint (a from_pretrained-loadable directory)

Per optimizer step: rows of the step (train/batches.py) -> forward/backward with the loss scale (per micro batch)
-> all-reduce (data parallel) -> overflow check -> clip -> AdamW, skipped on overflow (train/step.py) ->
loss-scale update (train/amp.py) -> log line (train/logs.py) -> every N steps an atomic checkpoint
(train/checkpoint.py). Everything that decides the next step (weights, moments, step, loss scale; the data
order is a function of the step) is in the checkpoint, so a resumed run repeats the same losses.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

from ..config.base import ConfigError
from ..config.model import TelechatConfig
from ..config.train_keys import check_moe_config
from ..io.checkpoint import MODEL_CONFIG
from . import checkpoint as ckpt
from .amp import LossScaler, apply_amp, model_config_for_amp, resolve_amp_level
from .batches import BatchSchedule, check_columns, iterate_batches
from .layout import apply_layout
from .logs import StepLogger, flops_per_token, peak_tflops
from .optim import AdamW, learning_rate, warmup_steps
from .step import build_steps

# model_config keys that configure MindFormers' registry or our AMP, not the architecture
_NOT_ARCHITECTURE = frozenset({"arch", "auto_register", "amp_level"})


def load_run(yaml_path: str, with_run: bool = False):
    """(TrainConfig, model overrides, parallel_config dict) of a run yaml, read once (bases resolved); with
    `with_run` also the resolved yaml mapping.

    Model overrides = the keys of `model.model_config` without MindFormers run keys (each checked:
    config/train_keys.py MODEL_RUN): the architecture for run_mode train, overrides of the loaded model
    directory's config for finetune and resume. The layout sections are checked by ParallelConfig (refused
    fields fail here, for both engines)."""
    from ..config.parallel import ParallelConfig   # pylint: disable=import-outside-toplevel
    from ..config.train import TrainConfig   # pylint: disable=import-outside-toplevel
    from ..config.train_keys import MODEL_RUN, check_model_run_keys   # pylint: disable=import-outside-toplevel
    from ..parallel.run_yaml import load_run_yaml   # pylint: disable=import-outside-toplevel
    run = load_run_yaml(yaml_path)
    model = run.get("model")
    section = model.get("model_config") if isinstance(model, dict) else None
    if section is not None and not isinstance(section, dict):
        raise ConfigError(f"{yaml_path}: model.model_config must be a mapping")
    _check_model_section(model, yaml_path)
    config = TrainConfig.from_dict(run, source=yaml_path)
    # LoRA: pet_config is read by TrainConfig (config.lora, telechat_ms/lora/config.py), not refused here
    run_keys = {k: v for k, v in (section or {}).items() if k in MODEL_RUN and k != "pet_config"}
    check_model_run_keys(run_keys, f"{yaml_path}: model.model_config", config.device_target)
    ParallelConfig.from_run_config(run, yaml_path)
    overrides = {k: v for k, v in (section or {}).items() if k not in MODEL_RUN and k not in _NOT_ARCHITECTURE}
    parallel = run.get("parallel_config")
    parallel = dict(parallel) if isinstance(parallel, dict) else {}
    return (config, overrides, parallel, run) if with_run else (config, overrides, parallel)


def _check_model_section(model, source: str) -> None:
    """model: {model_config, arch: {type: TelechatForCausalLM}} (MindFormers builds arch.type)."""
    if model is None:
        return
    if not isinstance(model, dict):
        raise ConfigError(f"{source}: model must be a mapping")
    for key in model:
        if key not in ("model_config", "arch"):
            raise ConfigError(f"{source}: model: unknown key '{key}' (accepted: model_config, arch)")
    arch = model.get("arch") or {}
    kind = arch.get("type", "TelechatForCausalLM") if isinstance(arch, dict) else arch
    if kind != "TelechatForCausalLM" or set(arch) - {"type", "auto_register"}:
        raise ConfigError(f"{source}: model.arch must be {{type: TelechatForCausalLM}} (+ auto_register), got {arch!r}")


def resolve_model_config(config, model_overrides: dict, row_length: int, base_dir: str | None = None):
    """(TelechatConfig, model directory or None): the architecture of `base_dir` (resume) or load_checkpoint's
    model_config.yaml with the yaml's model_config keys on top, else the yaml's alone; seq_length follows the
    dataset rows (row length - 1) unless the yaml sets it, and then the rows must match."""
    base_dir = base_dir or config.load_checkpoint or None
    model_dir = None
    if base_dir and os.path.isfile(os.path.join(base_dir, MODEL_CONFIG)):
        base = TelechatConfig.from_yaml(os.path.join(base_dir, MODEL_CONFIG)).to_dict()
        source = f"{base_dir}/{MODEL_CONFIG} + {config.source}: model.model_config"
        model, model_dir = TelechatConfig.from_dict({**base, **model_overrides}, source), base_dir
    elif config.run_mode == "finetune" and not config.load_checkpoint:
        raise ConfigError(f"{config.source}: run_mode finetune needs load_checkpoint (a directory written "
                          "by convert/hf2ms.py or a training checkpoint); use run_mode train for random weights")
    elif base_dir and os.path.isdir(base_dir):      # neither a model nor a step directory: never ignore it
        raise ConfigError(f"load_checkpoint: {base_dir}: no {MODEL_CONFIG} in this directory (expected a "
                          "converted model directory or a step_* training checkpoint)")
    elif not model_overrides:
        raise ConfigError(f"{config.source}: no model.model_config and no model directory in load_checkpoint")
    else:
        model = TelechatConfig.from_dict(model_overrides, f"{config.source}: model.model_config")
    if "seq_length" not in model_overrides:      # the rows decide the training length
        model = dataclasses.replace(model, seq_length=row_length - 1)
    if row_length != model.seq_length + 1:
        raise ConfigError(f"{config.dataset_dir}: rows hold {row_length} tokens = seq_length "
                          f"{row_length - 1} + 1, but the model's seq_length is {model.seq_length}; set "
                          f"model.model_config.seq_length: {row_length - 1} or re-run preprocess")
    return model, model_dir


def load_weights_file(network, path: str) -> None:
    """A single .ckpt / .safetensors of model weights (names as ours = the official MindSpore port's)."""
    import mindspore as ms   # pylint: disable=import-outside-toplevel
    try:
        params = ms.load_checkpoint(path, format="safetensors" if path.endswith(".safetensors") else "ckpt")
    except (RuntimeError, ValueError, OSError) as exc:
        raise ConfigError(f"{path}: cannot read model weights ({_first_line(exc)})") from None
    ckpt.check_shapes(path, network.parameters_dict(), params)
    missing, unused = ms.load_param_into_net(network, params, strict_load=True)
    if missing or unused:
        raise ConfigError(f"{path}: weights do not match the model: {len(missing)} missing (e.g. {missing[:2]}), "
                          f"{len(unused)} unexpected (e.g. {unused[:2]})")


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss at loss scale 1, too many skipped steps): the CLI prints one line."""


@dataclass
class TrainResult:
    start_step: int
    end_step: int
    losses: list = field(default_factory=list)      # one per step of this run, in order
    records: list = field(default_factory=list)
    checkpoint: str | None = None                    # newest saved step directory


class Trainer:
    def __init__(self, config, model_overrides: dict | None = None, parallel: dict | None = None, printer=print):
        self.config = config
        self.printer = printer
        self.model_overrides = dict(model_overrides or {})
        self._check_parallel(parallel or {})
        self._check_engine_only()
        self._check_paths()
        self.rank, self.data_parallel = self._init_context()
        self.files, rows, row_length = self._dataset()
        self.resume_from = ckpt.resolve_resume(config.resume_training, config.load_checkpoint, config.output_dir) \
            if config.resume_training else None
        self.model_config, self.network, self.amp_level = self._build_network(row_length)
        self.optimizer = AdamW(self.network.trainable_params(), config.optimizer)
        accumulation = config.gradient_accumulation_steps
        max_norm = config.max_grad_norm if config.use_clip_grad else None
        self.run_step = build_steps(self.network, self.optimizer, max_norm, accumulation, self.data_parallel,
                                    documents=True)
        self.schedule = BatchSchedule(rows, config.batch_size, accumulation, self.data_parallel, self.rank,
                                      config.seed, config.shuffle)
        self.schedule.check(config.dataset_dir)
        # the lr schedule spans the whole run; stop_step only ends this process early (a sliced job resumed
        # later repeats the lr of the uninterrupted run)
        self.total_steps = config.epochs * self.schedule.steps_per_epoch
        learning_rate(config.lr_schedule, 0, self.total_steps)      # warmup > total_steps fails here, not later
        self.end_step = min(self.total_steps, config.stop_step) if config.stop_step > 0 else self.total_steps
        self.scaler = LossScaler.from_config(config.loss_scale, self.amp_level, config.device_target)
        self.start_step = self._restore() if self.resume_from else 0
        if config.overwrite_output_dir and self.rank == 0:
            self._clear_output_dir()
        tokens = config.batch_size * accumulation * (row_length - 1)
        self.logger = StepLogger(config.output_dir if self.rank == 0 else None, self.end_step, tokens,
                                 flops_per_token(self.model_config, row_length - 1),
                                 peak_tflops(config.device_target, config.device_peak_tflops), printer,
                                 append=self.resume_from is not None,
                                 tensorboard_dir=config.tensorboard_dir if self.rank == 0 else None)

    # ----- setup -----
    def _checkpoint_root(self) -> str:
        return os.path.join(self.config.output_dir, "checkpoint")

    def _check_paths(self) -> None:
        """A missing load_checkpoint names itself; a fresh run never writes into an earlier run's checkpoints
        (its keep-K rotation would delete them, or its own steps, and `latest` would mix the two runs)."""
        load, root = self.config.load_checkpoint, self._checkpoint_root()
        if load and not os.path.exists(load):
            raise ConfigError(f"load_checkpoint: {load}: no such file or directory")
        steps = ckpt.step_dirs(root)
        if not steps or self.config.resume_training:
            return
        if self.config.overwrite_output_dir:
            inside = os.path.realpath(load) + os.sep if load else ""
            if inside.startswith(os.path.realpath(root) + os.sep):
                raise ConfigError(f"load_checkpoint {load} lies in {root}, which overwrite_output_dir would "
                                  "delete; copy it elsewhere first")
            return
        newest = os.path.basename(steps[-1][1])
        raise ConfigError(f"{root} already holds checkpoints of an earlier run ({len(steps)} step directories, "
                          f"newest {newest}); pass --resume_training to continue it, another --output_dir for a "
                          "new run, or --overwrite_output_dir to delete them and start over")

    def _clear_output_dir(self) -> None:
        root = self._checkpoint_root()
        count = len(ckpt.step_dirs(root))
        if count:
            ckpt.clear(root)
            self.printer(f"overwrite_output_dir: deleted {count} step directories of an earlier run in {root}")

    def _check_parallel(self, parallel: dict) -> None:
        sharded = {k: v for k, v in parallel.items()
                   if k in ("model_parallel", "pipeline_stage", "expert_parallel", "context_parallel")
                   and isinstance(v, int) and v > 1}
        if self.config.use_parallel and sharded:
            raise ConfigError(f"{self.config.source}: the native loop trains data parallel only, but parallel_config "
                              f"sets {sharded}; run it through MindFormers (--engine mindformers) on Ascend")

    def _check_engine_only(self) -> None:
        """Settings only MindFormers' Trainer implements: refused in one line naming each (config/train_keys.py)."""
        self.config.check_layout_enabled()
        found = dict(self.config.mindformers_only)
        if self.config.use_parallel:
            found.update(self.config.parallel_settings)
        if found:
            listed = "; ".join(f"{key}: {why}" for key, why in found.items())
            raise ConfigError(f"{self.config.source}: honoured only by --engine mindformers, not by the native loop: "
                              f"{listed}")

    def _apply_context(self, ms) -> None:
        """The yaml's context keys, as MindFormers' build_context applies them (Ascend-only ones not on CPU)."""
        from ..config.train_keys import CONTEXT_NOT_ON_CPU   # pylint: disable=import-outside-toplevel
        for key, value in self.config.context.items():
            if key in CONTEXT_NOT_ON_CPU and self.config.device_target == "CPU":
                self.printer(f"context.{key}: not applied on CPU (an Ascend setting)")
            elif not (key == "device_id" and self.config.use_parallel):   # msrun gives each rank its device
                ms.set_context(**{key: value})

    def _init_context(self) -> tuple[int, int]:
        from ..runtime import host_dispatch_for   # pylint: disable=import-outside-toplevel
        host_dispatch_for(self.config.device_target)    # before the first MindSpore op (telechat_ms/runtime.py)
        import mindspore as ms   # pylint: disable=import-outside-toplevel
        ms.set_context(mode=ms.GRAPH_MODE if self.config.mode == 0 else ms.PYNATIVE_MODE)
        self._apply_context(ms)
        if ms.get_context("device_target") != self.config.device_target:
            ms.set_device(self.config.device_target)
        rank, size = 0, 1
        if self.config.use_parallel:
            from mindspore.communication import get_group_size, get_rank, init   # pylint: disable=import-outside-toplevel
            try:
                init()
            except RuntimeError as exc:     # not started by msrun: no cluster to join
                first = next((line for line in str(exc).splitlines() if line.strip()), "")
                raise ConfigError(f"use_parallel: cannot join a distributed job ({first.strip()}); start the "
                                  "workers with scripts/msrun_train.sh") from None
            rank, size = get_rank(), get_group_size()
            ms.reset_auto_parallel_context()
            ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                         device_num=size)
        ms.set_seed(self.config.seed)
        return rank, size

    def _dataset(self) -> tuple[list[str], int, int]:
        from ..data.dataset import mindrecord_files, row_length   # pylint: disable=import-outside-toplevel
        import mindspore.dataset as ds   # pylint: disable=import-outside-toplevel
        path = self.config.dataset_dir
        if not path:
            raise ConfigError(f"{self.config.source}: train_dataset.data_loader.dataset_dir is empty "
                              "(set it or pass --train_dataset)")
        if path.endswith(".db") and os.path.isfile(path[:-3]):
            raise ConfigError(f"{path}: this is the index file of a MindRecord; pass {path[:-3]} (without .db)")
        files = mindrecord_files(path)
        # MindSpore raises RuntimeErrors from deep inside its reader for anything that is not a MindRecord
        for file in files:
            if not os.path.isfile(file + ".db"):
                raise ConfigError(f"{file}: not a MindRecord file (no {os.path.basename(file)}.db index beside it); "
                                  "write the dataset with `telechat-ms preprocess`")
        check_columns(files)
        if self.config.prefetch_size is not None:
            ds.config.set_prefetch_size(self.config.prefetch_size)
        try:
            length = row_length(path)
            rows = ds.MindDataset(files, columns_list=["input_ids"], shuffle=False).get_dataset_size()
        except (RuntimeError, ValueError, OSError) as exc:
            raise ConfigError(f"{path}: not a MindRecord dataset written by `telechat-ms preprocess` "
                              f"({_first_line(exc)})") from None
        return files, rows, length

    def _build_network(self, row_length: int):
        from ..model import Kernels, TelechatForCausalLM   # pylint: disable=import-outside-toplevel
        config, model_dir = resolve_model_config(self.config, self.model_overrides, row_length, self.resume_from)
        check_moe_config(self.config.moe_config, config, f"{self.config.source}: moe_config")
        amp_level = resolve_amp_level(self.config.amp_level, config)
        # checkpoints keep the compute dtype the user's config had: inference picks its own precision
        self.export_config = dataclasses.replace(config, param_dtype="float32")
        config = model_config_for_amp(config, amp_level, self.config.device_target)
        kernels = Kernels.for_device(self.config.device_target)
        self.side_dirs = [d for d in (model_dir, self.config.load_checkpoint) if d and os.path.isdir(d)]
        if self.config.lora is not None:     # LoRA: frozen base + adapters, only adapters train (telechat_ms/lora)
            from ..lora import training as lora_training   # pylint: disable=import-outside-toplevel
            network, self.lora_base = lora_training.build_network(self.config, config, kernels, self.resume_from)
        elif model_dir and not self.resume_from:
            network = TelechatForCausalLM.from_pretrained(model_dir, kernels, **dataclasses.asdict(config))
        else:
            network = TelechatForCausalLM(config, kernels)
            weights = self.config.load_checkpoint
            if weights and os.path.isfile(weights) and not self.resume_from:
                load_weights_file(network, weights)
        if self.config.parallel is not None:     # recompute (memory) and all-reduce fusion groups (speed)
            apply_layout(network, self.config.parallel, sharded=False, fused=self.data_parallel > 1)
        return config, apply_amp(network, amp_level, self.config.device_target), amp_level

    def _restore(self) -> int:
        if self.config.lora is not None:     # LoRA: a step holds the adapter, not the model weights
            from ..lora import training as lora_training   # pylint: disable=import-outside-toplevel
            state = lora_training.restore(self.resume_from, self.network, self.optimizer)
        else:
            state = ckpt.restore(self.resume_from, self.network, self.optimizer)
        saved = state.get("schedule", {})
        mine = self._schedule_state()
        # keys a checkpoint of an older version lacks cannot be compared
        diffs = [f"{key}: checkpoint {saved[key]!r}, this run {value!r}" for key, value in mine.items()
                 if key in saved and saved[key] != value]
        if diffs:
            raise ConfigError(f"{self.resume_from}: this run's schedule differs from the checkpoint's "
                              f"({'; '.join(diffs)}); resume needs the same dataset, seed, shuffle, global batch, "
                              "epochs and lr_schedule (total_steps -1 spans epochs x steps per epoch). Start a new "
                              "run in another output_dir to change them")
        self.scaler.load_state(state["loss_scale"])
        self.printer(f"resumed from {self.resume_from} at step {state['step']} (loss scale {self.scaler.value:g})")
        return int(state["step"])

    def _schedule_state(self) -> dict:
        """What fixes the rows and the lr of every step (saved in each checkpoint, compared on resume)."""
        s, lr = self.schedule, self.config.lr_schedule
        total = lr.total_steps if lr.total_steps > 0 else self.total_steps
        return {"num_rows": s.num_rows, "global_batch": s.global_batch, "seed": s.seed, "shuffle": s.shuffle,
                "epochs": self.config.epochs, "total_steps": total, "warmup_steps": warmup_steps(lr, total),
                "lr_schedule": lr.type, "learning_rate": lr.learning_rate, "lr_end": lr.lr_end,
                "warmup_lr_init": lr.warmup_lr_init, "num_cycles": lr.num_cycles}

    # ----- loop -----
    def train(self, max_steps: int | None = None) -> TrainResult:
        """Run to the end (or `max_steps` more steps: the loop just stops, as if killed, without saving)."""
        from mindspore import Tensor   # pylint: disable=import-outside-toplevel
        end = self.end_step if max_steps is None else min(self.end_step, self.start_step + max_steps)
        result = TrainResult(self.start_step, end)
        if self.start_step >= self.end_step:
            self.printer(f"nothing to do: resumed at step {self.start_step}, at or past the end of this run "
                         f"({self._end_reason()}); the checkpoint is unchanged")
            result.checkpoint = self.resume_from
            return result
        self.printer(self.describe())
        self.logger.start()
        skipped = 0
        for step, batches in iterate_batches(self.files, self.schedule, self.start_step, end,
                                             self.config.num_parallel_workers):
            lr = learning_rate(self.config.lr_schedule, step, self.total_steps)
            scale = self.scaler.value
            loss, finite, norm = self.run_step([tuple(Tensor(c) for c in batch) for batch in batches], scale, lr)
            self.scaler.update(finite)
            skipped = 0 if finite else skipped + 1
            done = step + 1
            show = done % self.config.log_interval == 0 or done == end
            record = self.logger.log(done, loss, lr, scale, norm if finite else float("nan"), finite,
                                     self.scaler.value, show)
            result.losses.append(loss)
            result.records.append(record)
            self._check_progress(done, loss, scale, skipped)
            if done % self.config.checkpoint.save_checkpoint_steps == 0 or done == self.end_step:
                if math.isfinite(loss):
                    result.checkpoint = self.save(done)
                else:     # the weights or this step's rows are non-finite: keep the last good checkpoint
                    self.printer(f"not saving step {done}: its loss is {loss}")
        self.logger.flush()
        self.start_step = end
        return result

    def _end_reason(self) -> str:
        spe = self.schedule.steps_per_epoch
        if 0 < self.config.stop_step < self.total_steps:
            return f"stop_step {self.config.stop_step}"
        return f"epochs {self.config.epochs} x {spe} steps per epoch = {self.total_steps} steps"

    def _check_progress(self, done: int, loss: float, scale: float, skipped: int) -> None:
        """Stop a run that cannot recover: a non-finite loss when the loss scale cannot be lowered (it only
        scales gradients, so it never cures a non-finite forward), or too many skipped steps in a row."""
        if not math.isfinite(loss) and (scale <= 1 or not self.scaler.dynamic):
            raise TrainingError(f"step {done}: loss {loss} at loss scale {scale:g} (nothing left to lower): the "
                                "weights or this step's data hold non-finite values, or the run diverged; "
                                f"stopped without saving (last checkpoint: {self._last_checkpoint()})")
        limit = self.config.max_consecutive_skips
        if skipped >= limit:
            raise TrainingError(f"step {done}: {skipped} consecutive steps skipped for non-finite gradients (loss "
                                f"{loss}, loss scale now {self.scaler.value:g}); stopped at max_consecutive_skips "
                                f"{limit} (last checkpoint: {self._last_checkpoint()})")

    def _last_checkpoint(self) -> str:
        return ckpt.latest(self._checkpoint_root()) or "none"

    def save(self, step: int) -> str | None:
        """Rank 0 writes (data-parallel ranks hold identical state)."""
        if self.rank != 0:
            return None
        root = os.path.join(self.config.output_dir, "checkpoint")
        state = {"loss_scale": self.scaler.state(), "schedule": self._schedule_state(), "amp_level": self.amp_level}
        write_model = None
        if self.config.lora is not None:     # LoRA: the adapter in the PEFT format instead of the model weights
            from ..lora import training as lora_training   # pylint: disable=import-outside-toplevel
            write_model = lora_training.writer(self.network, self.config.lora, self.lora_base)
        path = ckpt.save(root, step, self.network.parameters_dict(), self.optimizer.state(), state,
                         self.export_config, self.config.checkpoint.keep_checkpoint_max, self.side_dirs, write_model)
        self.printer(f"saved checkpoint {path}")
        return path

    def describe(self) -> str:
        c, s = self.config, self.schedule
        return (f"training {self.model_config.num_parameters() / 1e6:.2f}M params | amp {self.amp_level} "
                f"(compute {self.model_config.compute_dtype}) | steps {self.start_step}->{self.end_step} | "
                f"global batch {s.global_batch} = {c.batch_size} x accum {c.gradient_accumulation_steps} x "
                f"dp {self.data_parallel} | {s.num_rows} rows, {s.steps_per_epoch} steps/epoch | "
                f"lr schedule over {self._schedule_state()['total_steps']} steps | "
                f"loss scale {self.scaler.value:g}{' dynamic' if self.scaler.dynamic else ''}" + self._lora_note())

    def _lora_note(self) -> str:
        if self.config.lora is None:
            return ""
        from ..lora import training as lora_training   # pylint: disable=import-outside-toplevel
        return " | " + lora_training.describe(self.network)
