"""Batched token scoring: log-probabilities of given next tokens under the model, the one primitive behind
perplexity (telechat_ms/eval/perplexity.py) and the lm-evaluation-harness adapter (telechat_ms/eval/harness.py).

A request is (tokens, n_scored): the model reads tokens[:-1] and we return log p(tokens[i+1] | tokens[:i+1]) for
the last `n_scored` targets, plus whether each target is the argmax (lm_eval's `is_greedy`).

The log-softmax and the gather run inside the graph, so only (B, S) numbers reach the host (a (B, S, V) fp32
logits array of a 125K vocab would be gigabytes). Rows are sorted longest first, right-padded (a causal model's
earlier positions never see right padding) and batches are padded to `batch_size` rows and to a multiple of
`pad_multiple` positions, so a whole evaluation compiles a handful of graph shapes. Padding never changes the
numbers: the rotary regime (dynamic NTK alpha / mscale, which the HF forward derives from the input length)
of the padded length must equal each row's own (`batches`), so every request is scored exactly as a forward
over its own tokens alone, independent of the batch it lands in (HF's batched evaluation pads to the
longest row and so, past training_seqlen, lets a row's numbers depend on its neighbours).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..model.rotary import RopeSpec, rope_regime


@dataclass
class Scored:
    logprobs: np.ndarray        # (n_scored,) float64: log p of each scored target
    greedy: np.ndarray          # (n_scored,) bool: target == argmax of its logits


def _scorer_cell(model):
    """The graph cell: ids (B, S), targets (B, S) -> (log p(target) (B, S) fp32, target is argmax (B, S) bool)."""
    import mindspore as ms   # pylint: disable=import-outside-toplevel
    from mindspore import nn, ops   # pylint: disable=import-outside-toplevel

    class TokenScorer(nn.Cell):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm
            self.log_softmax = nn.LogSoftmax(axis=-1)

        def construct(self, input_ids, targets):
            logits = self.lm(input_ids)                                             # (B, S, V) fp32
            logp = self.log_softmax(logits)                                         # (B, S, V)
            picked = ops.gather_elements(logp, 2, ops.expand_dims(targets, -1))     # (B, S, 1)
            best = ops.argmax(logits, -1).astype(ms.int32)                          # (B, S)
            return ops.squeeze(picked, -1), ops.equal(best, targets)               # (B, S), (B, S)

    cell = TokenScorer(model)
    cell.set_train(False)
    return cell


class TokenScorer:
    """Host side: batching, padding, shape bucketing. `score(requests)` keeps the request order."""

    def __init__(self, model, batch_size: int = 1, pad_multiple: int = 64, pad_id: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if pad_multiple < 1:
            raise ValueError(f"pad_multiple must be >= 1, got {pad_multiple}")
        self.model, self.batch_size, self.pad_multiple = model, batch_size, pad_multiple
        self.pad_id = model.config.pad_token_id if pad_id is None else pad_id
        if not 0 <= self.pad_id < model.config.vocab_size:      # any in-vocab id works: right pads are unseen
            self.pad_id = 0
        self.rope = RopeSpec.from_config(model.config)
        self.cell = _scorer_cell(model)
        self.shapes: set[tuple[int, int]] = set()              # graph shapes run so far (compiles)

    def padded_length(self, longest: int) -> int:
        """`longest` rounded up to pad_multiple, or if that changes the rotary regime of `longest`, the longest
        length that keeps it (e.g. training_seqlen: below it TeleChat's rotary does not depend on the length).
        Regimes change monotonically with the length, so the lengths sharing one form an interval."""
        rounded = -(-longest // self.pad_multiple) * self.pad_multiple
        regime = rope_regime(self.rope, longest)
        if rope_regime(self.rope, rounded) == regime:
            return rounded
        low, high = longest, rounded                 # regime(low) == regime, regime(high) != regime
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if rope_regime(self.rope, mid) == regime else (low, mid)
        return low

    def score(self, requests: Sequence[tuple[Sequence[int], int]],
              on_batch: Callable[[list[int]], None] | None = None) -> list[Scored]:
        """requests: (tokens, n_scored) with 1 <= n_scored <= len(tokens) - 1. `on_batch(indices)` is called
        after each batch with the indices of its requests (progress bars)."""
        for i, (tokens, n_scored) in enumerate(requests):
            if not 1 <= n_scored <= len(tokens) - 1:
                raise ValueError(f"request {i}: {n_scored} scored targets in {len(tokens)} tokens "
                                 "(need 1 <= n_scored <= len(tokens) - 1)")
        out: list[Scored | None] = [None] * len(requests)
        for chunk in self.batches([len(tokens) - 1 for tokens, _ in requests]):
            for i, scored in zip(chunk, self._run([requests[i] for i in chunk])):
                out[i] = scored
            if on_batch is not None:
                on_batch(chunk)
        return out   # type: ignore[return-value]

    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Request indices by batch: longest first; a row joins a batch only if the batch's padded length
        keeps the row's own rotary regime (then every row is scored exactly as if it ran alone; past
        training_seqlen TeleChat's mscale changes with every length, so such rows run one length per batch)."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        out: list[list[int]] = []
        for i in order:
            if out and len(out[-1]) < self.batch_size and self._fits(lengths[i], lengths[out[-1][0]]):
                out[-1].append(i)
            else:
                out.append([i])
        return out

    def _fits(self, length: int, longest: int) -> bool:
        return rope_regime(self.rope, length) == rope_regime(self.rope, self.padded_length(longest))

    def _run(self, batch: list[tuple[Sequence[int], int]]) -> list[Scored]:
        import mindspore as ms   # pylint: disable=import-outside-toplevel
        width = self.padded_length(max(len(tokens) - 1 for tokens, _ in batch))
        ids = np.full((self.batch_size, width), self.pad_id, np.int32)          # rows past the batch: pads
        targets = np.zeros((self.batch_size, width), np.int32)
        for row, (tokens, _) in enumerate(batch):
            n = len(tokens) - 1
            ids[row, :n] = tokens[:-1]
            targets[row, :n] = tokens[1:]
        self.shapes.add(ids.shape)
        logp, greedy = self.cell(ms.Tensor(ids), ms.Tensor(targets))
        logp, greedy = logp.asnumpy().astype(np.float64), greedy.asnumpy()
        out = []
        for row, (tokens, n_scored) in enumerate(batch):
            n = len(tokens) - 1
            out.append(Scored(logp[row, n - n_scored:n], greedy[row, n - n_scored:n].astype(bool)))
        return out
