"""AdamW (torch semantics) with an in-graph skip, and the learning-rate schedules of MindFormers.

The learning rate is computed on the host from the step and passed into the graph: the lr position is then
just the step number, which makes resume exact and keeps the schedule out of the optimizer state.
"""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from ..config.base import ConfigError


def warmup_steps(schedule, total_steps: int) -> int:
    if schedule.warmup_ratio is not None:
        return int(total_steps * schedule.warmup_ratio)
    return schedule.warmup_steps


def learning_rate(schedule, step: int, run_steps: int) -> float:
    """lr of optimizer step `step` (0-based); same formulas as MindFormers' CosineWithWarmUpLR/ConstantWarmUpLR."""
    total = schedule.total_steps if schedule.total_steps > 0 else run_steps
    warmup = warmup_steps(schedule, total)
    if warmup > total:
        raise ConfigError(f"lr_schedule: warmup steps ({warmup}) exceed total_steps ({total})")
    if warmup and step < warmup:
        return schedule.warmup_lr_init + (schedule.learning_rate - schedule.warmup_lr_init) * step / warmup
    if schedule.type == "ConstantWarmUpLR":
        return schedule.learning_rate
    if step >= total:
        return schedule.lr_end
    progress = (step - warmup) / max(1, total - warmup)
    factor = max(0.0, 0.5 * (1.0 + math.cos(math.pi * schedule.num_cycles * 2.0 * progress)))
    return schedule.lr_end + (schedule.learning_rate - schedule.lr_end) * factor


def decays(param) -> bool:
    """Weight decay on matrices only: biases and RMSNorm weights are excluded (MindFormers' default filter)."""
    name = param.name.lower()
    return len(param.shape) > 1 and not name.endswith("bias") and "norm" not in name


def _adamw_update(beta1, beta2, eps, lr, bias1, bias2, apply, weight_decay, param, m, v, grad):
    """One parameter; `apply` False (overflow) leaves param and moments untouched."""
    m_new = beta1 * m + (1.0 - beta1) * grad
    v_new = beta2 * v + (1.0 - beta2) * (grad * grad)       # Square's value; MindSpore's CPU Mul is 3x faster
    update = (m_new / bias1) / (ops.sqrt(v_new / bias2) + eps)
    p_new = param * (1.0 - lr * weight_decay) - lr * update
    # a full-shape condition: MindSpore's CPU Select keeps per-element broadcast index tables for a 0-d one
    keep = ops.broadcast_to(apply, param.shape)
    ops.assign(m, ops.select(keep, m_new, m))
    ops.assign(v, ops.select(keep, v_new, v))
    return ops.assign(param, ops.select(keep, p_new, param))


class AdamW(nn.Cell):
    """Decoupled weight decay + bias-corrected Adam in fp32 (the params are the fp32 master weights).

    State: `adam_m.*`, `adam_v.*` and `adam_step` (number of applied updates, for the bias correction).
    The update is computed always and selected by `apply`, so a skipped step needs no graph control flow.
    """

    def __init__(self, params, config):
        super().__init__()
        for p in params:
            if p.dtype != ms.float32:
                raise ConfigError(f"parameter {p.name} is {p.dtype}; training keeps float32 master weights "
                                  "(param_dtype float32, see amp_level)")
        self.params = ParameterTuple(params)
        self.moments1 = self.params.clone(prefix="adam_m", init="zeros")
        self.moments2 = self.params.clone(prefix="adam_v", init="zeros")
        self.step = Parameter(Tensor(0, ms.int32), name="adam_step", requires_grad=False)
        self.beta1, self.beta2 = config.betas
        self.eps = config.eps
        self.weight_decays = tuple(config.weight_decay if decays(p) else 0.0 for p in params)
        self.hyper_map = ops.HyperMap()

    def construct(self, grads, lr, apply):
        step = self.step + ops.cast(apply, ms.int32)
        ops.assign(self.step, step)
        stepf = ops.cast(ops.maximum(step, 1), ms.float32)
        bias1 = 1.0 - ops.pow(Tensor(self.beta1, ms.float32), stepf)
        bias2 = 1.0 - ops.pow(Tensor(self.beta2, ms.float32), stepf)
        update = ops.partial(_adamw_update, self.beta1, self.beta2, self.eps, lr, bias1, bias2, apply)
        return self.hyper_map(update, self.weight_decays, self.params, self.moments1, self.moments2, grads)

    def state(self) -> dict:
        """Optimizer state by parameter name (saved beside the model weights)."""
        out = {p.name: p for p in self.moments1 + self.moments2}
        out[self.step.name] = self.step
        return out
