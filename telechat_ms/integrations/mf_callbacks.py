"""Callbacks --engine mindformers adds to MindFormers' Trainer, for what MindFormers 1.9 does not do itself.

* TrainLog      <output_dir>/train_log.jsonl with the native loop's records (loss, lr, scale, grad_norm,
                overflow), so both engines' logs compare and `telechat-ms plot-loss` reads either
* StopAtStep    runner_config.stop_step (MindFormers 1.9 builds the stop callback's config and never adds it)
* RunGuard      the native loop's stops: a non-finite loss at a loss scale that cannot go lower, and
                max_consecutive_skips overflow steps in a row (raise TrainingError: one `error:` line, exit 2)
* ScaleCounter  on resume, the dynamic loss scale's clean-step counter (current_iterator_step,
                last_overflow_iterator_step): MindFormers saves them in every checkpoint but restores only the
                scale value, so a resumed fp16 run would grow its scale at other steps
"""
from __future__ import annotations

import math

import numpy as np
from mindspore.train.callback import Callback

from ..train.logs import StepLogger
from ..train.trainer import TrainingError


def _scalar(value) -> float:
    if value is None:
        return float("nan")
    return float(np.asarray(value.asnumpy() if hasattr(value, "asnumpy") else value).reshape(-1)[0])


def _outputs(cb_params):
    """(loss, overflow, scale, lr, grad_norm) of MFTrainOneStepCell's step."""
    out = cb_params.net_outputs
    loss, overflow, scale = _scalar(out[0]), bool(_scalar(out[1])), _scalar(out[2])
    lr = _scalar(out[3]) if len(out) > 3 else float("nan")
    norm = _scalar(out[4]) if len(out) > 4 else float("nan")
    return loss, overflow, scale, lr, norm


class _Steps(Callback):
    """Counts optimizer steps from the resumed one (MindSpore's cur_step_num restarts with a resumed epoch)."""

    def __init__(self, start_step: int = 0):
        super().__init__()
        self.step = start_step

    def on_train_step_end(self, run_context):
        self.step += 1
        self.after_step(run_context, run_context.original_args())

    def after_step(self, run_context, cb_params):
        raise NotImplementedError


class TrainLog(_Steps):
    def __init__(self, output_dir: str | None, start_step: int):
        super().__init__(start_step)
        self.logger = StepLogger(output_dir, 0, 0, 0.0, 1.0, printer=lambda _line: None, append=start_step > 0)
        self.losses = []

    def after_step(self, run_context, cb_params):
        loss, overflow, scale, lr, norm = _outputs(cb_params)
        self.losses.append(loss)
        self.logger.log(self.step, loss, lr, scale, norm, not overflow, scale, show=False)


class StopAtStep(_Steps):
    def __init__(self, stop_step: int, start_step: int):
        super().__init__(start_step)
        self.stop_step = stop_step

    def after_step(self, run_context, cb_params):
        if self.step >= self.stop_step:
            run_context.request_stop()


class RunGuard(_Steps):
    def __init__(self, max_skips: int, dynamic: bool, start_step: int):
        super().__init__(start_step)
        self.max_skips, self.dynamic, self.skipped = max_skips, dynamic, 0

    def after_step(self, run_context, cb_params):
        loss, overflow, scale, _lr, _norm = _outputs(cb_params)
        step = self.step
        if not math.isfinite(loss) and (scale <= 1 or not self.dynamic):
            raise TrainingError(f"step {step}: loss {loss} at loss scale {scale:g} (nothing left to lower): the "
                                "weights or this step's data hold non-finite values, or the run diverged")
        self.skipped = self.skipped + 1 if overflow else 0
        if self.skipped >= self.max_skips:
            raise TrainingError(f"step {step}: {self.skipped} consecutive steps skipped for non-finite gradients "
                                f"(loss {loss}, loss scale {scale:g}); stopped at max_consecutive_skips "
                                f"{self.max_skips}")


class ScaleCounter(Callback):
    NAMES = ("current_iterator_step", "last_overflow_iterator_step")

    def __init__(self, checkpoint: str, fmt: str):
        super().__init__()
        self.checkpoint, self.fmt = checkpoint, fmt

    def on_train_begin(self, run_context):
        import mindspore as ms   # pylint: disable=import-outside-toplevel
        manager = getattr(run_context.original_args().train_network, "loss_scaling_manager", None)
        if manager is None or not hasattr(manager, "cur_iter"):
            return
        saved = ms.load_checkpoint(self.checkpoint, format=self.fmt, choice_func=lambda name: name in self.NAMES)
        for name, param in (("current_iterator_step", manager.cur_iter),
                            ("last_overflow_iterator_step", manager.last_overflow_iter)):
            if name in saved:
                param.set_data(saved[name].astype(param.dtype))


def callbacks_for(plan) -> list:
    """The callbacks a run needs (rank 0 writes the log)."""
    from mindformers.tools.utils import get_real_rank   # pylint: disable=import-outside-toplevel
    config = plan.config
    rank = get_real_rank() or 0
    start = plan.resume.step if plan.resume is not None else 0
    log = TrainLog(config.output_dir if rank == 0 else None, start)
    callbacks = [log, RunGuard(config.max_consecutive_skips, config.loss_scale.dynamic is True, start)]
    if config.stop_step > 0:
        callbacks.append(StopAtStep(config.stop_step, start))
    if plan.resume is not None:
        file = plan.resume.file.replace("rank_0", f"rank_{rank}")
        callbacks.append(ScaleCounter(file, plan.resume.fmt))
    return callbacks
