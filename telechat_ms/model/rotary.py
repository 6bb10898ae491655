"""Rotary position embedding with TeleChat2's dynamic NTK + mscale rule (spec §2.5).

The cos/sin tables are a function of the (static) sequence length only, so they are computed on the host
with numpy, reproducing the HF arithmetic (fp32 inverse frequencies, fp16 rounding of cos/sin, mscale
multiplied in fp32 then rounded to fp16 again). In GRAPH_MODE the shape is a compile-time constant and the
table becomes a graph constant (MindSpore JIT fallback); in PYNATIVE_MODE it is computed per call.
"""
from __future__ import annotations

import numpy as np
from mindspore import Tensor, nn, ops

from ..config.model import ntk_alpha, ntk_mscale
from .kernels import Kernels


def rotary_tables(total_len: int, start: int, length: int, head_dim: int, training_seqlen: int,
                  base_seqlen: int, theta: float, fp16_rounding: bool) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of shape (length, head_dim) for positions [start, start+length) of a sequence whose total
    (past + new) length is `total_len`; alpha and mscale follow HF's per-forward recomputation."""
    alpha = ntk_alpha(total_len, training_seqlen, base_seqlen)
    mscale = np.float32(ntk_mscale(total_len, training_seqlen))
    base = theta * alpha ** (head_dim / (head_dim - 2))                               # python double, as HF
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / (np.float32(base) ** exponent)).astype(np.float32)   # (head_dim/2,)
    positions = np.arange(start, start + length, dtype=np.float32)
    freqs = np.outer(positions, inv_freq).astype(np.float32)                          # (length, head_dim/2)
    emb = np.concatenate([freqs, freqs], axis=-1)                                     # (length, head_dim)
    # fp64 then fp32: the correctly rounded fp32 cos/sin that torch's fp32 kernels produce (to ~1 ulp)
    cos, sin = np.cos(emb.astype(np.float64)).astype(np.float32), np.sin(emb.astype(np.float64)).astype(np.float32)
    if fp16_rounding:
        cos = (cos.astype(np.float16).astype(np.float32) * mscale).astype(np.float16).astype(np.float32)
        sin = (sin.astype(np.float16).astype(np.float32) * mscale).astype(np.float16).astype(np.float32)
    else:
        cos, sin = cos * mscale, sin * mscale
    return cos, sin


class RotaryEmbedding(nn.Cell):
    """Returns cos/sin tables for a sequence and applies rotate-half RoPE over the full head_dim."""

    def __init__(self, head_dim: int, training_seqlen: int, base_seqlen: int, theta: float,
                 fp16_rounding: bool, kernels: Kernels = Kernels()):
        super().__init__()
        self.head_dim = head_dim
        self.training_seqlen = training_seqlen
        self.base_seqlen = base_seqlen
        self.theta = theta
        self.fp16_rounding = fp16_rounding
        self.fused = kernels.fused_rope
        self.half = head_dim // 2
        self.cast = ops.Cast()
        self.mul_cos = ops.Mul()
        self.mul_sin = ops.Mul()
        self.add = ops.Add()
        self.neg = ops.Neg()
        self.concat = ops.Concat(axis=-1)

    @classmethod
    def from_config(cls, config, kernels: Kernels = Kernels()) -> "RotaryEmbedding":
        return cls(config.head_dim, config.training_seqlen, config.base_seqlen, config.rope_theta,
                   config.rotary_fp16_rounding, kernels)

    def tables(self, seq_len: int, dtype, ntk_len: int = 0):
        """cos, sin (seq_len, head_dim) for positions 0..seq_len-1; NTK alpha/mscale from `ntk_len`
        (default: seq_len, the HF rule for a full forward)."""
        cos, sin = rotary_tables(ntk_len or seq_len, 0, seq_len, self.head_dim, self.training_seqlen,
                                 self.base_seqlen, self.theta, self.fp16_rounding)
        return self.cast(Tensor(cos), dtype), self.cast(Tensor(sin), dtype)

    def construct(self, x, cos, sin):
        """x (B, N, S, D), cos/sin (S, D) or per token (B, 1, S, D) -> x*cos + rotate_half(x)*sin."""
        if self.fused:
            if cos.ndim == 2:                                                          # (S, D) -> (1, 1, S, D)
                cos, sin = cos.reshape(1, 1, cos.shape[0], -1), sin.reshape(1, 1, sin.shape[0], -1)
            return ops.rotary_position_embedding(x, cos, sin, 0)
        x1 = x[..., :self.half]                                                       # (B, N, S, D/2)
        x2 = x[..., self.half:]
        rotated = self.concat((self.neg(x2), x1))                                     # (B, N, S, D)
        return self.add(self.mul_cos(x, cos), self.mul_sin(rotated, sin))

    def shard(self, parallel) -> None:
        """(B, N, S, D) split (dp, mp) on batch and heads; the tables are replicated."""
        from ..parallel.strategies import shard_cell   # pylint: disable=import-outside-toplevel
        shard_cell(self, parallel)
