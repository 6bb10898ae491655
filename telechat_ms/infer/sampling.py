"""Next-token selection on the host with transformers' generate semantics.

Order as in transformers: repetition penalty (a logits processor, applied in greedy mode too), then the
sampling warpers temperature -> top-k -> top-p, then argmax (greedy) or a draw from a seeded generator.
Logits are (batch, vocab) float32 numpy arrays; only the last position is ever needed per step.
"""
from __future__ import annotations

import numpy as np

from ..config.generation import GenerationConfig

NEG_INF = -np.inf


def apply_repetition_penalty(scores: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """Every token id in `seen` (batch, n): score < 0 -> score * penalty, else score / penalty (HF)."""
    if penalty == 1.0:
        return scores
    out = scores.copy()
    rows = np.arange(scores.shape[0])[:, None]                             # (B, 1) broadcasts with seen (B, n)
    picked = out[rows, seen]
    out[rows, seen] = np.where(picked < 0, picked * penalty, picked / penalty)
    return out


def apply_top_k(scores: np.ndarray, top_k: int) -> np.ndarray:
    """Keep the k best scores per row (ties at the k-th value kept, as HF's `< kth` comparison does)."""
    if top_k <= 0 or top_k >= scores.shape[-1]:
        return scores
    kth = np.sort(scores, axis=-1)[:, -top_k][:, None]                     # (B, 1)
    return np.where(scores < kth, NEG_INF, scores)


def apply_top_p(scores: np.ndarray, top_p: float) -> np.ndarray:
    """Nucleus filter (HF): drop the lowest-probability tokens whose cumulative mass is <= 1 - top_p."""
    if top_p >= 1.0:
        return scores
    order = np.argsort(scores, axis=-1, kind="stable")                     # ascending, (B, V)
    sorted_scores = np.take_along_axis(scores, order, axis=-1)
    probs = _softmax(sorted_scores)
    cumulative = np.cumsum(probs, axis=-1)
    remove_sorted = cumulative <= (1.0 - top_p)
    remove_sorted[:, -1] = False                                           # min_tokens_to_keep = 1
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)
    return np.where(remove, NEG_INF, scores)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    finite_max = np.max(np.where(np.isfinite(x), x, -1e300), axis=-1, keepdims=True)
    e = np.exp(x - finite_max)
    return e / e.sum(axis=-1, keepdims=True)


class TokenSelector:
    """Stateful per-generation selector: holds the seeded generator so a run is reproducible."""

    def __init__(self, config: GenerationConfig):
        self.config = config
        self.rng = np.random.default_rng(config.seed)

    def process(self, scores: np.ndarray, seen: np.ndarray) -> np.ndarray:
        cfg = self.config
        scores = apply_repetition_penalty(scores.astype(np.float32), seen, cfg.repetition_penalty)
        if not cfg.do_sample:
            return scores
        scores = scores / np.float32(cfg.temperature)
        return apply_top_p(apply_top_k(scores, cfg.top_k), cfg.top_p)

    def __call__(self, scores: np.ndarray, seen: np.ndarray) -> np.ndarray:
        """scores (B, V) of the last position, seen (B, n) ids so far -> next ids (B,) int32."""
        scores = self.process(scores, seen)
        if not self.config.do_sample:
            return np.argmax(scores, axis=-1).astype(np.int32)
        probs = _softmax(scores)
        draws = self.rng.random((scores.shape[0], 1))
        # inverse-CDF draw per row; clamp guards against cumulative rounding just below 1
        choice = (np.cumsum(probs, axis=-1) < draws).sum(axis=-1)
        return np.minimum(choice, scores.shape[-1] - 1).astype(np.int32)
