"""GPTQ / AWQ bit packing and our in-model quantized layout, in numpy (spec families.md §5).

HF layouts of a quantized Linear (in = K, out = N, b bits, p = 32 / b values per int32, G groups):
  GPTQ  qweight int32 [K/p, N]  value of input row k: bits [b*(k%p), +b) of qweight[k//p, n]   (LSB first)
        qzeros  int32 [G, N/p]  zero of (g, n): bits [b*(n%p), +b) of qzeros[g, n//p]
        scales        [G, N]    g_idx int32 [K] (group of input row k; NOT monotone with desc_act)
        zero-point:   checkpoint_format gptq (AutoGPTQ) stores zero-1 (dequant adds 1); gptq_v2 stores zero
  AWQ   qweight int32 [K, N/8]  qzeros int32 [G, N/8] packed along the OUTPUT axis in the order
        (0, 2, 4, 6, 1, 3, 5, 7): shift slot i holds column 8c + ORDER[i]; zero stored as is; group = k // size
  W_t[k, n] = scales[g(k), n] * (q[k, n] - z[g(k), n]);  the torch Linear weight is W_t transposed, (N, K).

Ours (one layout for every source; what the quantized layer holds, telechat_ms/quant/cells.py):
  qweight int8 (K, N) for 8 bit: q - 128;  (K, N/2) for 4 bit: two signed nibbles q - 8 per byte, the even
          output column in the low nibble (MindSpore's qint4x2 order)
  scale   (G, N) the source's scales, unchanged;  offset (G, N) same dtype: 2^(b-1) - zero, so that
          W_t = (qweight + offset) * scale, exactly the Ascend weight-quant matmul's antiquant formula
  perm    int32 (K,) (act order only): row j of qweight is input feature perm[j]; rows sorted by group,
          so group g is rows [g*size, (g+1)*size) -- the contiguous groups the Ascend kernel needs
Every b-bit field maps one to one, so a checkpoint converted to ours and back is bit-identical.
(q - z) is a small integer and scales have at most 11 significant bits, so scale * (q - z) is exact in fp32:
dequantizing in fp32 and rounding once to the output dtype is the exact float weight.
"""
from __future__ import annotations

import numpy as np

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)           # shift slot i holds column ORDER[i] of each 8-column pack
AWQ_SLOT = (0, 4, 1, 5, 2, 6, 3, 7)            # column j sits in shift slot SLOT[j] (the inverse order)


class PackingError(ValueError):
    """Values that cannot be stored in the requested packing (named by the caller)."""


def _words(words: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(words).view(np.uint32)


def unpack_rows(words: np.ndarray, bits: int) -> np.ndarray:
    """int32 (R, C) packed along rows (GPTQ qweight) -> uint8 (R*p, C)."""
    p, mask = 32 // bits, (1 << bits) - 1
    shifts = (np.arange(p, dtype=np.uint32) * bits)[None, :, None]                 # (1, p, 1)
    values = (_words(words)[:, None, :] >> shifts) & mask                           # (R, p, C)
    return values.reshape(-1, words.shape[1]).astype(np.uint8)                      # (R*p, C)


def pack_rows(values: np.ndarray, bits: int) -> np.ndarray:
    """uint8 (K, C) -> int32 (K/p, C), input row k in bits [b*(k%p), +b) of word k//p."""
    p = 32 // bits
    grouped = values.astype(np.uint32).reshape(-1, p, values.shape[1])              # (K/p, p, C)
    words = np.zeros((grouped.shape[0], values.shape[1]), np.uint32)
    for i in range(p):
        words |= grouped[:, i, :] << np.uint32(bits * i)
    return words.view(np.int32)


def _slots(bits: int, awq: bool) -> np.ndarray:
    return np.array(AWQ_SLOT if awq else range(32 // bits), dtype=np.uint32)


def unpack_cols(words: np.ndarray, bits: int, awq: bool = False) -> np.ndarray:
    """int32 (R, C) packed along columns (GPTQ qzeros; AWQ qweight / qzeros) -> uint8 (R, C*p)."""
    mask = (1 << bits) - 1
    shifts = (_slots(bits, awq) * bits)[None, None, :]                              # (1, 1, p)
    values = (_words(words)[:, :, None] >> shifts) & mask                           # (R, C, p): column j of pack
    return values.reshape(words.shape[0], -1).astype(np.uint8)                      # (R, C*p)


def pack_cols(values: np.ndarray, bits: int, awq: bool = False) -> np.ndarray:
    """uint8 (R, N) -> int32 (R, N/p), the inverse of unpack_cols."""
    p = 32 // bits
    grouped = values.astype(np.uint32).reshape(values.shape[0], -1, p)              # (R, N/p, p)
    words = np.zeros(grouped.shape[:2], np.uint32)
    for j, slot in enumerate(_slots(bits, awq)):
        words |= grouped[:, :, j] << np.uint32(bits * int(slot))
    return words.view(np.int32)


# ---------------------------------------------------------------- our layout


def to_ours(q: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned values (K, N) -> our int8 weight: q - 2^(b-1) (8 bit), or two such nibbles per byte (4 bit)."""
    flipped = q.astype(np.uint8) ^ np.uint8(1 << (bits - 1))       # two's complement of q - 2^(b-1) in b bits
    if bits == 8:
        return flipped.view(np.int8)
    if bits != 4:
        raise PackingError(f"our layout holds 4- or 8-bit weights, not {bits}-bit")
    return (flipped[:, 0::2] | (flipped[:, 1::2] << np.uint8(4))).view(np.int8)     # (K, N/2)


def from_ours(weight: np.ndarray, bits: int) -> np.ndarray:
    """Our int8 weight -> unsigned values (K, N) uint8."""
    raw = np.ascontiguousarray(weight).view(np.uint8)
    if bits == 4:
        raw = np.stack([raw & np.uint8(0x0F), raw >> np.uint8(4)], axis=-1).reshape(raw.shape[0], -1)  # (K, N)
    return raw ^ np.uint8(1 << (bits - 1))


def zero_values(stored: np.ndarray, fmt: str) -> np.ndarray:
    """The zero points the formula uses, from the stored fields: AutoGPTQ's v1 format stores zero-1."""
    return stored.astype(np.int32) + (1 if fmt == "gptq" else 0)


def stored_zeros(zeros: np.ndarray, bits: int, fmt: str) -> np.ndarray:
    """Inverse of zero_values; PackingError when a zero is outside what the format can store."""
    stored = zeros - (1 if fmt == "gptq" else 0)
    if stored.size and (stored.min() < 0 or stored.max() > (1 << bits) - 1):
        low, high = (1, 1 << bits) if fmt == "gptq" else (0, (1 << bits) - 1)
        raise PackingError(f"zero points must lie in [{low}, {high}] for {bits}-bit {fmt}, found "
                           f"[{int(zeros.min())}, {int(zeros.max())}]")
    return stored.astype(np.uint8)


def offsets(zeros: np.ndarray, bits: int) -> np.ndarray:
    """Our offset 2^(b-1) - zero (float32, exact small integers)."""
    return ((1 << (bits - 1)) - zeros).astype(np.float32)


def zeros_of(offset: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of offsets; PackingError for offsets that are not integers."""
    value = np.asarray(offset, np.float32)
    if not np.array_equal(value, np.round(value)):
        raise PackingError("offsets must be whole numbers (2^(bits-1) - zero point)")
    return (1 << (bits - 1)) - value.astype(np.int32)


def trivial_groups(in_features: int, group_size: int) -> np.ndarray:
    """k // group_size: the group of each input row without act order."""
    return (np.arange(in_features) // group_size).astype(np.int32)


def act_order_perm(g_idx: np.ndarray, group_size: int) -> np.ndarray:
    """Rows sorted by group (stable): perm (K,) int32. PackingError unless every group then fills
    exactly its rows [g*size, (g+1)*size) (the last may be shorter) -- how GPTQ assigns groups."""
    rows = g_idx.size
    groups = -(-rows // group_size)
    expected = np.minimum(group_size, rows - np.arange(groups) * group_size)
    counts = np.bincount(g_idx, minlength=groups)                 # g_idx values are checked to be in range
    bad = np.flatnonzero(counts != expected)
    if bad.size:
        g = int(bad[0])
        raise PackingError(f"group {g} has {int(counts[g])} input rows, expected {int(expected[g])}: every group "
                           f"must hold group_size ({group_size}) rows (the last may hold fewer)")
    return np.argsort(g_idx, kind="stable").astype(np.int32)


def groups_of_perm(perm: np.ndarray, group_size: int) -> np.ndarray:
    """g_idx from our permutation: input row perm[j] is in group j // group_size."""
    g_idx = np.empty(perm.size, np.int32)
    g_idx[perm] = trivial_groups(perm.size, group_size)
    return g_idx


def dequantize(q: np.ndarray, zeros: np.ndarray, scales: np.ndarray, g_idx: np.ndarray) -> np.ndarray:
    """W_t (K, N) float32 = scales[g_idx[k], n] * (q[k, n] - zeros[g_idx[k], n]), all in fp32 (exact)."""
    diff = q.astype(np.float32) - zeros.astype(np.float32)[g_idx]                   # (K, N) small integers
    return scales.astype(np.float32)[g_idx] * diff
