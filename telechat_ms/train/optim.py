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


def _adamw_update(fused, lr, beta1, beta2, eps, decay, param, m, v, grad):
    """One parameter in one fused kernel (MindSpore's AdamWeightDecay: m, v, param updated in place)."""
    return fused(param, m, v, lr, beta1, beta2, eps, decay, grad)


class AdamW(nn.Cell):
    """Decoupled weight decay + bias-corrected Adam in fp32 (the params are the fp32 master weights).

    State: `adam_m.*`, `adam_v.*` and `adam_step` (number of applied updates, for the bias correction).
    A skipped step runs the same kernel with neutral coefficients, so it needs no graph control flow.
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
        self.weight_decay = config.weight_decay
        self.weight_decays = tuple(config.weight_decay if decays(p) else 0.0 for p in params)
        self.hyper_map = ops.HyperMap()
        self.fused = ops.AdamWeightDecay()

    def construct(self, grads, lr, apply):
        """torch's AdamW step through MindSpore's fused AdamWeightDecay kernel, which computes
            m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  p = p - lr' (m / (sqrt(v) + eps') + wd' p)
        with lr' = lr sqrt(c2) / c1, eps' = eps sqrt(c2), wd' = wd c1 / sqrt(c2) (c1, c2 = the bias
        corrections): p (1 - lr wd) - lr (m / c1) / (sqrt(v / c2) + eps), torch's update, rounded differently.
        One pass over each parameter instead of ~15 elementwise ops (docs/performance.md). A skipped step
        (`apply` False: the gradients were zeroed) runs with b1 = b2 = 1, lr' = wd' = 0, which leaves p, m and v
        bit for bit unchanged."""
        step = self.step + ops.cast(apply, ms.int32)
        ops.assign(self.step, step)
        stepf = ops.cast(ops.maximum(step, 1), ms.float32)
        bias1 = 1.0 - ops.pow(Tensor(self.beta1, ms.float32), stepf)
        root2 = ops.sqrt(1.0 - ops.pow(Tensor(self.beta2, ms.float32), stepf))
        zero, one = Tensor(0.0, ms.float32), Tensor(1.0, ms.float32)
        lr_k = ops.select(apply, lr * root2 / bias1, zero)
        beta1 = ops.select(apply, Tensor(self.beta1, ms.float32), one)
        beta2 = ops.select(apply, Tensor(self.beta2, ms.float32), one)
        eps = self.eps * root2
        scale = ops.select(apply, bias1 / root2, zero)                  # wd' / wd
        # each parameter's wd is the config's or 0.0: one product, not one per parameter
        decayed = scale * self.weight_decay
        decays = tuple(decayed if wd else zero for wd in self.weight_decays)
        update = ops.partial(_adamw_update, self.fused, lr_k, beta1, beta2, eps)
        return self.hyper_map(update, decays, self.params, self.moments1, self.moments2, grads)

    def state(self) -> dict:
        """Optimizer state by parameter name (saved beside the model weights)."""
        out = {p.name: p for p in self.moments1 + self.moments2}
        out[self.step.name] = self.step
        return out
