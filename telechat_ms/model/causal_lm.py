"""TelechatForCausalLM: the model, the lm_head (own weight, or the embedding table when tied), the logit
multiplier and the shifted next-token loss."""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from .decoder import TelechatModel
from .dtypes import to_ms_dtype
from .kernels import Kernels
from .linear import Linear
from .loss import CausalLMLoss


class TelechatForCausalLM(nn.Cell):
    """model(input_ids) -> logits (B, S, V) fp32;  model(input_ids, labels) -> loss (scalar fp32).

    The loss is the HF next-token cross entropy (logits[:, :-1] vs labels[:, 1:], ignore -100) plus the
    summed MoE auxiliary loss (zero for dense models). Dynamic NTK: logits use the HF rule for length S; the
    loss uses length S-1, the positions whose logits it reads (docs/architecture.md). `loss_mask` (B, S) optionally weights label positions
    (SFT); `attention_mask` (B, S) marks padding with 0; `position_ids` / `document_ids` (B, S) describe packed
    rows (positions restart per document, no attention across documents; docs/data.md).
    """

    def __init__(self, config, kernels: Kernels | None = None):
        super().__init__()
        kernels = kernels or Kernels.plain()
        self.config = config
        self.kernels = kernels
        self.model = TelechatModel(config, kernels)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, False, to_ms_dtype(config.compute_dtype),
                              to_ms_dtype(config.param_dtype), config.initializer_range)
        if config.tie_word_embeddings:
            # one Parameter read by both cells (TeleChat v1 7B): (V, H) is the Linear (out, in) layout already;
            # it keeps the embedding's name, so checkpoints hold it once
            self.lm_head.weight = self.model.tok_embeddings.embedding_weight
        self.logit_multiplier = config.logit_multiplier        # Tele-FLM output_mult / mup_scale_factor
        self.mul_logits = ops.Mul()
        if config.quantization is not None:
            # weight-only-quantized checkpoints: the decoder's Linears are swapped for quantized cells by
            # composition (attention / MLP code unchanged); telechat_ms/quant/cells.py
            from ..quant.cells import quantize_linears   # pylint: disable=import-outside-toplevel
            quantize_linears(self, config.quantization, kernels)
        self.loss = CausalLMLoss(kernels)
        self.cast = ops.Cast()
        self.reshape = ops.Reshape()
        # the shift: logits of positions 0..S-2 against labels (and loss_mask) of positions 1..S-1
        self.slice_logits = ops.StridedSlice()
        self.slice_labels = ops.StridedSlice()
        self.slice_mask = ops.StridedSlice()
        self.add_aux = ops.Add()

    def construct(self, input_ids, labels=None, attention_mask=None, loss_mask=None, position_ids=None,
                  document_ids=None):
        # With labels the last token is only a target: its hidden state reaches no used logit, so dynamic NTK
        # takes the S-1 positions whose logits enter the loss (exactly HF's forward over them). This also keeps
        # (seq_length + 1)-token training rows at plain RoPE when seq_length == training_seqlen.
        ntk_len = 0 if labels is None else input_ids.shape[1] - 1
        hidden, aux = self.model(input_ids, attention_mask, position_ids, document_ids, ntk_len)  # (B, S, H)
        logits = self.head(hidden)                                                     # (B, S, V) fp32
        if labels is None:
            return logits
        bsz, seq, vocab = logits.shape
        tokens = bsz * (seq - 1)
        shift_logits = self.reshape(self.slice_logits(logits, (0, 0, 0), (bsz, seq - 1, vocab), (1, 1, 1)),
                                    (tokens, vocab))                                   # (B*(S-1), V)
        shift_labels = self.reshape(self.slice_labels(labels, (0, 1), (bsz, seq), (1, 1)), (tokens,))
        shift_mask = None if loss_mask is None else \
            self.reshape(self.slice_mask(loss_mask, (0, 1), (bsz, seq), (1, 1)), (tokens,))
        return self.add_aux(self.loss(shift_logits, shift_labels, shift_mask), aux)

    def head(self, hidden):
        """hidden (..., H) -> fp32 logits (..., V), times the logit multiplier (1.0 adds no op)."""
        logits = self.cast(self.lm_head(hidden), ms.float32)
        if self.logit_multiplier != 1.0:
            logits = self.mul_logits(logits, self.logit_multiplier)
        return logits

    def shard(self, parallel) -> None:
        """Shard the whole model; lm_head is vocab-parallel like the loss that reads its logits (and the logit
        multiplier, an op of this cell)."""
        from ..parallel.strategies import shard_cell   # pylint: disable=import-outside-toplevel
        shard_cell(self, parallel)
        self.model.shard(parallel)
        self.lm_head.shard(parallel, "head")
        self.loss.shard(parallel)

    @classmethod
    def from_pretrained(cls, path: str, kernels: Kernels | None = None, **config_overrides):
        """Build from a converted directory (model_config.yaml + safetensors) written by convert/hf2ms.py."""
        from ..io.checkpoint import load_pretrained   # pylint: disable=import-outside-toplevel
        return load_pretrained(cls, path, kernels, **config_overrides)
