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
import os
from dataclasses import dataclass, field

from ..config.base import ConfigError
from ..config.model import TelechatConfig
from ..io.checkpoint import MODEL_CONFIG
from . import checkpoint as ckpt
from .amp import LossScaler, apply_amp, model_config_for_amp, resolve_amp_level
from .batches import BatchSchedule, iterate_batches
from .logs import StepLogger, flops_per_token, peak_tflops
from .optim import AdamW, learning_rate
from .step import build_steps

# model_config keys that configure MindFormers' registry or our AMP, not the architecture
_NOT_ARCHITECTURE = frozenset({"arch", "auto_register", "amp_level"})


def load_run(yaml_path: str):
    """(TrainConfig, model overrides, parallel_config dict) of a run yaml, read once (bases resolved).

    Model overrides = the keys of `model.model_config` without registry/run-only keys: the architecture for
    run_mode train, overrides of the loaded model directory's config for finetune and resume."""
    from ..config.train import TrainConfig   # pylint: disable=import-outside-toplevel
    from ..parallel.run_yaml import MODEL_CONFIG_RUN_KEYS, load_run_yaml   # pylint: disable=import-outside-toplevel
    run = load_run_yaml(yaml_path)
    model = run.get("model")
    section = model.get("model_config") if isinstance(model, dict) else None
    if section is not None and not isinstance(section, dict):
        raise ConfigError(f"{yaml_path}: model.model_config must be a mapping")
    dropped = MODEL_CONFIG_RUN_KEYS | _NOT_ARCHITECTURE
    overrides = {k: v for k, v in (section or {}).items() if k not in dropped}
    parallel = run.get("parallel_config")
    return TrainConfig.from_dict(run, source=yaml_path), overrides, dict(parallel) if isinstance(parallel, dict) else {}


def load_weights_file(network, path: str) -> None:
    """A single .ckpt / .safetensors of model weights (names as ours = the official MindSpore port's)."""
    import mindspore as ms   # pylint: disable=import-outside-toplevel
    params = ms.load_checkpoint(path, format="safetensors" if path.endswith(".safetensors") else "ckpt")
    missing, unused = ms.load_param_into_net(network, params, strict_load=True)
    if missing or unused:
        raise ConfigError(f"{path}: weights do not match the model: {len(missing)} missing (e.g. {missing[:2]}), "
                          f"{len(unused)} unexpected (e.g. {unused[:2]})")


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
        self.end_step = config.epochs * self.schedule.steps_per_epoch
        if config.stop_step > 0:
            self.end_step = min(self.end_step, config.stop_step)
        self.scaler = LossScaler.from_config(config.loss_scale, self.amp_level, config.device_target)
        self.start_step = self._restore() if self.resume_from else 0
        tokens = config.batch_size * accumulation * (row_length - 1)
        self.logger = StepLogger(config.output_dir if self.rank == 0 else None, self.end_step, tokens,
                                 flops_per_token(self.model_config, row_length - 1),
                                 peak_tflops(config.device_target, config.device_peak_tflops), printer,
                                 append=self.resume_from is not None)

    # ----- setup -----
    def _check_parallel(self, parallel: dict) -> None:
        sharded = {k: v for k, v in parallel.items()
                   if k in ("model_parallel", "pipeline_stage", "expert_parallel", "context_parallel")
                   and isinstance(v, int) and v > 1}
        if self.config.use_parallel and sharded:
            raise ConfigError(f"{self.config.source}: the native loop trains data parallel only, but parallel_config "
                              f"sets {sharded}; run it through MindFormers (--engine mindformers) on Ascend")

    def _init_context(self) -> tuple[int, int]:
        import mindspore as ms   # pylint: disable=import-outside-toplevel
        ms.set_context(mode=ms.GRAPH_MODE if self.config.mode == 0 else ms.PYNATIVE_MODE)
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
        if not self.config.dataset_dir:
            raise ConfigError(f"{self.config.source}: train_dataset.data_loader.dataset_dir is empty "
                              "(set it or pass --train_dataset)")
        files = mindrecord_files(self.config.dataset_dir)
        length = row_length(self.config.dataset_dir)
        rows = ds.MindDataset(files, columns_list=["input_ids"], shuffle=False).get_dataset_size()
        return files, rows, length

    def _model_config(self) -> tuple[TelechatConfig, str | None]:
        """Architecture from the checkpoint directory (resume / finetune) with the yaml's keys on top."""
        base_dir = self.resume_from or self.config.load_checkpoint or None
        if base_dir and os.path.isfile(os.path.join(base_dir, MODEL_CONFIG)):
            base = TelechatConfig.from_yaml(os.path.join(base_dir, MODEL_CONFIG)).to_dict()
            source = f"{base_dir}/{MODEL_CONFIG} + {self.config.source}: model.model_config"
            return TelechatConfig.from_dict({**base, **self.model_overrides}, source), base_dir
        if self.config.run_mode == "finetune" and not self.config.load_checkpoint:
            raise ConfigError(f"{self.config.source}: run_mode finetune needs load_checkpoint (a directory written "
                              "by convert/hf2ms.py or a training checkpoint); use run_mode train for random weights")
        if not self.model_overrides:
            raise ConfigError(f"{self.config.source}: no model.model_config and no model directory in load_checkpoint")
        return TelechatConfig.from_dict(self.model_overrides, f"{self.config.source}: model.model_config"), None

    def _build_network(self, row_length: int):
        from ..model import Kernels, TelechatForCausalLM   # pylint: disable=import-outside-toplevel
        config, model_dir = self._model_config()
        if "seq_length" not in self.model_overrides:      # the rows decide the training length
            config = dataclasses.replace(config, seq_length=row_length - 1)
        if row_length != config.seq_length + 1:
            raise ConfigError(f"{self.config.dataset_dir}: rows hold {row_length} tokens = seq_length "
                              f"{row_length - 1} + 1, but the model's seq_length is {config.seq_length}; set "
                              f"model.model_config.seq_length: {row_length - 1} or re-run preprocess")
        amp_level = resolve_amp_level(self.config.amp_level, config)
        # checkpoints keep the compute dtype the user's config had: inference picks its own precision
        self.export_config = dataclasses.replace(config, param_dtype="float32")
        config = model_config_for_amp(config, amp_level, self.config.device_target)
        kernels = Kernels.for_device(self.config.device_target)
        self.side_dirs = [d for d in (model_dir, self.config.load_checkpoint) if d and os.path.isdir(d)]
        if model_dir and not self.resume_from:
            network = TelechatForCausalLM.from_pretrained(model_dir, kernels, **dataclasses.asdict(config))
        else:
            network = TelechatForCausalLM(config, kernels)
            weights = self.config.load_checkpoint
            if weights and os.path.isfile(weights) and not self.resume_from:
                load_weights_file(network, weights)
        return config, apply_amp(network, amp_level, self.config.device_target), amp_level

    def _restore(self) -> int:
        state = ckpt.restore(self.resume_from, self.network, self.optimizer)
        saved = state.get("schedule", {})
        mine = self._schedule_state()
        if saved != mine:
            raise ConfigError(f"{self.resume_from}: saved with data schedule {saved}, this run has {mine}; "
                              "resume needs the same dataset, seed, shuffle and global batch")
        self.scaler.load_state(state["loss_scale"])
        self.printer(f"resumed from {self.resume_from} at step {state['step']} (loss scale {self.scaler.value:g})")
        return int(state["step"])

    def _schedule_state(self) -> dict:
        s = self.schedule
        return {"num_rows": s.num_rows, "global_batch": s.global_batch, "seed": s.seed, "shuffle": s.shuffle}

    # ----- loop -----
    def train(self, max_steps: int | None = None) -> TrainResult:
        """Run to the end (or `max_steps` more steps: the loop just stops, as if killed, without saving)."""
        from mindspore import Tensor   # pylint: disable=import-outside-toplevel
        end = self.end_step if max_steps is None else min(self.end_step, self.start_step + max_steps)
        result = TrainResult(self.start_step, end)
        self.printer(self.describe())
        self.logger.start()
        for step, batches in iterate_batches(self.files, self.schedule, self.start_step, end):
            lr = learning_rate(self.config.lr_schedule, step, self.end_step)
            scale = self.scaler.value
            loss, finite, norm = self.run_step([tuple(Tensor(c) for c in batch) for batch in batches], scale, lr)
            self.scaler.update(finite)
            done = step + 1
            show = done % self.config.log_interval == 0 or done == end
            record = self.logger.log(done, loss, lr, scale, norm if finite else float("nan"), finite,
                                     self.scaler.value, show)
            result.losses.append(loss)
            result.records.append(record)
            if done % self.config.checkpoint.save_checkpoint_steps == 0 or done == self.end_step:
                result.checkpoint = self.save(done)
        self.start_step = end
        return result

    def save(self, step: int) -> str | None:
        """Rank 0 writes (data-parallel ranks hold identical state)."""
        if self.rank != 0:
            return None
        root = os.path.join(self.config.output_dir, "checkpoint")
        state = {"loss_scale": self.scaler.state(), "schedule": self._schedule_state(), "amp_level": self.amp_level}
        path = ckpt.save(root, step, self.network.parameters_dict(), self.optimizer.state(), state,
                         self.export_config, self.config.checkpoint.keep_checkpoint_max, self.side_dirs)
        self.printer(f"saved checkpoint {path}")
        return path

    def describe(self) -> str:
        c, s = self.config, self.schedule
        return (f"training {self.model_config.num_parameters() / 1e6:.2f}M params | amp {self.amp_level} "
                f"(compute {self.model_config.compute_dtype}) | steps {self.start_step}->{self.end_step} | "
                f"global batch {s.global_batch} = {c.batch_size} x accum {c.gradient_accumulation_steps} x "
                f"dp {self.data_parallel} | {s.num_rows} rows, {s.steps_per_epoch} steps/epoch | "
                f"loss scale {self.scaler.value:g}{' dynamic' if self.scaler.dynamic else ''}")
