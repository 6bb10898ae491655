"""Mixture-of-Experts MLP of TeleChat2-39B-A12B (spec §4): fp32 top-k router, capacity dispatch, stacked experts.

Same interface as the dense MLP: x (B, S, H) -> (y (B, S, H), aux_loss fp32 scalar).

Static-graph formulation (every shape is known at compile time, which Ascend graph mode needs):
  1. router: logits = W_r x in fp32 (N, E); probs = softmax over all E; top-k; renormalise; scale.
  2. dispatch, per token group (G groups of contiguous tokens; G = 1 stand-alone, dp' under a parallel layout):
     each of the group's k*n_g assignments gets a position in its expert's queue, counted in choice-rank-major
     order (all the group's first choices in token order, then all second choices, ...). Positions >= capacity
     C (per group) are dropped. Kept assignments fill slots of a (G, E, C, H) buffer via a batched gather,
     which is transposed to (E, G*C, H) for the experts (under expert parallelism: the all-to-all).
  3. experts: SwiGLU with down bias on the (E, G*C, H) buffer by batched matmul over the leading expert axis.
  4. combine: transposed back to (G, E*C, H); every assignment gathers its slot's output (a zero row when
     dropped) times its routing weight; the k terms of a token are summed. The expert bias is therefore
     weighted by the routing weight.
Chunks (`moe_chunks`) run steps 2-4 per slice of the sequence axis, one after the other. Parallel layouts are
set in `shard()` by telechat_ms.parallel; construct() holds single-device math only. See docs/moe.md.
With `Kernels.grouped_matmul` (Ascend) dropless calls take a separate fused path (`grouped_experts`):
moe_token_permute -> GroupedMatmul x3 -> moe_token_unpermute, the same math; it has no CPU kernels.
"""
from __future__ import annotations

import math

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.ops import auto_generate as gen
from mindspore.ops.auto_generate import SiLU
from mindspore.common.initializer import Normal, Zero, initializer

from .dtypes import to_ms_dtype
from .linear import Linear

NORM_EPS = 1e-9   # top-k renormalisation: w / (sum + 1e-9) (spec §4.2)


def expert_capacity(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float, dropping: bool,
                    multiple: int = 1) -> int:
    """Slots per expert for `num_tokens` tokens (one group of one chunk): ceil(k*N*factor/E) clipped to N, or N
    when dropless.

    `multiple` rounds the result up (the official port rounds to a multiple of the MoE's model-parallel size).
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
        self.add_eps = ops.Add()
        self.div = ops.RealDiv()
        self.mul = ops.Mul()

    def construct(self, x):
        """x (N, H) -> logits (N, E) fp32, probs (N, E) fp32, weights (N, k) fp32, experts (N, k) int32."""
        logits = self.dense(self.cast(x, ms.float32))                                   # (N, E)
        probs = self.softmax(logits)                                                    # (N, E)
        weights, experts = self.topk(probs, self.top_k)                                 # (N, k) each
        if self.norm_topk_prob:
            weights = self.div(weights, self.add_eps(self.sum_keep(weights, -1), NORM_EPS))
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
    """SwiGLU experts w2(silu(w1 x) * w3 x) + b2 on a dispatched buffer (E, C, H) -> (E, C, H).

    With `grouped_matmul` it also holds the Ascend GroupedMatmul primitive for `grouped()` (no CPU kernel).
    """

    def __init__(self, config, grouped_matmul: bool = False):
        super().__init__()
        compute, param = to_ms_dtype(config.compute_dtype), to_ms_dtype(config.param_dtype)
        e, h, f, std = config.num_experts, config.hidden_size, config.ffn_hidden_size, config.initializer_range
        self.w1 = ExpertLinear(e, h, f, False, compute, param, std)     # gate_proj
        self.w3 = ExpertLinear(e, h, f, False, compute, param, std)     # up_proj
        self.w2 = ExpertLinear(e, f, h, True, compute, param, std)      # down_proj (+ bias)
        self.silu = SiLU()
        self.mul = ops.Mul()
        if grouped_matmul:
            # rows of x grouped by expert (group_list = cumulative row counts, int64); weight (E, out, in)
            self.gmm = gen.GroupedMatmul(split_item=3, group_type=0, transpose_a=False, transpose_b=True)
            self.compute_dtype = compute
            self.cast = ops.Cast()

    def construct(self, x):
        return self.w2(self.mul(self.silu(self.w1(x)), self.w3(x)))

    def grouped(self, x, group_list):
        """Ascend only: rows x (M, H) sorted by expert, group_list (E,) int64 cumulative counts -> (M, H) without
        the down bias (the caller adds sum_k w_k b_e once per token)."""
        x = self.cast(x, self.compute_dtype)
        gate = self._gmm(x, self.w1.weight, group_list)                                # (M, F)
        up = self._gmm(x, self.w3.weight, group_list)                                  # (M, F)
        return self._gmm(self.mul(self.silu(gate), up), self.w2.weight, group_list)    # (M, H)

    def _gmm(self, x, weight, group_list):
        return self.gmm((x,), (self.cast(weight, self.compute_dtype),), None, None, None, None, None, group_list)[0]

    def shard(self, parallel) -> None:
        """Set by the parent MoE cell: telechat_ms.parallel.moe_layout.shard_moe covers every sub-cell."""


class MoE(nn.Cell):
    """Routed experts replacing the dense MLP: x (B, S, H) -> (y (B, S, H), aux_loss fp32 scalar).

    Capacity-based token dropping only when training with `config.moe_token_dropping`; eval / inference is
    dropless (capacity = tokens of the group). NOTE: MindSpore keys a compiled graph on the phase, not on
    `training`: call set_train(...) before the first call of a graph (see docs/moe.md).

    Two plain Python ints shape the dispatch; both are set by telechat_ms.parallel.moe_layout.shard_moe (so
    construct never reads parallel settings) and must be set before compiling:
      * `groups` (G, default 1): the tokens of each chunk are cut into G contiguous groups with their own
        expert queues and capacity (the official per-data-parallel-group dispatch; G = dp' under a layout).
        Dropless results do not depend on G; the aux loss is averaged over G groups of all tokens.
      * `capacity_multiple` (default 1): C is rounded up to a multiple of it.
    `kernels.grouped_matmul` (Ascend) selects `grouped_experts` for dropless calls; dropping always uses the
    capacity path.
    """

    def __init__(self, config, kernels=None, groups: int = 1):
        super().__init__()
        self.num_experts, self.top_k, self.hidden = config.num_experts, config.num_experts_per_tok, config.hidden_size
        self.capacity_factor = config.moe_capacity_factor
        self.token_dropping = config.moe_token_dropping
        self.chunks = config.moe_chunks
        self.aux_coef, self.z_coef = config.router_aux_loss_coef, config.router_z_loss_coef
        self.groups = int(groups)
        self.capacity_multiple = 1
        self.use_grouped_matmul = bool(getattr(kernels, "grouped_matmul", False))
        self.router = Router(config)
        self.ffn = Experts(config, self.use_grouped_matmul)
        self._init_primitives()
        if self.use_grouped_matmul:
            self._init_grouped_primitives()

    def _init_primitives(self):
        """One primitive per call site, so that each carries its own planned strategy (moe_layout.py)."""
        self.cast = ops.Cast()
        self.reshape = ops.Reshape()
        self.slice_x, self.slice_w, self.slice_e = ops.StridedSlice(), ops.StridedSlice(), ops.StridedSlice()
        self.concat1 = ops.Concat(axis=1)         # chunk outputs (B, s, H)
        self.transpose = ops.Transpose()          # (G, n_g, k) experts / weights -> (G, k, n_g)
        self.transpose_in = ops.Transpose()       # (G, E, C, H) -> (E, G, C, H): into the experts
        self.transpose_out = ops.Transpose()      # (E, G, C, H) -> (G, E, C, H): back to the token groups
        self.one_hot = ops.OneHot()
        self.on, self.off = Tensor(1, ms.int32), Tensor(0, ms.int32)
        # slot assignment (int32)
        self.cumsum = ops.CumSum()
        self.mul_queue, self.sum_queue, self.sub_one = ops.Mul(), ops.ReduceSum(), ops.Sub()
        self.mul_cap, self.add_pos, self.ge_cap, self.fill_trash = ops.Mul(), ops.Add(), ops.GreaterEqual(), \
            ops.MaskedFill()
        # dispatch
        self.add_base = ops.Add()
        self.scatter = ops.TensorScatterAdd()     # onto zeros: ScatterNd (duplicates sum; only the trash slot has any)
        self.slice_filler = ops.StridedSlice()
        self.gather = ops.Gather(batch_dims=1)    # per group: (G, rows, H) at (G, m) -> (G, m, H)
        self.pad_concat = ops.Concat(axis=1)      # a zero row per group
        # combine
        self.less_slots, self.mul_keep, self.mul_weight, self.sum_choices = ops.Less(), ops.Mul(), ops.Mul(), \
            ops.ReduceSum()
        # aux / z loss
        self.sum_assign, self.div_assign, self.mean = ops.ReduceSum(), ops.Div(), ops.ReduceMean()
        self.mul_aux, self.sum_aux, self.scale_aux, self.div_groups = ops.Mul(), ops.ReduceSum(), ops.Mul(), ops.Div()
        self.max_keep, self.sub_peak, self.exp, self.sum_keep = ops.ReduceMax(keep_dims=True), ops.Sub(), ops.Exp(), \
            ops.ReduceSum(keep_dims=True)
        self.log, self.add_peak, self.mul_lse, self.mean_z = ops.Log(), ops.Add(), ops.Mul(), ops.ReduceMean()
        self.scale_z, self.add_z = ops.Mul(), ops.Add()

    def _init_grouped_primitives(self):
        """Ascend fused routing (no CPU kernels): permute tokens by expert, unpermute with routing weights."""
        self.token_permute = gen.MoeTokenPermute()
        self.token_unpermute = gen.MoeTokenUnpermute()
        self.gmm_one_hot = ops.OneHot()
        self.gmm_cumsum = ops.CumSum()
        self.gmm_sum = ops.ReduceSum()
        self.gmm_bias = ops.MatMul()
        self.gmm_mul = ops.Mul()
        self.gmm_add = ops.Add()

    def construct(self, x):
        bsz, seq, hidden = x.shape
        if seq % self.chunks:
            raise ValueError(f"moe_chunks={self.chunks} must divide the sequence length {seq} "
                             f"({bsz * seq} tokens = batch {bsz} x seq {seq}); chunks are slices of the sequence")
        if (bsz * seq // self.chunks) % self.groups:
            raise ValueError(f"MoE groups={self.groups} (token groups with their own capacity, dp' of the parallel "
                             f"layout) must divide the {bsz * seq // self.chunks} tokens per chunk (batch {bsz} x "
                             f"seq {seq} / moe_chunks {self.chunks})")
        flat = self.reshape(x, (bsz * seq, hidden))                                     # (N, H)
        logits, probs, weights, experts = self.router(flat)                             # (N, E), (N, k)
        aux = self.aux_loss(logits, probs, experts)
        dropping = self.token_dropping and self.training
        if self.use_grouped_matmul and not dropping:
            # Ascend fused dropless path: identical math, no capacity, chunks and groups irrelevant
            return self.reshape(self.grouped_experts(flat, weights, experts), (bsz, seq, hidden)), aux
        if self.chunks == 1:
            out = self.dispatch_compute_combine(flat, weights, experts, dropping)
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
            x_c = self.reshape(self.slice_x(x, (0, lo, 0), (bsz, hi, hidden), (1, 1, 1)), (bsz * step, hidden))
            w_c = self.reshape(self.slice_w(weights, (0, lo, 0), (bsz, hi, self.top_k), (1, 1, 1)),
                               (bsz * step, self.top_k))                                # (n, k)
            e_c = self.reshape(self.slice_e(experts, (0, lo, 0), (bsz, hi, self.top_k), (1, 1, 1)),
                               (bsz * step, self.top_k))                                # (n, k)
            out = self.dispatch_compute_combine(x_c, w_c, e_c, dropping)                # (n, H)
            outs = outs + (self.reshape(out, (bsz, step, hidden)),)                     # (B, s, H)
        return self.concat1(outs), aux                                                  # (B, S, H)

    def dispatch_compute_combine(self, x, weights, experts, dropping):
        """One chunk: x (n, H), weights (n, k) fp32, experts (n, k) int32 -> (n, H) in x's dtype."""
        per_group = x.shape[0] // self.groups
        capacity = expert_capacity(per_group, self.top_k, self.num_experts, self.capacity_factor, dropping,
                                   self.capacity_multiple)
        slots = self.assign_slots(experts, capacity)                                    # (G, k*n_g)
        expert_in = self.dispatch(x, slots, capacity)                                   # (E, G*C, H)
        expert_out = self.ffn(expert_in)                                                # (E, G*C, H)
        return self.combine(expert_out, slots, weights, x.dtype)                        # (n, H)

    def _rank_major(self, experts):
        """experts (n, k) -> (G, k*n_g): per group g, assignment r*n_g + t = choice r of the group's token t."""
        n = experts.shape[0]
        per_group = n // self.groups
        grouped = self.reshape(experts, (self.groups, per_group, self.top_k))          # (G, n_g, k)
        return self.reshape(self.transpose(grouped, (0, 2, 1)), (self.groups, self.top_k * per_group))

    def assign_slots(self, experts, capacity):
        """Queue positions in choice-rank-major priority within each group -> slot = e*C + pos, E*C if dropped.

        experts (n, k) -> slots (G, k*n_g) int32 in [0, E*C], rank-major within the group (index r*n_g + t).
        """
        flat = self._rank_major(experts)                                                # (G, k*n_g)
        hot = self.one_hot(flat, self.num_experts, self.on, self.off)                   # (G, k*n_g, E)
        # inclusive running count of each group's expert queue; the own entry is 1 -> position = count - 1
        position = self.sub_one(self.sum_queue(self.mul_queue(self.cumsum(hot, 1), hot), 2), 1)   # (G, k*n_g)
        trash = Tensor(self.num_experts * capacity, ms.int32)                           # index of a zero row
        slots = self.add_pos(self.mul_cap(flat, capacity), position)
        slots = self.fill_trash(slots, self.ge_cap(position, capacity), trash)          # dropped -> E*C
        return ops.stop_gradient(slots)                                                 # (G, k*n_g)

    def dispatch(self, x, slots, capacity):
        """Gather each group's tokens into its expert slots: x (n, H) -> (E, G*C, H); empty slots read zeros."""
        n, hidden = x.shape
        groups, per_group = self.groups, n // self.groups
        num_slots = self.num_experts * capacity
        # token id within the group (+1; 0 = empty) that fills each slot; dropped assignments all land on the
        # group's trash slot E*C, which is cut off. One flat scatter: group g's slots start at g*(E*C+1).
        token_ids = Tensor(np.tile(np.arange(1, per_group + 1, dtype=np.int32), groups * self.top_k))   # (G*k*n_g,)
        base = Tensor((np.arange(groups, dtype=np.int32) * (num_slots + 1)).reshape(groups, 1))         # (G, 1)
        index = self.reshape(self.add_base(slots, base), (-1, 1))                       # (G*k*n_g, 1)
        zeros = Tensor(np.zeros(groups * (num_slots + 1), np.int32))
        filler = self.reshape(self.scatter(zeros, index, token_ids), (groups, num_slots + 1))    # (G, E*C+1)
        filler = ops.stop_gradient(self.slice_filler(filler, (0, 0), (groups, num_slots), (1, 1)))  # (G, E*C)
        tokens = self.reshape(x, (groups, per_group, hidden))                           # (G, n_g, H)
        empty = Tensor(np.zeros((groups, 1, hidden), np.float32), x.dtype)
        padded = self.pad_concat((empty, tokens))                                       # (G, n_g+1, H), row 0 = 0
        buffer = self.reshape(self.gather(padded, filler, 1),
                              (groups, self.num_experts, capacity, hidden))             # (G, E, C, H)
        # groups -> experts: with groups split by dp' and experts by ep', this layout change is the all-to-all
        buffer = self.transpose_in(buffer, (1, 0, 2, 3))                                # (E, G, C, H)
        return self.reshape(buffer, (self.num_experts, groups * capacity, hidden))      # (E, G*C, H)

    def combine(self, expert_out, slots, weights, dtype):
        """y_t = sum_k keep * w_k * out[slot_k] per group: (E, G*C, H) -> (n, H); dropped read a zero row."""
        num_experts, _, hidden = expert_out.shape
        groups = self.groups
        n = weights.shape[0]
        per_group = n // groups
        capacity = expert_out.shape[1] // groups
        out = self.reshape(expert_out, (num_experts, groups, capacity, hidden))         # (E, G, C, H)
        out = self.transpose_out(out, (1, 0, 2, 3))                                     # (G, E, C, H): all-to-all back
        out = self.reshape(self.cast(out, ms.float32), (groups, num_experts * capacity, hidden))
        empty = Tensor(np.zeros((groups, 1, hidden), np.float32))
        out = self.pad_concat((out, empty))                                             # (G, E*C+1, H), last = 0
        picked = self.gather(out, slots, 1)                                             # (G, k*n_g, H)
        w = self.transpose(self.reshape(weights, (groups, per_group, self.top_k)), (0, 2, 1))   # (G, k, n_g)
        keep = self.cast(self.less_slots(slots, num_experts * capacity), ms.float32)    # (G, k*n_g) dropped -> 0
        w = self.mul_keep(self.reshape(w, (groups, self.top_k * per_group)), keep)      # (G, k*n_g)
        terms = self.mul_weight(picked, self.reshape(w, (groups, self.top_k * per_group, 1)))   # (G, k*n_g, H)
        terms = self.reshape(terms, (groups, self.top_k, per_group, hidden))            # (G, k, n_g, H)
        return self.cast(self.reshape(self.sum_choices(terms, 1), (n, hidden)), dtype)  # (n, H)

    def grouped_experts(self, x, weights, experts):
        """Ascend fused dropless path (Kernels.grouped_matmul; no CPU kernels, never run by CPU tests).

        x (N, H), weights (N, k) fp32, experts (N, k) int32 -> (N, H) in x's dtype. Same math as the capacity
        path without dropping: y_t = sum_k w_tk * (W2_e(silu(W1_e x_t) * W3_e x_t) + b2_e).
        """
        num_tokens, hidden = x.shape
        permuted, row_map = self.token_permute(x, experts)                              # (N*k, H) by expert
        hot = self.gmm_one_hot(experts, self.num_experts, self.on, self.off)            # (N, k, E)
        counts = self.gmm_sum(self.reshape(hot, (num_tokens * self.top_k, self.num_experts)), 0)    # (E,)
        group_list = self.cast(self.gmm_cumsum(counts, 0), ms.int64)                    # (E,) row ends
        rows = self.cast(self.ffn.grouped(permuted, group_list), ms.float32)            # (N*k, H)
        out = self.token_unpermute(rows, row_map, weights)                              # (N, H) sum_k w_k row
        # the down bias once per assignment, weighted: sum_k w_k b_e = (sum_k w_k onehot(e_k)) @ B
        dense_w = self.gmm_sum(self.gmm_mul(self.cast(hot, ms.float32),
                                        self.reshape(weights, (num_tokens, self.top_k, 1))), 1)     # (N, E)
        bias = self.gmm_bias(dense_w, self.cast(self.ffn.w2.bias, ms.float32))          # (N, H)
        return self.cast(self.gmm_add(out, bias), x.dtype)

    def aux_loss(self, logits, probs, experts):
        """alpha*E*mean_g sum_i f_gi*P_gi (+ z-loss): G contiguous groups of all N tokens (official: per dp group).

        f_gi: share of group g's k*N_g assignments (before dropping) on expert i; P_gi: group g's mean router
        probability of expert i. One group: alpha*E*sum_i f_i*P_i over all tokens.
        """
        n = probs.shape[0]
        per_group = n // self.groups
        hot = self.cast(self.one_hot(self._rank_major(experts), self.num_experts, self.on, self.off),
                        ms.float32)                                                     # (G, k*N_g, E)
        count = Tensor(per_group * self.top_k, ms.float32)                              # as `tensor / int` promotes
        fraction = ops.stop_gradient(self.div_assign(self.sum_assign(hot, 1), count))   # (G, E) rows sum to 1
        mean_prob = self.mean(self.reshape(probs, (self.groups, per_group, self.num_experts)), 1)   # (G, E)
        aux = self.scale_aux(self.sum_aux(self.mul_aux(fraction, mean_prob)), self.aux_coef * self.num_experts)
        aux = self.div_groups(aux, Tensor(self.groups, ms.float32))
        if self.z_coef > 0:
            peak = ops.stop_gradient(self.max_keep(logits, -1))                         # (N, 1)
            lse = self.add_peak(self.log(self.sum_keep(self.exp(self.sub_peak(logits, peak)), -1)), peak)  # (N, 1)
            aux = self.add_z(aux, self.scale_z(self.mean_z(self.mul_lse(lse, lse)), self.z_coef))
        return aux

    def shard(self, parallel) -> None:
        """Experts by ep' (ep*mp with ep_extend_tp), token groups by dp'; see telechat_ms/parallel/moe_layout.py."""
        from ..parallel.moe_layout import shard_moe   # pylint: disable=import-outside-toplevel
        shard_moe(self, parallel)
