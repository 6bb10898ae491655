"""MindFormers 1.9.0 integration: the classes MindFormers builds from a TeleChat2 yaml.

Importing it registers, under the names TeleChat2 yamls use:
    config     TelechatConfig            -> MFTelechatConfig (carries a telechat_ms TelechatConfig; strict)
    models     TelechatForCausalLM       -> MFTelechatForCausalLM (our model; parameter names unchanged; takes every
                                            column preprocess writes; applies the yaml's layout and recompute)
    tokenizer  TelechatTokenizer         -> MFTelechatTokenizer (encode/decode of telechat_ms.data)
    wrapper    TelechatTrainOneStepCell  -> MFTrainOneStepCell that works on CPU and accumulates gradients
`telechat-ms train --engine mindformers` is telechat_ms/integrations/mf_engine.py. For MindFormers' own
run_mindformer.py: `--register_path <dir of this file>` and `auto_register: telechat_register.TelechatConfig` in
the yaml's model_config (telechat_register.py imports this module). Only telechat_ms/integrations imports
mindformers.

MindFormers 1.9.0 quirks handled here (measured on CPU, ../shared/spec/mindspore_cpu.md):
* MFTrainOneStepCell's overflow check calls NPUGetFloatStatusV2 (no CPU kernel): on CPU the wrapper sets
  ascend_910b_target=True and enable_allfinite=False, which makes it use a plain isfinite check.
* In stand-alone and data-parallel mode MindFormers resets gradient_accumulation_steps to 1 (a warning): the
  wrapper's `gradient_accumulation_steps` runs the micro batches of one step itself (mf_engine sets it).
* bfloat16 has no CPU kernels: the model's compute dtype follows amp_level (train/amp.py), fp16 on CPU.
"""
from __future__ import annotations

import dataclasses

import mindspore as ms
from mindspore import Tensor
from mindspore.ops import composite as C
from mindspore.ops import functional as F
from mindformers.models.configuration_utils import PretrainedConfig
from mindformers.models.modeling_utils import PreTrainedModel
from mindformers.tools.register import MindFormerModuleType, MindFormerRegister
from mindformers.wrapper.wrapper import MFTrainOneStepCell

from ..config.base import ConfigError
from ..config.model import TelechatConfig
from ..config.train_keys import check_model_run_keys
from ..model import Kernels, TelechatForCausalLM
from ..train.amp import apply_amp, model_config_for_amp, resolve_amp_level
from .mf_layout import apply_layout, parallel_of

_FIELDS = frozenset(f.name for f in dataclasses.fields(TelechatConfig))
# keys PretrainedConfig itself consumes or MindFormers passes into every model config
_PRETRAINED_KEYS = frozenset(PretrainedConfig().to_dict()) | {
    "parallel_config", "moe_config", "dataset_config", "calculate_per_token_loss", "batch_size",
    "disable_lazy_inline", "auto_register", "type", "name_or_path", "_commit_hash"}
# the columns of `telechat-ms preprocess` (docs/data.md) = the arguments of MFTelechatForCausalLM.construct
COLUMNS = ("input_ids", "labels", "position_ids", "document_ids")


@MindFormerRegister.register(MindFormerModuleType.CONFIG, alias="TelechatConfig")
class MFTelechatConfig(PretrainedConfig):
    """MindFormers config: our architecture fields are validated by TelechatConfig; `amp_level` (O0/O1/O2) is our
    extension (without it a 16-bit compute_dtype means O2). MindFormers run keys are checked like the native
    loop checks them (config/train.py MODEL_RUN_KEYS: applied, refused with the reason, or inert); any other key
    is an error naming it, so nothing in model_config is silently ignored."""
    model_type = "telechat_ms"

    def __init__(self, amp_level: str | None = None, **kwargs):
        ours = {k: kwargs.pop(k) for k in list(kwargs) if k in _FIELDS}
        run = {k: kwargs.pop(k) for k in list(kwargs) if k not in _PRETRAINED_KEYS}
        # training refuses use_past in MindFormers itself (_check_training_network_no_use_past reads it here)
        check_model_run_keys(run, "model.model_config", ms.get_context("device_target"), training=False)
        self.telechat = TelechatConfig.from_dict(ours, source="model.model_config")
        self.amp_level = resolve_amp_level(amp_level, self.telechat)
        self.offset = run.get("offset", 0)
        self.pp_interleave_num = run.get("pp_interleave_num", 1)
        self.use_past = bool(run.get("use_past", False))
        super().__init__(**kwargs)
        for key, value in self.telechat.to_dict().items():   # MindFormers reads e.g. seq_length, hidden_size
            setattr(self, key, value)


@MindFormerRegister.register(MindFormerModuleType.MODELS, alias="TelechatForCausalLM")
class MFTelechatForCausalLM(PreTrainedModel):
    """Our TelechatForCausalLM inside a MindFormers PreTrainedModel. auto_prefix=False keeps the parameter names
    of telechat_ms (= the official MindSpore port's), so converted checkpoints load unchanged. The yaml's
    parallel_config / recompute_config / offset are applied to the model (mf_layout.py)."""
    config_class = MFTelechatConfig
    base_model_prefix = "telechat"

    def __init__(self, config, **kwargs):
        super().__init__(config, auto_prefix=False, **kwargs)
        device = ms.get_context("device_target")
        model_config = model_config_for_amp(config.telechat, config.amp_level, device)
        network = TelechatForCausalLM(model_config, Kernels.for_device(device))
        self.parallel = parallel_of(config)
        apply_layout(network, self.parallel)
        self.network = apply_amp(network, config.amp_level, device)

    def construct(self, input_ids, labels=None, position_ids=None, document_ids=None):
        """MindFormers passes the dataset's `input_columns` by name (DataOrderWrapperCell): packed rows need
        position_ids (positions restart per document) and document_ids (attention stays inside a document)."""
        # network(input_ids, labels, attention_mask, loss_mask, position_ids, document_ids)
        return self.network(input_ids, labels, None, None, position_ids, document_ids)

    def no_weight_decay_keywords(self):
        """MindFormers decays every matrix not ending in .bias; ours also spares norm weights (train/optim.py)."""
        return ("norm",)

    def convert_name(self, name):
        """Checkpoint names are ours already (MindFormers asks to tell HF safetensors from ours)."""
        return name


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
    """MFTrainOneStepCell + the CPU overflow-check workaround + gradient accumulation in stand-alone / data
    parallel mode: a batch of `gradient_accumulation_steps` micro batches (rows laid out micro batch after micro
    batch, as the native loop reads them) gives the mean of the micro batches' losses and gradients — each micro
    batch's loss is a mean over its own labelled tokens, exactly as in the native loop."""

    def __init__(self, *args, gradient_accumulation_steps: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        if ms.get_context("device_target") == "CPU":
            self.ascend_910b_target = True
            self.enable_allfinite = False
        if not isinstance(gradient_accumulation_steps, int) or gradient_accumulation_steps < 1:
            raise ConfigError(f"runner_wrapper.gradient_accumulation_steps must be a positive integer, got "
                              f"{gradient_accumulation_steps!r}")
        self.micro_batches = gradient_accumulation_steps
        self.micro_factor = Tensor([float(gradient_accumulation_steps)], ms.float32)

    def grads_for_legacy(self, scaling_sens, *inputs):
        if self.micro_batches == 1:
            return MFTrainOneStepCell.grads_for_legacy(self, scaling_sens, *inputs)
        size = inputs[0].shape[0] // self.micro_batches
        loss_sum, grads_sum = None, None
        for i in range(self.micro_batches):
            micro = ()
            for x in inputs:
                micro = micro + (x[i * size:(i + 1) * size],)      # rows of micro batch i: (size, L)
            loss = self.network(*micro)
            sens = C.ones_like(loss) * F.cast(scaling_sens, F.dtype(loss))
            grads = self.grad(self.network, self.weights)(*micro, sens)
            if i == 0:
                loss_sum, grads_sum = loss, grads
            else:
                loss_sum = loss_sum + loss
                grads_sum = self.hyper_map(F.add, grads_sum, grads)
        # the caller divides the gradients by scaling_sens * grad_scale_factor: the mean over micro batches
        return loss_sum / self.micro_batches, grads_sum, self.micro_factor
