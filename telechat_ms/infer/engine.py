"""Incremental decoding with a static-shape KV cache: prefill once, then one-token decode steps.

Graph-friendly: the cache is pre-allocated for `max_len` positions, so a batch compiles at most three graph
shapes (prefill (B, S_prompt), decode (B, 1), recompute (B, max_len)). Every data-dependent input is computed
on the host and passed in: the rotary tables for the current total length L (dynamic NTK alpha and mscale of
spec §2.5), the mask (B, 1, S_new, max_len) (causal, left padding, unwritten slots), the one-hot placement
(S_new, max_len) that writes the new keys/values into their cache slots, and the position whose logits are
returned.

Dynamic NTK and caching: HF recomputes alpha/mscale from the total length at every forward, and the *hidden
states* of earlier positions (which become deeper layers' keys and values) depend on them. So once L passes
`training_seqlen` (or wherever alpha/mscale change) no cache can reproduce the HF full forward. With
`exact_ntk=True` (default) the session recomputes the whole cache with one fixed-shape prefill whenever
(alpha, mscale) differs from the values the cache was built with: below `training_seqlen` decoding is fully
incremental; beyond it each step costs one max_len forward, and every step equals the uncached HF forward.
`exact_ntk=False` keeps the cache (keys are stored before rotary and re-rotated with the current tables, so
only the stale hidden states differ): fast, approximate beyond `training_seqlen` (~1e-3 on tiny models).
"""
from __future__ import annotations

import weakref

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from ..model.rotary import RopeSpec, rope_regime, rotary_tables

# one compiled step cell per model (kept outside the model's cell tree: the step cell owns the model)
_STEP_CELLS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class CachedStep(nn.Cell):
    """input_ids (B, S_new) + host-made rope/mask/placement -> fp32 logits (B, V) at index `pick` (1,)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.cast = ops.Cast()

    def construct(self, input_ids, rope, mask, placement, pick):
        hidden = self.lm.model.forward_cached(input_ids, rope, mask, placement)          # (B, S_new, H)
        return self.lm.head(ops.gather(hidden, pick, 1)).squeeze(1)                      # (B, 1, V) -> (B, V)


def step_cell(model) -> CachedStep:
    cell = _STEP_CELLS.get(model)
    if cell is None:
        cell = _STEP_CELLS[model] = CachedStep(model)
        cell.set_train(False)
    return cell


class KVCacheSession:
    """Host-side bookkeeping for one batch: ids, padding, NTK regime and the inputs of each cached step."""

    def __init__(self, model, batch: int, max_len: int, dtype=None, exact_ntk: bool = True):
        if max_len > 2 ** 31 - 1 or max_len < 1:
            raise ValueError(f"max_len must be a positive int32, got {max_len}")
        self.model, self.config = model, model.config
        self.batch, self.max_len, self.exact_ntk = batch, max_len, exact_ntk
        self.ids = np.zeros((batch, 0), np.int32)                # every token fed so far (incl. left pads)
        self.key_valid = np.zeros((batch, max_len), dtype=bool)  # False for left pads and unwritten slots
        self.regime = None                                       # (base, mscale) the cache was built with
        self.rope = RopeSpec.from_config(self.config)
        self._table = None                                       # (regime, cos, sin) host rotary tables
        self.dtype = dtype or ms.float32
        model.model.enable_kv_cache(batch, max_len)
        self.step_fn = step_cell(model)

    @property
    def length(self) -> int:
        return self.ids.shape[1]

    def _regime(self, total: int):
        return rope_regime(self.rope, total)

    def _tables(self, total: int):
        """cos, sin (max_len, D) for the current rotary regime (`self.regime`, the one of `total`); a table
        depends only on (base, mscale) and the position, so it is built once per regime and sliced."""
        if self._table is None or self._table[0] != self.regime:
            cos, sin = rotary_tables(self.rope, total, 0, self.max_len)
            self._table = (self.regime, cos, sin)
        return self._table[1], self._table[2]

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        """Feed (B, S_new) ids (prefill: the left-padded prompts; decode: one token) -> last logits (B, V)."""
        bsz, new = input_ids.shape
        start, total = self.length, self.length + new
        if bsz != self.batch:
            raise ValueError(f"batch of {bsz} rows fed to a KV cache for {self.batch}")
        if total > self.max_len:
            raise ValueError(f"sequence of {total} tokens does not fit the KV cache (max_len={self.max_len})")
        valid = np.ones((bsz, new), bool) if attention_mask is None else attention_mask.astype(bool)
        self.key_valid[:, start:total] = valid
        self.ids = np.concatenate([self.ids, input_ids.astype(np.int32)], axis=1)
        regime = self._regime(total)
        if self.exact_ntk and self.regime is not None and regime != self.regime:
            start, new, feed = 0, self.max_len, np.pad(self.ids, ((0, 0), (0, self.max_len - total)))
        else:
            feed = input_ids
        self.regime = regime
        return self._run(feed.astype(np.int32), start, new, total)

    def _run(self, feed: np.ndarray, start: int, new: int, total: int) -> np.ndarray:
        """Write `feed` (B, new) at slots [start, start+new) and return the logits at position total-1."""
        cos, sin = self._tables(total)                                              # (max_len, D)
        cos_q, sin_q = (ms.Tensor(t[start:start + new], self.dtype) for t in (cos, sin))  # (new, D)
        cos_k, sin_k = ms.Tensor(cos, self.dtype), ms.Tensor(sin, self.dtype)
        slots = np.arange(self.max_len)
        causal = slots[None, :] <= (start + np.arange(new))[:, None]                 # (new, max_len)
        keep = causal[None, :, :] & self.key_valid[:, None, :]                       # (B, new, max_len)
        placement = np.zeros((new, self.max_len), np.float32)
        placement[np.arange(new), start + np.arange(new)] = 1.0                      # row i -> slot start+i
        # mutable: the tables change every step; as constants they would trigger a recompile per step
        logits = self.step_fn(ms.Tensor(feed), ms.mutable((cos_q, sin_q, cos_k, sin_k)),
                              ms.Tensor(~keep[:, None, :, :]), ms.Tensor(placement, self.dtype),
                              ms.Tensor([total - 1 - start], ms.int32))
        return logits.asnumpy()
