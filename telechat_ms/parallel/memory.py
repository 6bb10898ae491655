"""Per-device memory and step-time estimate of one training layout, stage by stage (docs/parallel.md).

Memory of a device on pipeline stage s (bytes):
  weights    param_bytes x W / z          W = parameters it holds after mp / ep splits, z = optimizer shard
  master     4 x W / z                    only when params are kept in 16 bit (O2 with param_dtype != fp32)
  gradients  grad_bytes x W               accumulated over micro-batches (pp > 1) unless
             grad_bytes x W / z           gradient_accumulation_shard, or pp == 1 (reduce-scattered)
  AdamW      8 x W / z                    fp32 m and v
  activations  in_flight(s) x sum over its layers of the bytes a layer saves for backward per micro-batch
             (full recompute: the layer input only; select recompute: minus the SwiGLU product / scores;
             select-comm recompute: minus the norm outputs), + one layer's full set (the layer being
             recomputed / back-propagated) + its parallel-optimizer weight all-gather. The plain-ops path
             (`Workload.fused_kernels` False: CPU, calibrated against measured peaks, docs/performance.md) saves
             more per layer and, without recompute, holds one fp32 scores tensor instead of a whole layer.
  edges      stage 0: embedding; last stage: head + logits (bf16 head output + 3 fp32 copies in the loss)
  reserve    fixed `reserve_gb` for HCCL buffers, workspace and fragmentation
in_flight(s) = min(micro_batch_num, pp - s) for 1F1B; interleaved (v chunks): Megatron's warm-up count
min(mbn*v, 2(pp-s-1) + (v-1)pp + 1) chunk-micro-batches, each holding 1/v of the stage's layers.
Step time is an ESTIMATE: FLOPs / (peak x efficiency) + un-overlapped TP / EP / DP communication, times the
1F1B schedule length (mbn + pp - 1) (interleaved: mbn + (pp - 1)/v).
"""
from __future__ import annotations

from dataclasses import dataclass, field

GB = 1e9


@dataclass(frozen=True)
class Hardware:
    """Atlas 800T A2 defaults (assumptions, all overridable from the CLI)."""

    hbm_gb: float = 64.0          # limit to fit under (use the yaml's max_device_memory)
    reserve_gb: float = 2.0       # HCCL buffers, kernel workspace, fragmentation
    peak_tflops: float = 320.0    # bf16 dense peak per NPU (assumed)
    efficiency: float = 0.5       # fraction of peak reached by the matmuls (assumed)
    intra_gbps: float = 150.0     # effective GB/s per device inside a node (HCCS)
    inter_gbps: float = 20.0      # effective GB/s per device across nodes (RoCE)
    devices_per_node: int = 8


@dataclass(frozen=True)
class Workload:
    seq_len: int = 8192
    micro_batch_size: int = 1     # sequences per device per micro-batch (runner batch_size)
    flash_attention: bool = True
    amp_o2: bool = False          # O2: a 16-bit param_dtype gets an fp32 master copy
    # Ascend fused kernels (FlashAttention, RmsNorm, rotary, SiLU) vs the plain-ops path the CPU runs; and the
    # bytes of an activation (2: bf16/fp16 compute, 4: fp32). The defaults are the Ascend training setting.
    fused_kernels: bool = True
    activation_bytes: int = 2
    # LoRA (issue 12): telechat_ms.lora.memory.LoraMemory -- frozen base, adapter-only gradients and optimizer
    # states, no base weight-gradient matmuls, adapter-only all-reduce; None = full training
    lora: object = None


@dataclass
class StageEstimate:
    stage: int
    layers: int
    full_recompute: int
    select_recompute: int
    params: float                 # parameters held per device (count)
    states_gb: float              # weights + master + grads + optimizer
    activations_gb: float
    edge_gb: float
    total_gb: float
    time_s: float                 # per micro-batch, forward + backward (estimate)


@dataclass
class LayoutEstimate:
    stages: list = field(default_factory=list)
    step_time_s: float = 0.0
    tokens_per_step: int = 0
    hbm_gb: float = 0.0
    devices: int = 1

    @property
    def peak_gb(self) -> float:
        return max(s.total_gb for s in self.stages)

    @property
    def fits(self) -> bool:
        return self.peak_gb <= self.hbm_gb

    @property
    def tokens_per_device_s(self) -> float:
        return self.tokens_per_step / self.step_time_s / self.devices if self.step_time_s else 0.0

    def imbalance(self) -> float:
        """Slowest stage time over the mean stage time, minus 1."""
        times = [s.time_s for s in self.stages]
        return max(times) / (sum(times) / len(times)) - 1.0


# ----------------------------------------------------------------------------- parameters
def layer_params(config, parallel) -> tuple[float, float, float]:
    """(split-by-mp, expert, replicated) parameter counts per device of one decoder layer (at mp = 1 their sum
    is config.num_parameters()'s per-layer count: the out-projection biases only where the family has them)."""
    h, f, hd = config.hidden_size, config.ffn_hidden_size, config.head_dim
    mp = parallel.model_parallel
    q = config.num_heads * hd
    attn = q * h + 2 * config.num_kv_heads * hd * h + h * q
    # norms, and the row-parallel biases (added once after the reduction, so replicated)
    replicated = 2 * h + h * config.attention_out_bias
    if not config.is_moe:
        return (attn + 3 * h * f) / mp, 0.0, replicated + h * config.mlp_out_bias
    experts = config.num_experts * (3 * h * f + h) / (parallel.expert_parallel * mp)   # same count with or without ep_extend_tp
    return attn / mp, experts, replicated + config.num_experts * h


def layer_weight_bytes(config, parallel, param_bytes: int) -> float:
    """Inference weight bytes of one decoder layer per device. Float: its parameters x param_bytes. Weight-only
    quantized (config.quantization): bits/8 per projection weight, a scale and an offset per (group, output)
    in the scale dtype and, with act order, an int32 per input row; norms and biases stay float."""
    dense, expert, replicated = layer_params(config, parallel)
    quant = config.quantization
    if quant is None:
        return (dense + expert + replicated) * param_bytes
    h, f, hd = config.hidden_size, config.ffn_hidden_size, config.head_dim
    q, kv = config.num_heads * hd, config.num_kv_heads * hd
    scale_bytes = 4 if quant.scale_dtype == "float32" else 2
    total = 0.0
    kv_linears = ((h, kv), (h, kv)) if quant.split_kv else ((h, 2 * kv),)   # split k / v: two perms
    for k, n in ((h, q), *kv_linears, (q, h), (h, f), (h, f), (f, h)):     # (in, out) of q, kv, o, gate, up, down
        _, groups = quant.groups(k)
        total += k * n * quant.bits / 8 + 2 * groups * n * scale_bytes + 4 * k * quant.act_order
    return total / parallel.model_parallel + replicated * param_bytes


def edge_params(config, parallel, first: bool, last: bool) -> float:
    """Embedding table (+ its norm) on the first stage; final norm and lm_head on the last. A tied lm_head is
    the embedding Parameter: one copy when both ends share a stage, otherwise each end stage holds one (the
    MindSpore pipeline keeps a shared parameter on every stage that reads it)."""
    split = 1 if parallel.vocab_emb_dp else parallel.model_parallel
    h = config.hidden_size
    table = config.vocab_size * h / split
    head = 0.0 if (config.tie_word_embeddings and first) else table
    return (table + h * config.embed_layernorm if first else 0.0) + (head + h if last else 0.0)


def optimizer_shards(parallel, expert: bool) -> int:
    z = parallel.optimizer_shard
    if expert:
        z = min(z, max(parallel.data_parallel // parallel.expert_parallel, 1))
    return max(z, 1)


def states_bytes(config, parallel, dense: float, expert: float, work: Workload) -> float:
    """Weights, master copy, gradients and AdamW states of `dense` + `expert` parameters on one device."""
    pbytes = 4 if config.param_dtype == "float32" else 2
    master = 4 if (work.amp_o2 and pbytes < 4) else 0
    accumulate = parallel.pipeline_stage > 1 and not parallel.gradient_accumulation_shard
    total = 0.0
    for count, z in ((dense, optimizer_shards(parallel, False)), (expert, optimizer_shards(parallel, True))):
        grads = pbytes * count if accumulate else pbytes * count / z
        total += (pbytes + master + 8) * count / z + grads
    return total


# ----------------------------------------------------------------------------- activations
def layer_activation_bytes(config, parallel, work: Workload, select: bool, comm: bool) -> float:
    """Bytes one layer saves for backward per micro-batch on one device (no recompute other than the select /
    comm flags). Tokens T = micro_batch_size x seq_len; b = work.activation_bytes.

    Per token: norms keep input and output (2 x 2 tensors of H); attention q, k, v (after the GQA repeat) and
    the context (4 of H) plus fp32 softmax statistics (flash); unfused scores: fp32 probabilities, the fp32
    masked scores MindSpore's MaskedFill gradient keeps, the bool mask and, in 16 bit, the probabilities cast
    back; SwiGLU w1 / w3 outputs, silu and the product (4 of F). The plain path adds the rotary inputs and
    rotated halves of q and k (+2 of H, +2 of the kv width) and the SiLU gradient's sigmoid (+1 of F) -- what
    the CPU graph measurably holds (docs/performance.md); its norms keep nothing more (RMSNormRows recomputes
    rsqrt in its written-out gradient)."""
    h, f, heads, b = config.hidden_size, config.ffn_hidden_size, config.num_heads, work.activation_bytes
    plain = not work.fused_kernels
    t, sp = parallel.model_parallel, parallel.seq_split
    tokens = work.micro_batch_size * work.seq_len
    norms = 4 - (2 if comm else 0)                            # tensors of H in the sequence-parallel region
    per_token = norms * h * b / sp
    attn = 4 * h * b + (2 * h + 2 * config.num_kv_heads * config.head_dim) * b * plain
    if work.flash_attention:
        attn += 8 * heads                                     # fp32 row max and sum per head
    elif not select:
        attn += (4 + 4 + 1 + (b if b < 4 else 0)) * heads * work.seq_len
    per_token += attn / t
    swiglu = (4 if select else 8) / 2 + plain                 # tensors of F
    if config.is_moe:
        slots = config.num_experts_per_tok * config.moe_capacity_factor
        ffn = (h * b + swiglu * f * b) * slots                # dispatched input + SwiGLU intermediates per slot
        per_token += (2 * h * b + 8 * config.num_experts + ffn + 2 * h * b * config.num_experts_per_tok) / t
    else:
        per_token += swiglu * f * b / t                       # w1, w3 outputs (+ silu, product unless select)
    return per_token * tokens


def layer_working_bytes(config, parallel, work: Workload, recomputed: bool) -> float:
    """Backward working memory beyond the saved activations: a recomputed layer re-materialises its whole set
    (and so does the fused path, as an assumption); the plain path without recompute holds one fp32 scores
    tensor (B, N, S, S) at its peak (measured on CPU, docs/performance.md)."""
    if work.fused_kernels or recomputed:
        return layer_activation_bytes(config, parallel, work, False, False)
    return 4 * config.num_heads / parallel.model_parallel * work.micro_batch_size * work.seq_len * work.seq_len


def recompute_input_bytes(config, parallel, work: Workload) -> float:
    """A fully recomputed layer keeps only its input (sequence-split with SP)."""
    return work.activation_bytes * config.hidden_size * work.micro_batch_size * work.seq_len / parallel.seq_split


def in_flight(parallel, stage: int) -> float:
    """Micro-batches whose activations a stage holds at its peak (per layer of the stage)."""
    pp, mbn, v = parallel.pipeline_stage, parallel.micro_batch_num, parallel.pp_interleave_num
    if v == 1:
        return float(min(mbn, pp - stage))
    chunks = min(mbn * v, 2 * (pp - stage - 1) + (v - 1) * pp + 1)
    return chunks / v


def logits_bytes(config, parallel, work: Workload) -> float:
    """Head output (activation bytes) + 3 fp32 copies in the loss (exp, one-hot, the shifted slice), + 1 fp32
    copy from the logit multiplier (Tele-FLM)."""
    split = 1 if parallel.vocab_emb_dp else parallel.model_parallel
    fp32_copies = 3 + (config.logit_multiplier != 1.0)
    return work.micro_batch_size * work.seq_len * config.vocab_size / split * (work.activation_bytes + fp32_copies * 4)


# ----------------------------------------------------------------------------- FLOPs and time (estimate)
def layer_forward_flops(config, work: Workload) -> float:
    """Forward FLOPs of one layer for one device's micro-batch, before the mp split (causal attention)."""
    h, f = config.hidden_size, config.ffn_hidden_size
    tokens = work.micro_batch_size * work.seq_len
    matmul = 2 * h * h + 2 * config.num_kv_heads * config.head_dim * h
    if config.is_moe:
        matmul += config.num_experts_per_tok * config.moe_capacity_factor * 3 * h * f + h * config.num_experts
    else:
        matmul += 3 * h * f
    return tokens * (2 * matmul + 2 * work.seq_len * h)


def _bandwidth(hw: Hardware, group: int) -> float:
    return (hw.intra_gbps if group <= hw.devices_per_node else hw.inter_gbps) * GB


def layer_comm_s(config, parallel, work: Workload, hw: Hardware, full_recompute: bool) -> float:
    """Un-overlapped tensor-parallel collectives (4 per layer pass with SP, or 2 all-reduces of twice the
    volume) and, for MoE, the dispatch/combine all-to-all."""
    tokens = work.micro_batch_size * work.seq_len
    t = parallel.model_parallel
    seconds = 0.0
    if t > 1:
        units = 12 if full_recompute else 8
        seconds += units * (t - 1) / t * tokens * config.hidden_size * 2 / _bandwidth(hw, t)
    if config.is_moe:
        ep = parallel.expert_parallel * (t if parallel.ep_extend_tp else 1)
        if ep > 1:
            volume = tokens / t * config.num_experts_per_tok * config.moe_capacity_factor * config.hidden_size * 2
            seconds += (6 if full_recompute else 4) * (ep - 1) / ep * volume / _bandwidth(hw, ep)
    return seconds


def head_flops(config, parallel, work: Workload) -> float:
    split = 1 if parallel.vocab_emb_dp else parallel.model_parallel
    return 3 * 2 * config.hidden_size * config.vocab_size * work.micro_batch_size * work.seq_len / split


def stage_estimate(config, parallel, work: Workload, hw: Hardware, stage: int, mix: dict) -> StageEstimate:
    """One stage; `mix` maps (full, select, comm) recompute flags to the number of layers with them."""
    pp, t = parallel.pipeline_stage, parallel.model_parallel
    first, last = stage == 0, stage == pp - 1
    layers = sum(mix.values())
    dense, expert, replicated = layer_params(config, parallel)
    edge = edge_params(config, parallel, first, last)
    dense_total = layers * (dense + replicated) + edge
    states = states_bytes(config, parallel, dense_total, layers * expert, work)
    if work.lora is not None:     # LoRA: see telechat_ms/lora/memory.py
        states = work.lora.states_bytes(dense_total + layers * expert, layers, last, optimizer_shards(parallel, False))
    keep = in_flight(parallel, stage)
    saved, flops, comm = 0.0, 0.0, 0.0
    fwd = layer_forward_flops(config, work) / t
    for (full, select, comm_rc), count in mix.items():
        per = recompute_input_bytes(config, parallel, work) if full else \
            layer_activation_bytes(config, parallel, work, select, comm_rc)
        saved += count * per
        # full recompute re-runs the forward; select recompute re-runs memory-bound elementwise ops only,
        # charged as 0.1 forward (an assumption) so that the solver prefers no recompute when it fits
        flops += count * fwd * (4 if full else 3.1 if select else 3)
        if work.lora is not None:     # LoRA: no weight gradients of the frozen base
            flops -= count * fwd
        comm += count * layer_comm_s(config, parallel, work, hw, full)
    working = layer_working_bytes(config, parallel, work, any(f for f, _, _ in mix)) if layers else 0.0
    if parallel.optimizer_shard > 1 and work.lora is None:   # (LoRA: the frozen base is not optimizer-sharded)
        working += 2 * 2 * (dense + expert)                  # all-gathered 16-bit weights, current + prefetched
    edge_bytes = logits_bytes(config, parallel, work) if last else 0.0
    if last:
        flops += head_flops(config, parallel, work)
    activations = keep * saved + working
    if work.lora is not None:     # LoRA: A outputs (and dropped inputs) of the adapted linears
        activations += keep * work.lora.activation_bytes(work.micro_batch_size * work.seq_len, layers)
    total = states + activations + edge_bytes + hw.reserve_gb * GB
    time_s = flops / (hw.peak_tflops * 1e12 * hw.efficiency) + comm
    n_full = sum(c for (f, _, _), c in mix.items() if f)
    n_select = sum(c for (f, s, _), c in mix.items() if s and not f)
    return StageEstimate(stage, layers, n_full, n_select, dense_total + layers * expert, states / GB,
                         activations / GB, edge_bytes / GB, total / GB, time_s)


def dp_sync_s(parallel, hw: Hardware, stage_params: float) -> float:
    """Gradient reduce-scatter (+ weight all-gather with the parallel optimizer), assumed not overlapped."""
    dp = parallel.data_parallel
    if dp == 1:
        return 0.0
    # reduce-scatter + all-gather, or the two halves of an all-reduce: twice the fp32 gradient volume
    return 2 * 4 * stage_params * (dp - 1) / dp / _bandwidth(hw, dp * parallel.model_parallel)


def estimate_layout(config, parallel, work: Workload, hw: Hardware, placements) -> LayoutEstimate:
    """All stages of a layout whose layer placements (pipeline.layer_placements) are given."""
    mixes = [dict() for _ in range(parallel.pipeline_stage)]
    for place in placements:
        key = (place.full_recompute, place.select_recompute, place.comm_recompute)
        mixes[place.stage][key] = mixes[place.stage].get(key, 0) + 1
    return finish_layout(config, parallel, work, hw,
                         [stage_estimate(config, parallel, work, hw, s, mix) for s, mix in enumerate(mixes)])


def finish_layout(config, parallel, work, hw, stages) -> LayoutEstimate:
    pp, v = parallel.pipeline_stage, parallel.pp_interleave_num
    slowest = max(s.time_s for s in stages)
    # LoRA: only the adapters' gradients are all-reduced
    sync = max(dp_sync_s(parallel, hw, s.params if work.lora is None else
                         work.lora.trainable(s.layers, s.stage == parallel.pipeline_stage - 1)) for s in stages)
    step = (parallel.micro_batch_num + (pp - 1) / v) * slowest + sync
    tokens = parallel.data_parallel * work.micro_batch_size * parallel.micro_batch_num * work.seq_len
    return LayoutEstimate(stages, step, tokens, hw.hbm_gb, parallel.device_num)


def model_flops_per_token(config, seq_len: int) -> float:
    """6N (active) + causal attention, per trained token: the usual MFU numerator."""
    attn = 6 * config.num_layers * seq_len * config.hidden_size
    return 6 * config.num_parameters(active=True) + attn
