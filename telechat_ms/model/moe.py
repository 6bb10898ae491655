"""Mixture-of-Experts MLP of TeleChat2-39B-A12B (spec §4): fp32 top-k router, capacity dispatch, stacked experts.

Same interface as the dense MLP: x (B, S, H) -> (y (B, S, H), aux_loss fp32 scalar).

Static-graph formulation (every shape is known at compile time, which Ascend graph mode needs):
  1. router: logits = W_r x in fp32 (N, E); probs = softmax over all E; top-k; renormalise; scale.
  2. dispatch: each of the k*N assignments gets a position in its expert's queue, counted in choice-rank-major
     order (all tokens' first choices in token order, then all second choices, ...). Positions >= capacity
     are dropped. Kept assignments fill slots (expert, position) of an (E, C, H) buffer via a gather.
  3. experts: SwiGLU with down bias on the (E, C, H) buffer by batched matmul over the leading expert axis.
  4. combine: every assignment gathers its slot's output (a zero row when dropped) times its routing weight;
     the k terms of a token are summed. The expert bias is therefore weighted by the routing weight.
Chunks (`moe_chunks`) run steps 2-4 per slice of the sequence axis, one after the other. Parallel layouts are
set in `shard()` by telechat_ms.parallel; construct() holds single-device math only. See docs/moe.md.
"""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, Zero, initializer

from .dtypes import to_ms_dtype
from .linear import Linear

NORM_EPS = 1e-9   # top-k renormalisation: w / (sum + 1e-9) (spec §4.2)


def expert_capacity(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float, dropping: bool,
                    multiple: int = 1) -> int:
    """Slots per expert for `num_tokens` tokens: ceil(k*N*factor/E) clipped to N, or N when dropless.

    `multiple` rounds the result up (a parallel layout may need C divisible by its split of the slot axis).
    Called inside construct with compile-time constants, so it is evaluated once at graph build time.
    """
    if dropping:
        # round() first: float noise such as 24.000000000000004 must not add a slot
        capacity = min(int(math.ceil(round(top_k * num_tokens * capacity_factor / num_experts, 6))), num_tokens)
    else:
        capacity = num_tokens
    return -(-capacity // multiple) * multiple


class Router(nn.Cell):
    """fp32 Linear(H -> E) without bias, softmax over all experts, top-k, renormalisation, scaling."""

    def __init__(self, config):
        super().__init__()
        self.num_experts, self.top_k = config.num_experts, config.num_experts_per_tok
        # computed in fp32 whatever the model dtype (router_dense_type float32 in the official port)
        self.dense = Linear(config.hidden_size, config.num_experts, False, ms.float32,
                            to_ms_dtype(config.param_dtype), config.initializer_range)
        self.norm_topk_prob = config.norm_topk_prob
        self.scaling = config.routed_scaling_factor
        self.cast = ops.Cast()
        self.softmax = ops.Softmax(axis=-1)
        self.topk = ops.TopK(sorted=True)
        self.sum_keep = ops.ReduceSum(keep_dims=True)
        self.div = ops.RealDiv()
        self.mul = ops.Mul()

    def construct(self, x):
        """x (N, H) -> logits (N, E) fp32, probs (N, E) fp32, weights (N, k) fp32, experts (N, k) int32."""
        logits = self.dense(self.cast(x, ms.float32))                                   # (N, E)
        probs = self.softmax(logits)                                                    # (N, E)
        weights, experts = self.topk(probs, self.top_k)                                 # (N, k) each
        if self.norm_topk_prob:
            weights = self.div(weights, self.sum_keep(weights, -1) + NORM_EPS)
        if self.scaling != 1.0:
            weights = self.mul(weights, self.scaling)
        return logits, probs, weights, self.cast(experts, ms.int32)

    def shard(self, parallel) -> None:
        """Set by the parent MoE cell: telechat_ms.parallel.moe_layout.shard_moe covers every sub-cell."""


class ExpertLinear(nn.Cell):
    """E independent linears stacked on a leading axis: x (E, C, in) -> (E, C, out); weight (E, out, in)."""

    def __init__(self, num_experts: int, in_features: int, out_features: int, has_bias: bool, compute_dtype,
                 param_dtype, init_std: float):
        super().__init__()
        self.weight = Parameter(initializer(Normal(init_std), (num_experts, out_features, in_features),
                                            param_dtype), name="weight")
        self.has_bias = has_bias
        if has_bias:
            # (E, out): one HF down_proj.bias per expert stacked (convert/names.py)
            self.bias = Parameter(initializer(Zero(), (num_experts, out_features), param_dtype), name="bias")
            self.bias_add = ops.Add()
            self.expand = ops.ExpandDims()
        self.compute_dtype = compute_dtype
        self.cast = ops.Cast()
        # torch (out, in) layout per expert, so y = x @ W^T; BatchMatMul does not broadcast on CPU, both are 3-D
        self.bmm = ops.BatchMatMul(transpose_b=True)

    def construct(self, x):
        y = self.bmm(self.cast(x, self.compute_dtype), self.cast(self.weight, self.compute_dtype))  # (E, C, out)
        if self.has_bias:
            bias = self.expand(self.cast(self.bias, self.compute_dtype), 1)            # (E, 1, out)
            y = self.bias_add(y, bias)
        return y

    def shard(self, parallel) -> None:
        """Set by the parent MoE cell: telechat_ms.parallel.moe_layout.shard_moe covers every sub-cell."""


class Experts(nn.Cell):
    """SwiGLU experts w2(silu(w1 x) * w3 x) + b2 on a dispatched buffer (E, C, H) -> (E, C, H)."""

    def __init__(self, config):
        super().__init__()
        compute, param = to_ms_dtype(config.compute_dtype), to_ms_dtype(config.param_dtype)
        e, h, f, std = config.num_experts, config.hidden_size, config.ffn_hidden_size, config.initializer_range
        self.w1 = ExpertLinear(e, h, f, False, compute, param, std)     # gate_proj
        self.w3 = ExpertLinear(e, h, f, False, compute, param, std)     # up_proj
        self.w2 = ExpertLinear(e, f, h, True, compute, param, std)      # down_proj (+ bias)
        self.silu = nn.SiLU()
        self.mul = ops.Mul()

    def construct(self, x):
        return self.w2(self.mul(self.silu(self.w1(x)), self.w3(x)))

    def shard(self, parallel) -> None:
        """Set by the parent MoE cell: telechat_ms.parallel.moe_layout.shard_moe covers every sub-cell."""


class MoE(nn.Cell):
    """Routed experts replacing the dense MLP: x (B, S, H) -> (y (B, S, H), aux_loss fp32 scalar).

    Capacity-based token dropping only when training with `config.moe_token_dropping`; eval / inference is
    dropless (capacity = tokens of the chunk). NOTE: MindSpore keys a compiled graph on the phase, not on
    `training`: call set_train(...) before the first call of a graph (see docs/moe.md).
    `capacity_multiple` (default 1) is a layout knob for telechat_ms.parallel: C is rounded up to a multiple
    of it (a split of the slot axis). It is a number, not a branch; set it before compiling.
    """

    def __init__(self, config, kernels=None):
        super().__init__()
        self.num_experts, self.top_k, self.hidden = config.num_experts, config.num_experts_per_tok, config.hidden_size
        self.capacity_factor = config.moe_capacity_factor
        self.token_dropping = config.moe_token_dropping
        self.chunks = config.moe_chunks
        self.aux_coef, self.z_coef = config.router_aux_loss_coef, config.router_z_loss_coef
        self.capacity_multiple = 1
        # `kernels` is accepted for the interface: no fused Ascend MoE path (GroupedMatmul / MoeInitRouting,
        # no CPU kernels) exists yet, so the plain path below runs on every device (docs/moe.md).
        self.router = Router(config)
        self.ffn = Experts(config)
        self._init_primitives()

    def _init_primitives(self):
        self.cast = ops.Cast()
        self.reshape = ops.Reshape()
        self.transpose = ops.Transpose()
        self.one_hot = ops.OneHot()
        self.cumsum = ops.CumSum()
        self.scatter_nd = ops.ScatterNd()
        self.gather = ops.Gather()
        self.concat0 = ops.Concat(axis=0)
        self.concat1 = ops.Concat(axis=1)
        self.select = ops.Select()
        self.mul = ops.Mul()
        self.sum = ops.ReduceSum()
        self.sum_keep = ops.ReduceSum(keep_dims=True)
        self.mean = ops.ReduceMean()
        self.max_keep = ops.ReduceMax(keep_dims=True)
        self.exp = ops.Exp()
        self.log = ops.Log()
        self.on = Tensor(1, ms.int32)
        self.off = Tensor(0, ms.int32)

    def construct(self, x):
        bsz, seq, hidden = x.shape
        if seq % self.chunks:
            raise ValueError(f"moe_chunks={self.chunks} must divide the sequence length {seq} "
                             f"({bsz * seq} tokens = batch {bsz} x seq {seq}); chunks are slices of the sequence")
        logits, probs, weights, experts = self.router(self.reshape(x, (bsz * seq, hidden)))   # (N, E), (N, k)
        aux = self.aux_loss(logits, probs, experts)
        if self.chunks == 1:
            out = self.dispatch_compute_combine(self.reshape(x, (bsz * seq, hidden)), weights, experts)
            return self.reshape(out, (bsz, seq, hidden)), aux                              # (B, S, H)
        # Chunks are slices of the sequence axis: each one keeps the whole batch, so a data-parallel split
        # of the batch gives every rank work in every chunk (a slice of flat tokens would not). They run one
        # after the other; nothing in a chunk depends on another, which lets Ascend overlap them.
        step = seq // self.chunks
        weights = self.reshape(weights, (bsz, seq, self.top_k))                         # (B, S, k)
        experts = self.reshape(experts, (bsz, seq, self.top_k))                         # (B, S, k)
        outs = ()
        for c in range(self.chunks):
            lo, hi = c * step, (c + 1) * step
            x_c = self.reshape(x[:, lo:hi, :], (bsz * step, hidden))                    # (n, H)
            w_c = self.reshape(weights[:, lo:hi, :], (bsz * step, self.top_k))          # (n, k)
            e_c = self.reshape(experts[:, lo:hi, :], (bsz * step, self.top_k))          # (n, k)
            out = self.dispatch_compute_combine(x_c, w_c, e_c)                          # (n, H)
            outs = outs + (self.reshape(out, (bsz, step, hidden)),)                     # (B, s, H)
        return self.concat1(outs), aux                                                  # (B, S, H)

    def dispatch_compute_combine(self, x, weights, experts):
        """One chunk: x (n, H), weights (n, k) fp32, experts (n, k) int32 -> (n, H) in x's dtype."""
        n = x.shape[0]
        dropping = self.token_dropping and self.training
        capacity = expert_capacity(n, self.top_k, self.num_experts, self.capacity_factor, dropping,
                                   self.capacity_multiple)
        slots, keep = self.assign_slots(experts, capacity)                              # (k*n,) each
        expert_in = self.dispatch(x, slots, capacity)                                   # (E, C, H)
        expert_out = self.ffn(expert_in)                                                # (E, C, H)
        return self.combine(expert_out, slots, keep, weights, x.dtype)                  # (n, H)

    def assign_slots(self, experts, capacity):
        """Queue positions in choice-rank-major priority -> slot = e*C + pos (E*C when dropped), keep mask.

        experts (n, k) -> slots (k*n,) int32 in [0, E*C], keep (k*n,) bool, both rank-major (index r*n + t).
        """
        n = experts.shape[0]
        # rank-major: all first choices (token order), then all second choices, ... (spec §4.2 priority)
        flat = self.reshape(self.transpose(experts, (1, 0)), (self.top_k * n,))         # (k*n,)
        hot = self.one_hot(flat, self.num_experts, self.on, self.off)                   # (k*n, E)
        # inclusive running count of each expert's queue; the own entry is 1 -> position = count - 1
        position = self.sum(self.mul(self.cumsum(hot, 0), hot), 1) - 1                  # (k*n,)
        keep = position < capacity
        trash = self.num_experts * capacity                                             # index of a zero row
        slots = self.select(keep, flat * capacity + position, ops.full_like(flat, trash))
        return ops.stop_gradient(slots), ops.stop_gradient(keep)

    def dispatch(self, x, slots, capacity):
        """Gather tokens into expert slots: x (n, H) -> (E, C, H); empty slots read a zero row."""
        n, hidden = x.shape
        num_slots = self.num_experts * capacity
        # token id (+1; 0 = empty) that fills each slot; every dropped assignment lands on the trash slot
        token_ids = ops.tile(ops.arange(1, n + 1, dtype=ms.int32), (self.top_k,))      # (k*n,) rank-major
        filler = self.scatter_nd(self.reshape(slots, (-1, 1)), token_ids, (num_slots + 1,))   # (E*C+1,)
        filler = ops.stop_gradient(filler[:num_slots])                                  # (E*C,)
        padded = self.concat0((ops.zeros((1, hidden), x.dtype), x))                     # (n+1, H), row 0 = 0
        return self.reshape(self.gather(padded, filler, 0), (self.num_experts, capacity, hidden))  # (E, C, H)

    def combine(self, expert_out, slots, keep, weights, dtype):
        """y_t = sum_k keep * w_k * out[slot_k]: (E, C, H) -> (n, H); dropped assignments read a zero row."""
        num_experts, capacity, hidden = expert_out.shape
        n = weights.shape[0]
        flat_out = self.reshape(self.cast(expert_out, ms.float32), (num_experts * capacity, hidden))  # (E*C, H)
        flat_out = self.concat0((flat_out, ops.zeros((1, hidden), ms.float32)))         # (E*C+1, H), last = 0
        picked = self.gather(flat_out, slots, 0)                                        # (k*n, H)
        w = self.reshape(self.transpose(weights, (1, 0)), (self.top_k * n, 1))          # (k*n, 1) rank-major
        w = self.mul(w, self.reshape(self.cast(keep, ms.float32), (-1, 1)))             # dropped weigh 0
        terms = self.reshape(self.mul(picked, w), (self.top_k, n, hidden))              # (k, n, H)
        return self.cast(self.sum(terms, 0), dtype)                                     # (n, H)

    def aux_loss(self, logits, probs, experts):
        """alpha*E*sum_i f_i*P_i (+ z-loss) over all N tokens: f_i over the k*N assignments before dropping."""
        n = probs.shape[0]
        hot = self.cast(self.one_hot(self.reshape(experts, (-1,)), self.num_experts, self.on, self.off),
                        ms.float32)                                                     # (N*k, E)
        fraction = ops.stop_gradient(self.sum(hot, 0) / (n * self.top_k))               # (E,) sums to 1
        mean_prob = self.mean(probs, 0)                                                 # (E,)
        aux = self.aux_coef * self.num_experts * self.sum(self.mul(fraction, mean_prob))
        if self.z_coef > 0:
            peak = ops.stop_gradient(self.max_keep(logits, -1))                         # (N, 1)
            lse = self.log(self.sum_keep(self.exp(logits - peak), -1)) + peak           # (N, 1) logsumexp
            aux = aux + self.z_coef * self.mean(self.mul(lse, lse))
        return aux

    def shard(self, parallel) -> None:
        """Experts by ep' (ep*mp with ep_extend_tp), tokens by dp'; see telechat_ms/parallel/moe_layout.py."""
        from ..parallel.moe_layout import shard_moe   # pylint: disable=import-outside-toplevel
        shard_moe(self, parallel)
