"""Per-step training log: a text line on stdout, a JSON record in <output_dir>/train_log.jsonl and, when the yaml
sets `tensorboard: {tensorboard_dir: DIR}`, TensorBoard scalars in DIR/rank_0 (rank 0 only, as MindFormers).

    step 12/300 | loss 4.812345 | lr 9.98e-04 | scale 65536 | grad_norm 1.234 | tokens/s/device 8123 | mfu 0.41% |
        16.1 ms | eta 0:04:38                                                              (one line)

MFU = tokens/s/device x training FLOPs per token / peak FLOP/s of one device. FLOPs per token follow the usual
dense estimate 6 N + 12 L S H (N = active matmul parameters, i.e. without the embedding table, L layers,
S sequence length, H hidden size: the attention score and context matmuls). Peak values are nominal (below);
set `device_peak_tflops` in the yaml for your part.

ETA = remaining steps x the mean step time of this process so far, without its first step (which includes the
graph compile) once there are others.
"""
from __future__ import annotations

import json
import math
import os
import time

# Nominal dense 16-bit peak per device (TFLOP/s). Ascend 910B (Atlas 800T A2): ~313 fp16/bf16.
PEAK_TFLOPS = {"Ascend": 313.0, "GPU": 312.0}
CPU_FLOP_PER_CYCLE = 32          # AVX2: 2 FMA units x 8 fp32 lanes x 2 FLOP
CPU_GHZ = 2.5

# TensorBoard tags: MindFormers' names where it has one (loss, learning-rate, loss-scale, grad-norm), so runs of
# both engines overlay in one dashboard
TB_TAGS = {"loss": "loss", "lr": "learning-rate", "scale": "loss-scale", "grad_norm": "grad-norm",
           "tokens_per_s_per_device": "tokens-per-second-per-device", "mfu": "mfu",
           "step_time": "iteration-time-seconds", "overflow": "overflow-skipped"}


def peak_tflops(device_target: str, override: float | None = None) -> float:
    if override is not None:
        return override
    if device_target == "CPU":
        return (os.cpu_count() or 1) * CPU_GHZ * CPU_FLOP_PER_CYCLE / 1e3
    return PEAK_TFLOPS[device_target]


def flops_per_token(model_config, seq_length: int) -> float:
    """Training (forward + backward) FLOPs per token."""
    matmul_params = model_config.num_parameters(active=True) - model_config.vocab_size * model_config.hidden_size
    attention = 12 * model_config.num_layers * seq_length * model_config.hidden_size
    return 6.0 * matmul_params + attention


class TensorBoardScalars:
    """tensorboardX writers in `<tensorboard_dir>/rank_<rank>` (MindFormers' layout); NaN values (a skipped
    step's grad norm) are not written. tensorboardX writes from a background thread: its flush() only reaches
    the events that thread already took, so only close() guarantees that every event is on disk; a write after
    close() opens a new event file in the same directory (TensorBoard reads them all)."""

    def __init__(self, tensorboard_dir: str, rank: int = 0):
        self.path = os.path.join(tensorboard_dir, f"rank_{rank}")
        os.makedirs(self.path, exist_ok=True)
        self.writer = None
        self.opened = 0

    def write(self, record: dict) -> None:
        if self.writer is None:
            from tensorboardX import SummaryWriter   # pylint: disable=import-outside-toplevel
            # event file names carry the time in seconds: a suffix keeps a reopened writer off the last file
            self.opened += 1
            self.writer = SummaryWriter(logdir=self.path, filename_suffix=f".{os.getpid()}.{self.opened}")
        for key, tag in TB_TAGS.items():
            value = float(record[key])
            if math.isfinite(value):
                self.writer.add_scalar(tag, value, global_step=record["step"])

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class StepLogger:
    def __init__(self, output_dir: str | None, total_steps: int, tokens_per_step: int, flops_token: float,
                 peak: float, printer=print, append: bool = False, tensorboard_dir: str | None = None):
        """`append`: a resumed run continues the log; a fresh run starts a new one. `tensorboard_dir`: also
        write TensorBoard scalars (give it on rank 0 only)."""
        self.path = os.path.join(output_dir, "train_log.jsonl") if output_dir else None
        if self.path:
            os.makedirs(output_dir, exist_ok=True)
            if not append and os.path.exists(self.path):
                os.remove(self.path)
        self.total_steps = total_steps
        self.tokens_per_step = tokens_per_step       # per device
        self.flops_token = flops_token
        self.peak = peak * 1e12
        self.printer = printer
        self.tensorboard = TensorBoardScalars(tensorboard_dir) if tensorboard_dir else None
        self.last = time.perf_counter()
        self.step_times: list[float] = []            # this process's steps (ETA)

    def start(self) -> None:
        self.last = time.perf_counter()

    def eta_seconds(self, step: int) -> float:
        times = self.step_times[1:] or self.step_times
        return max(0, self.total_steps - step) * (sum(times) / len(times)) if times else 0.0

    def log(self, step: int, loss: float, lr: float, scale: float, grad_norm: float, finite: bool,
            new_scale: float, show: bool = True) -> dict:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        self.step_times.append(seconds)
        tokens_per_s = self.tokens_per_step / seconds if seconds > 0 else 0.0
        record = {"step": step, "loss": loss, "lr": lr, "scale": scale, "grad_norm": grad_norm,
                  "overflow": not finite, "tokens_per_s_per_device": tokens_per_s,
                  "mfu": tokens_per_s * self.flops_token / self.peak, "step_time": seconds}
        if self.path:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.write(record)
        if show or not finite:
            self.printer(format_record(record, self.total_steps, new_scale, self.eta_seconds(step)))
            if self.tensorboard is not None:     # best effort between prints (see TensorBoardScalars)
                self.tensorboard.flush()
        return record

    def flush(self) -> None:
        """End of a train() call: the TensorBoard events written so far are all on disk (the writer is closed;
        a later log() opens a new event file)."""
        if self.tensorboard is not None:
            self.tensorboard.close()

    def close(self) -> None:
        self.flush()


def format_eta(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def format_record(record: dict, total_steps: int, new_scale: float | None = None,
                  eta_seconds: float | None = None) -> str:
    line = (f"step {record['step']}/{total_steps} | loss {record['loss']:.6f} | lr {record['lr']:.3e} | "
            f"scale {record['scale']:g} | grad_norm {record['grad_norm']:.4f} | "
            f"tokens/s/device {record['tokens_per_s_per_device']:.0f} | mfu {100 * record['mfu']:.2f}% | "
            f"{1000 * record['step_time']:.1f} ms")
    if eta_seconds is not None:
        line += f" | eta {format_eta(eta_seconds)}"
    if record["overflow"]:
        line += f" | overflow: step skipped, loss scale {record['scale']:g} -> {new_scale:g}"
    return line
