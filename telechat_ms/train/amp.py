"""Mixed precision: amp_level O0 / O1 / O2 and the dynamic loss scale.

* O0: everything float32.
* O1: the float32 network with white-list ops (MatMul, BatchMatMul, ...) run in the low dtype and black-list ops
  (softmax, exp, log, rsqrt, reductions) in float32, via MindSpore's `auto_mixed_precision(net, "auto")`.
  MindSpore's own "O1" rewrites each Cell's source and fails on our package (the rewritten modules lose their
  relative imports); "auto" applies the same white list as a compile-time strategy without rewriting.
* O2: the model built with compute_dtype = the low dtype and param_dtype float32: every Linear casts its fp32
  master weight to the low dtype, while RMSNorm, attention softmax, the MoE router and the loss compute in
  float32 by construction of the model (telechat_ms/model).
The low dtype is bfloat16 on Ascend and float16 elsewhere (bfloat16 has no CPU kernels). float16 training uses a
dynamic loss scale by default; an overflow step is skipped and the scale divided by `scale_factor`.
"""
from __future__ import annotations

import dataclasses


LOW_PRECISION = ("float16", "bfloat16")


def low_dtype(device_target: str) -> str:
    return "bfloat16" if device_target == "Ascend" else "float16"


def resolve_amp_level(amp_level: str | None, model_config) -> str:
    """An explicit amp_level wins; otherwise a 16-bit model compute_dtype (MindFormers yamls) means O2."""
    if amp_level is not None:
        return amp_level
    return "O2" if model_config.compute_dtype in LOW_PRECISION else "O0"


def model_config_for_amp(model_config, amp_level: str, device_target: str):
    """The model config the network is built with: fp32 master weights always, compute dtype by level."""
    compute = low_dtype(device_target) if amp_level == "O2" else "float32"
    return dataclasses.replace(model_config, compute_dtype=compute, param_dtype="float32")


def apply_amp(network, amp_level: str, device_target: str):
    """O1 wraps the fp32 network with MindSpore's white/black-list strategy; O0/O2 return it unchanged."""
    if amp_level != "O1":
        return network
    import mindspore as ms   # pylint: disable=import-outside-toplevel
    dtype = ms.bfloat16 if low_dtype(device_target) == "bfloat16" else ms.float16
    return ms.amp.auto_mixed_precision(network, "auto", dtype=dtype)


def uses_float16(amp_level: str, device_target: str) -> bool:
    return amp_level in ("O1", "O2") and low_dtype(device_target) == "float16"


@dataclasses.dataclass
class LossScaler:
    """Host-side dynamic loss scale (DynamicLossScaleUpdateCell semantics): an overflow divides the scale by
    `factor` (not below 1) and resets the clean-step count; `window` clean steps in a row multiply it by `factor`.
    A static scaler (dynamic=False) never changes. Its state is two numbers, saved with every checkpoint."""
    value: float = 1.0
    dynamic: bool = False
    factor: float = 2.0
    window: int = 1000
    good_steps: int = 0

    @classmethod
    def from_config(cls, config, amp_level: str, device_target: str) -> "LossScaler":
        dynamic = config.dynamic if config.dynamic is not None else uses_float16(amp_level, device_target)
        explicit = config.dynamic is not None
        value = config.loss_scale_value if (dynamic or explicit) else 1.0
        return cls(value=value, dynamic=dynamic, factor=config.scale_factor, window=config.scale_window)

    def update(self, finite: bool) -> None:
        if not self.dynamic:
            return
        if not finite:
            self.value = max(self.value / self.factor, 1.0)
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps >= self.window:
            self.value *= self.factor
            self.good_steps = 0

    def state(self) -> dict:
        return {"value": self.value, "good_steps": self.good_steps}

    def load_state(self, state: dict) -> None:
        self.value = float(state["value"])
        self.good_steps = int(state["good_steps"])
