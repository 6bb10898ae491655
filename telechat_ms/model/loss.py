"""Next-token cross entropy (HF semantics: ignore_index -100, mean over counted tokens) with an SFT mask."""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

IGNORE_INDEX = -100


class CausalLMLoss(nn.Cell):
    """mean over positions with label != -100 (and loss_mask != 0) of -log softmax(logits)[label].

    Computed in fp32 as logsumexp - picked logit. Callers pass already shifted logits/labels.
    A batch with no counted token gives 0 (HF would give NaN).
    """

    def __init__(self):
        super().__init__()
        self.cast = ops.Cast()
        self.reduce_max = ops.ReduceMax(keep_dims=True)
        self.sub = ops.Sub()
        self.exp = ops.Exp()
        self.sum_keep = ops.ReduceSum(keep_dims=True)
        self.log = ops.Log()
        self.gather_d = ops.GatherD()
        self.sum = ops.ReduceSum()
        self.mul = ops.Mul()
        self.maximum = ops.Maximum()

    def construct(self, logits, labels, loss_mask=None):
        """logits (N, V), labels (N,) int, loss_mask (N,) or None -> scalar fp32."""
        logits = self.cast(logits, ms.float32)
        shifted = self.sub(logits, ops.stop_gradient(self.reduce_max(logits, -1)))      # (N, V)
        log_z = self.log(self.sum_keep(self.exp(shifted), -1))                         # (N, 1)
        valid = ops.not_equal(labels, IGNORE_INDEX)
        safe_labels = ops.select(valid, labels, ops.zeros_like(labels)).reshape(-1, 1)  # (N, 1)
        picked = self.gather_d(shifted, 1, safe_labels)                                # (N, 1)
        nll = (log_z - picked).reshape(-1)                                              # (N,)
        weight = self.cast(valid, ms.float32)
        if loss_mask is not None:
            weight = self.mul(weight, self.cast(loss_mask, ms.float32))
        return self.sum(self.mul(nll, weight)) / self.maximum(self.sum(weight), 1.0)

    def shard(self, parallel) -> None:
        """Rows by dp, vocab by mp (vocab-parallel logits) unless vocab_emb_dp."""
        from ..parallel.strategies import shard_cell   # pylint: disable=import-outside-toplevel
        shard_cell(self, parallel)
