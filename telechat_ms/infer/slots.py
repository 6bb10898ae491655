"""A slot-based KV cache for serving: `slots` independent sequences decoded together, one forward per step.

KVCacheSession (engine.py) decodes one left-padded batch that starts and ends together. A server needs
continuous batching: a request takes a free slot (one row of the static (slots, n_kv, max_len, head_dim)
caches), and when it finishes the slot is free for the next request while the others keep decoding. So every
slot has its own length, its own positions and its own rotary regime:

* **Per-row placement.** New keys/values are written through a one-hot placement (slots, S, max_len) — row b's
  token i goes to column `written_b + i` of row b only (SlotKVCache, installed on each attention layer in place
  of the model's KVCache; KVCacheSession's int32 write indices still work). Slot b's token at position p lives in column
  p, exactly as in a batch-1 KVCacheSession, so a slot computes what generate() computes for that prompt alone.
* **Per-row masks and rotary tables.** Mask (slots, 1, S, max_len): query i of row b sees columns
  <= its position. Rotary tables are per token, (slots, 1, S, D) for queries and (slots, 1, max_len, D) for the
  keys (stored before rotary, rotated at attention time), each from the slot's own total length.
* **Dynamic NTK per slot** (as KVCacheSession with exact_ntk=True): when a slot's (base, mscale) regime
  differs from the one its cache was built with, that slot alone is recomputed — its whole sequence is fed
  again from column 0 (in chunks), which equals HF's uncached forward. Other slots are unaffected.
  exact_ntk=False keeps stale hidden states (fast, approximate past training_seqlen).
* **Mixed steps, static shapes.** One step feeds every slot with pending tokens: decoding slots one token,
  slots in prefill (or NTK recompute) up to `chunk` tokens (chunked prefill: a long prompt never stalls the
  decoding slots for more than one chunk). The step width is bucketed (1, then powers of two up to
  min(chunk, max_len)), so at most ~log2(chunk) + 2 graphs are compiled. Rows without pending tokens are fed
  padding that writes nothing. Idle rows cost compute (the batch is static), never correctness.
"""
from __future__ import annotations

import weakref

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from ..model.kv_cache import KVCache
from ..model.rotary import RopeSpec, rope_regime, rotary_tables

_SLOT_STEP_CELLS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class SlotKVCache(KVCache):
    """KVCache whose writes may be per row: a one-hot placement (B, S_new, max_len) (rows without pending tokens
    write nothing). Int32 write indices (B, N_kv, S_new, 3) are written as KVCache does, so a KVCacheSession on
    the same model keeps working (not at the same time: one buffer)."""

    def __init__(self, batch: int, num_kv_heads: int, max_len: int, head_dim: int, dtype):
        super().__init__(batch, num_kv_heads, max_len, head_dim, dtype)
        self.batch_matmul = ops.BatchMatMul()
        self.transpose = ops.Transpose()
        self.reshape = ops.Reshape()
        self.assign = ops.Assign()

    def construct(self, k, v, placement):
        if placement.dtype == ms.int32:
            return super().construct(k, v, placement)
        return self._write(self.key_cache, k, placement), self._write(self.value_cache, v, placement)

    def _write(self, cache, new, placement):
        bsz, heads, seq, dim = new.shape
        moved = self.reshape(self.transpose(new, (0, 1, 3, 2)), (bsz, heads * dim, seq))     # (B, Nkv*D, S)
        placed = self.batch_matmul(moved, placement)                                         # (B, Nkv*D, M)
        placed = self.reshape(placed, (bsz, heads, dim, self.max_len))                       # (B, Nkv, D, M)
        placed = self.transpose(placed, (0, 1, 3, 2))                                        # (B, Nkv, M, D)
        keep = 1.0 - placement.sum(axis=1).reshape(bsz, 1, self.max_len, 1)                 # (B, 1, M, 1)
        full = cache * keep.astype(cache.dtype) + placed
        self.assign(cache, full)
        return full


def attach_slot_caches(model, slots: int, max_len: int) -> bool:
    """Give every attention layer a SlotKVCache of (slots, n_kv, max_len, head_dim); True when new buffers were
    made (then compiled step graphs, which hold the old buffers, must not be reused)."""
    created = False
    for layer in model.model.layers:
        attention = layer.attention
        heads, dim, dtype = attention.cache_shape
        current = attention.kv_cache
        if isinstance(current, SlotKVCache) and current.key_cache.shape == (slots, heads, max_len, dim):
            continue
        cache = SlotKVCache(slots, heads, max_len, dim, dtype)
        prefix = attention.wq.weight.name[: -len("wq.weight")] + "kv_cache."          # model.layers.{i}.attention.
        cache.key_cache.name, cache.value_cache.name = prefix + "key_cache", prefix + "value_cache"
        attention.kv_cache = cache
        created = True
    return created


class SlotStep(nn.Cell):
    """input_ids (B, S) + host-made rope/mask/placement -> fp32 logits (B, V) at per-row index `pick` (B,)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def construct(self, input_ids, rope, mask, placement, pick):
        hidden = self.lm.model.forward_cached(input_ids, rope, mask, placement)          # (B, S, H)
        bsz, seq, width = hidden.shape
        rows = ops.arange(0, bsz, dtype=ms.int32) * seq + pick                           # (B,) flat index
        last = ops.gather(hidden.reshape(bsz * seq, width), rows, 0)                     # (B*S, H) -> (B, H)
        return self.lm.head(last)                                                        # (B, V)


def slot_step_cell(model, fresh: bool = False) -> SlotStep:
    """The model's step cell (its compiled graphs are reused); `fresh` after new cache buffers were attached."""
    cell = _SLOT_STEP_CELLS.get(model)
    if cell is None or fresh:
        cell = _SLOT_STEP_CELLS[model] = SlotStep(model)
        cell.set_train(False)
    return cell


def step_width(longest: int, cap: int) -> int:
    """Bucketed step width: 1, else the next power of two (at most `cap`): few compiled graph shapes."""
    if longest <= 1:
        return 1
    return min(cap, 1 << (longest - 1).bit_length())


class SlotSession:
    """Host bookkeeping of `slots` independent sequences sharing one static KV cache.

    start(slot, ids) puts a prompt into a free slot, append(slot, token) adds a decoded token, release(slot)
    frees it; step() runs one forward for every slot with pending tokens and returns {slot: logits (V,)} for
    the slots whose pending tokens are all written (a long prompt may need several steps)."""

    def __init__(self, model, slots: int, max_len: int, dtype=None, exact_ntk: bool = True, chunk: int = 256):
        if slots < 1 or max_len < 1 or chunk < 1:
            raise ValueError(f"slots ({slots}), max_len ({max_len}) and chunk ({chunk}) must be >= 1")
        self.model, self.slots, self.max_len, self.exact_ntk = model, slots, max_len, exact_ntk
        self.cap = min(chunk, max_len)
        self.dtype = dtype or ms.float32
        self.rope = RopeSpec.from_config(model.config)
        self.seqs: list[list[int] | None] = [None] * slots       # every token of the slot's sequence
        self.written = [0] * slots                                # columns [0, written) hold valid keys
        self.regime: list[tuple | None] = [None] * slots          # (base, mscale) the slot's cache was built with
        self._tables: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}   # regime -> cos, sin (max_len, D)
        self._keys = None                                         # (row regimes, cos_k, sin_k) sent last step
        fresh = attach_slot_caches(model, slots, max_len)
        self.caches = [layer.attention.kv_cache for layer in model.model.layers]
        self.step_fn = slot_step_cell(model, fresh)

    # ---- slot lifecycle ------------------------------------------------------------------------------
    def free_slots(self) -> list[int]:
        return [s for s in range(self.slots) if self.seqs[s] is None]

    def start(self, slot: int, ids) -> None:
        ids = [int(t) for t in ids]
        if self.seqs[slot] is not None:
            raise ValueError(f"slot {slot} is in use")
        if not ids or len(ids) > self.max_len:
            raise ValueError(f"prompt of {len(ids)} tokens does not fit the KV cache (max_len={self.max_len})")
        self.seqs[slot], self.written[slot], self.regime[slot] = ids, 0, None

    def append(self, slot: int, token: int) -> None:
        seq = self.seqs[slot]
        if seq is None:
            raise ValueError(f"slot {slot} is free")
        if len(seq) >= self.max_len:
            raise ValueError(f"slot {slot} is full (max_len={self.max_len})")
        seq.append(int(token))

    def release(self, slot: int) -> None:
        """Free a slot; its cache columns are simply overwritten by the next sequence (masks hide the rest)."""
        self.seqs[slot], self.written[slot], self.regime[slot] = None, 0, None

    def length(self, slot: int) -> int:
        return len(self.seqs[slot] or ())

    def pending(self) -> bool:
        return any(seq is not None and len(seq) > self.written[s] for s, seq in enumerate(self.seqs))

    # ---- one forward ---------------------------------------------------------------------------------
    def _table(self, regime: tuple, total: int):
        if regime not in self._tables:
            self._tables[regime] = rotary_tables(self.rope, total, 0, self.max_len)        # (max_len, D) each
        return self._tables[regime]

    def _feeds(self) -> dict[int, tuple[int, int]]:
        """{slot: (first column, count)} to write this step; an NTK regime change restarts the slot at 0."""
        feeds = {}
        for slot, seq in enumerate(self.seqs):
            if seq is None or len(seq) == self.written[slot]:
                continue
            regime = rope_regime(self.rope, len(seq))
            if self.exact_ntk and self.regime[slot] is not None and regime != self.regime[slot]:
                self.written[slot] = 0                     # stale hidden states: recompute the whole slot
            self.regime[slot] = regime
            start = self.written[slot]
            feeds[slot] = (start, min(len(seq) - start, self.cap))
        return feeds

    def _key_tables(self, feeds):
        """cos, sin (slots, 1, max_len, D) device tensors for the keys: one table per row (its regime; idle rows
        borrow one). Cached while the rows' regimes stay the same, so a decode step neither rebuilds nor
        re-sends the largest inputs (slots x max_len x D each)."""
        regimes = [self.regime[s] if s in feeds else None for s in range(self.slots)]   # tables made by _inputs
        fill = next(r for r in regimes if r is not None)
        key = tuple(r if r is not None else fill for r in regimes)
        if self._keys is None or self._keys[0] != key:
            cos = np.stack([self._tables[r][0] for r in key])[:, None]                   # (B, 1, M, D)
            sin = np.stack([self._tables[r][1] for r in key])[:, None]
            self._keys = (key, ms.Tensor(cos, self.dtype), ms.Tensor(sin, self.dtype))
        return self._keys[1], self._keys[2]

    def _inputs(self, feeds, width: int):
        """ids (B, S), placement (B, S, M), mask (B, 1, S, M), query tables (B, 1, S, D), pick (B,)."""
        bsz, cols, dim = self.slots, self.max_len, self.rope.head_dim
        ids = np.zeros((bsz, width), np.int32)
        placement = np.zeros((bsz, width, cols), np.float32)
        keep = np.zeros((bsz, width, cols), bool)
        keep[:, :, 0] = True                          # padding queries see column 0: finite, ignored output
        cos_q, sin_q = np.zeros((bsz, 1, width, dim), np.float32), np.zeros((bsz, 1, width, dim), np.float32)
        pick = np.zeros(bsz, np.int32)
        for slot, (start, count) in feeds.items():
            seq = self.seqs[slot]
            pos = start + np.arange(count)
            ids[slot, :count] = seq[start:start + count]
            placement[slot, np.arange(count), pos] = 1.0                              # token i -> column pos[i]
            keep[slot, :count] = np.arange(cols)[None, :] <= pos[:, None]             # causal within the slot
            cos, sin = self._table(self.regime[slot], len(seq))
            cos_q[slot, 0, :count], sin_q[slot, 0, :count] = cos[pos], sin[pos]
            pick[slot] = count - 1
        return ids, placement, ~keep[:, None], cos_q, sin_q, pick

    def step(self) -> dict[int, np.ndarray]:
        if any(layer.attention.kv_cache is not cache for layer, cache in zip(self.model.model.layers, self.caches)):
            raise RuntimeError("the model's KV caches were replaced (another session ran on this model): start a "
                               "new SlotSession")
        feeds = self._feeds()
        if not feeds:
            return {}
        width = step_width(max(count for _, count in feeds.values()), self.cap)
        ids, placement, mask, cos_q, sin_q, pick = self._inputs(feeds, width)
        cos_k, sin_k = self._key_tables(feeds)
        rope = ms.mutable((ms.Tensor(cos_q, self.dtype), ms.Tensor(sin_q, self.dtype), cos_k, sin_k))
        logits = self.step_fn(ms.Tensor(ids), rope, ms.Tensor(mask), ms.Tensor(placement, self.dtype),
                              ms.Tensor(pick)).asnumpy()
        done = {}
        for slot, (start, count) in feeds.items():
            self.written[slot] = start + count
            if self.written[slot] == len(self.seqs[slot]):
                done[slot] = logits[slot]
        return done
