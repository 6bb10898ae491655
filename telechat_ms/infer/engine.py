"""Incremental decoding with a static-shape KV cache: prefill once, then one-token decode steps.

Graph-friendly: the cache is pre-allocated for `max_len` positions, so a batch compiles at most three graph
shapes (prefill (B, S_prompt), decode (B, 1), recompute (B, max_len)). Every data-dependent input is computed
on the host and passed in: the rotary tables for the current total length L (dynamic NTK alpha and mscale of
spec §2.5), the mask (B, 1, S_new, max_len) (causal, left padding, unwritten slots), the write indices (B, N_kv, S_new, 3) of the
new keys/values' cache slots, and the position whose logits are returned. The rotary tables arrive already
expanded to the query (B, N, S_new, D) and key (B, N_kv, max_len, D) shapes: on the CPU every graph op costs
~13 us of dispatch besides its kernel, so the per-layer Tile/Reshape of (S, D) tables would add 32 ops a step.

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

from ..model.kv_cache import write_indices
from ..model.rotary import RopeSpec, rope_regime, rotary_tables

# the compiled step cells of each model (kept outside the model's cell tree: a step cell owns the model):
# model -> (key buffer, dtype, step cell, decode cell)
_STEP_CELLS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class CachedStep(nn.Cell):
    """input_ids (B, S_new) + host-made rope/mask/write indices -> fp32 logits (B, V) at index `pick` (1,)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.cast = ops.Cast()

    def construct(self, input_ids, rope, mask, placement, pick):
        hidden = self.lm.model.forward_cached(input_ids, rope, mask, placement)          # (B, S_new, H)
        return self.lm.head(ops.gather(hidden, pick, 1)).squeeze(1)                      # (B, 1, V) -> (B, V)


def step_cells(model, dtype) -> tuple[CachedStep, CachedStep]:
    """(step cell, one-token decode cell) bound to the model's current KV cache buffers.

    New buffers (enable_kv_cache with another batch or max_len) need new cells: a compiled graph stays bound to
    the Parameter objects it was compiled with, and a cell called again with the shapes of an earlier graph
    reuses that graph -- which would then write the old buffers while the new ones are read.

    The decode cell runs on MindSpore's "increment" phase: in graph mode every Cell call re-derives the graph key
    and sets the compile phase on every sub-cell of the model (Python work that grows with the layer count:
    1.2 ms a step for 4 layers on the CPU), while a compiled cell whose phase is "increment" runs its cached
    graph directly (mindspore Cell._predict, as MindFormers' incremental inference does). That graph is reused
    without any shape check, so the cell serves one signature only: batch, max_len, buffers (fixed with the
    cells), the rotary tables' dtype and one new token per step."""
    cache = model.model.layers[0].attention.kv_cache.key_cache
    known = _STEP_CELLS.get(model)
    # the buffer object itself, not its id(): a freed buffer's id is reused by the next one
    if known is None or known[0] is not cache or known[1] != dtype:
        step, decode = CachedStep(model), CachedStep(model)
        step.set_train(False)
        decode.set_train(False)
        decode.phase = "increment"       # after set_train, which sets "predict"
        known = _STEP_CELLS[model] = (cache, dtype, step, decode)
    return known[2], known[3]


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
        self._table = None                 # (regime, cos, sin, cos_k, sin_k): host tables and key tensors
        self.dtype = dtype or ms.float32
        model.model.enable_kv_cache(batch, max_len)
        self.step_fn, self.decode_fn = step_cells(model, self.dtype)   # decode_fn: one new token

    @property
    def length(self) -> int:
        return self.ids.shape[1]

    def _regime(self, total: int):
        return rope_regime(self.rope, total)

    def _tables(self, total: int, kv_heads: int):
        """Host cos, sin (max_len, D) for the current rotary regime (`self.regime`, the one of `total`) and the
        key tables made of them, (B, N_kv, max_len, D) tensors: a table depends only on (base, mscale) and the
        position, so both are built once per regime (the host tables are sliced for the queries)."""
        if self._table is None or self._table[0] != self.regime:
            cos, sin = rotary_tables(self.rope, total, 0, self.max_len)
            key = (self.batch, kv_heads) + cos.shape
            keys = tuple(ms.Tensor(np.broadcast_to(t, key), self.dtype) for t in (cos, sin))   # (B, N_kv, M, D)
            self._table = (self.regime, cos, sin) + keys
        return self._table[1:]

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
        # this rank's heads (a tensor-parallel model's .config is the global one)
        attention = self.model.model.layers[0].attention
        bsz, heads, kv_heads = self.batch, attention.num_heads, attention.num_kv_heads
        cos, sin, cos_k, sin_k = self._tables(total, kv_heads)                      # host (max_len, D) + keys
        query = (bsz, heads, new, cos.shape[1])
        cos_q, sin_q = (ms.Tensor(np.broadcast_to(t[start:start + new], query), self.dtype) for t in (cos, sin))
        slots = np.arange(self.max_len)
        causal = slots[None, :] <= (start + np.arange(new))[:, None]                 # (new, max_len)
        keep = causal[None, :, :] & self.key_valid[:, None, :]                       # (B, new, max_len)
        indices = write_indices(bsz, kv_heads, start + np.arange(new))               # (B, N_kv, new, 3)
        # mutable: the tables change every step; as constants they would trigger a recompile per step
        step = self.decode_fn if new == 1 else self.step_fn
        logits = step(ms.Tensor(feed), ms.mutable((cos_q, sin_q, cos_k, sin_k)), ms.Tensor(~keep[:, None, :, :]),
                      ms.Tensor(indices), ms.Tensor([total - 1 - start], ms.int32))
        return logits.asnumpy()
