"""Rotary position embedding (rotate-half over the full head_dim) with each family's length rule: a small table
of named functions (total length -> base, mscale): TeleChat2/v1 dynamic NTK + mscale (spec §2.5), FLM's
theta x alpha, and HF Llama's fixed theta with linear / dynamic rope_scaling.

The cos/sin tables are a function of the (static) sequence length only, so they are computed on the host
with numpy, reproducing the HF arithmetic (fp32 inverse frequencies, fp16 rounding of cos/sin, mscale
multiplied in fp32 then rounded to fp16 again). In GRAPH_MODE the shape is a compile-time constant and the
table becomes a graph constant (MindSpore JIT fallback); in PYNATIVE_MODE it is computed per call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from mindspore import nn, ops
from mindspore.ops.auto_generate import RotaryPositionEmbedding

from ..config.model import ntk_alpha, ntk_mscale
from .kernels import Kernels


@dataclass(frozen=True)
class RopeSpec:
    """Everything that shapes the rotary tables, from the model config (one per model)."""
    head_dim: int
    variant: str                 # a key of ROPE_VARIANTS
    theta: float
    training_seqlen: int
    base_seqlen: int
    fp16_rounding: bool
    scaling: str = "none"        # none | linear | dynamic (HF Llama rope_scaling, variant "plain" only)
    scaling_factor: float = 1.0

    @classmethod
    def from_config(cls, config) -> "RopeSpec":
        return cls(config.head_dim, config.rope_variant, config.rope_theta, config.training_seqlen,
                   config.base_seqlen, config.rotary_fp16_rounding, config.rope_scaling, config.rope_scaling_factor)


def _telechat(spec: RopeSpec, total_len: int) -> tuple[float, float]:
    """TeleChat2 (spec §2.5) and v1 (its hard-coded divisor is our base_seqlen): dynamic NTK with the d/(d-2)
    exponent on alpha, mscale past training_seqlen."""
    alpha = ntk_alpha(total_len, spec.training_seqlen, spec.base_seqlen)
    return spec.theta * alpha ** (spec.head_dim / (spec.head_dim - 2)), ntk_mscale(total_len, spec.training_seqlen)


def _flm(spec: RopeSpec, total_len: int) -> tuple[float, float]:
    """TeleChat-52B / FLM: base = theta * alpha (no exponent), alpha from the total length over base_seqlen
    (4096), no clamp to a training length, no mscale (spec families.md §2)."""
    return spec.theta * ntk_alpha(total_len, 0, spec.base_seqlen), 1.0


def _plain(spec: RopeSpec, total_len: int) -> tuple[float, float]:
    """HF Llama: fixed theta; rope_scaling dynamic grows the base past base_seqlen (max_position_embeddings)
    as transformers' dynamic NTK does for a forward of `total_len` positions."""
    if spec.scaling == "dynamic" and total_len > spec.base_seqlen:
        factor = spec.scaling_factor * total_len / spec.base_seqlen - (spec.scaling_factor - 1)
        return spec.theta * factor ** (spec.head_dim / (spec.head_dim - 2)), 1.0
    return spec.theta, 1.0


# the named rotary rules of docs/models.md: (spec, total length) -> (base, mscale)
ROPE_VARIANTS: dict[str, Callable[[RopeSpec, int], tuple[float, float]]] = {
    "telechat2": _telechat, "telechat1": _telechat, "flm": _flm, "plain": _plain,
}


def rope_regime(spec: RopeSpec, total_len: int) -> tuple[float, float]:
    """(base, mscale) for a sequence of `total_len` positions: when it changes, cached keys are stale."""
    return ROPE_VARIANTS[spec.variant](spec, total_len)


def rotary_tables(spec: RopeSpec, total_len: int, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of shape (length, head_dim) for positions [start, start+length) of a sequence whose total
    (past + new) length is `total_len`; base and mscale follow HF's per-forward recomputation."""
    base, mscale = rope_regime(spec, total_len)
    mscale = np.float32(mscale)
    exponent = np.arange(0, spec.head_dim, 2, dtype=np.float32) / np.float32(spec.head_dim)
    inv_freq = (np.float32(1.0) / (np.float32(base) ** exponent)).astype(np.float32)   # (head_dim/2,)
    if spec.scaling == "linear":
        inv_freq = (inv_freq / np.float32(spec.scaling_factor)).astype(np.float32)     # HF: inv_freq / factor
    positions = np.arange(start, start + length, dtype=np.float32)
    freqs = np.outer(positions, inv_freq).astype(np.float32)                          # (length, head_dim/2)
    emb = np.concatenate([freqs, freqs], axis=-1)                                     # (length, head_dim)
    # fp64 then fp32: the correctly rounded fp32 cos/sin that torch's fp32 kernels produce (to ~1 ulp)
    cos, sin = np.cos(emb.astype(np.float64)).astype(np.float32), np.sin(emb.astype(np.float64)).astype(np.float32)
    if spec.fp16_rounding:
        cos = (cos.astype(np.float16).astype(np.float32) * mscale).astype(np.float16).astype(np.float32)
        sin = (sin.astype(np.float16).astype(np.float32) * mscale).astype(np.float16).astype(np.float32)
    else:
        cos, sin = cos * mscale, sin * mscale
    return cos, sin


class RotaryEmbedding(nn.Cell):
    """Applies rotate-half RoPE over the full head_dim with the tables it is given (RopeTables builds them for a
    forward, the decoding sessions on the host).

    Plain path: the halves come from one Split, and tables not already of x's shape (the serving slots' per-token
    (B, 1, S, D) ones) are expanded with Tile, so the products run on equal shapes. Ascend:
    RotaryPositionEmbedding (rotate-half mode) on (1, 1, S, D) tables.
    """

    def __init__(self, spec: RopeSpec, kernels: Kernels = Kernels()):
        super().__init__()
        self.spec = spec
        self.fused = kernels.fused_rope
        self.mul_cos = ops.Mul()
        self.mul_sin = ops.Mul()
        self.add = ops.Add()
        self.neg = ops.Neg()
        self.concat = ops.Concat(axis=-1)
        self.split_half = ops.Split(axis=-1, output_num=2)
        self.tile_cos = ops.Tile()
        self.tile_sin = ops.Tile()
        self.reshape = ops.Reshape()
        if self.fused:
            self.rope = RotaryPositionEmbedding()

    @classmethod
    def from_config(cls, config, kernels: Kernels = Kernels()) -> "RotaryEmbedding":
        return cls(RopeSpec.from_config(config), kernels)

    def construct(self, x, cos, sin):
        """x (B, N, S, D), cos/sin (S, D) or per token (B, 1, S, D) -> x*cos + rotate_half(x)*sin."""
        if self.fused:
            if cos.ndim == 2:                                                          # (S, D) -> (1, 1, S, D)
                cos = self.reshape(cos, (1, 1) + cos.shape)
                sin = self.reshape(sin, (1, 1) + sin.shape)
            return self.rope(x, cos, sin, 0)
        if cos.shape != x.shape:                       # decoding paths pass (S, D) / (B, 1, S, D) tables
            cos, sin = expand_tables(self.tile_cos, self.tile_sin, self.reshape, cos, sin, x.shape)
        x1, x2 = self.split_half(x)                                                   # (B, N, S, D/2) each
        rotated = self.concat((self.neg(x2), x1))                                     # (B, N, S, D)
        return self.add(self.mul_cos(x, cos), self.mul_sin(rotated, sin))

    def shard(self, parallel) -> None:
        """(B, N, S, D) split (dp, mp) on batch and heads; the tables are replicated."""
        from ..parallel.strategies import shard_cell   # pylint: disable=import-outside-toplevel
        shard_cell(self, parallel)


def expand_tables(tile_cos, tile_sin, reshape, cos, sin, shape):
    """cos, sin of (S, D) or per token (B, 1, S, D) -> `shape` (B, N, S, D) with the given Tile primitives."""
    if cos.ndim == 2:
        cos, sin = reshape(cos, (1, 1) + cos.shape), reshape(sin, (1, 1) + sin.shape)    # (1, 1, S, D)
    multiples = tuple(want // have for want, have in zip(shape, cos.shape))
    return tile_cos(cos, multiples), tile_sin(sin, multiples)
