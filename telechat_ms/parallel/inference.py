"""Per-device memory of a predict layout (`run_mode: predict` yamls): weights, KV cache, one prefill's working set.

Inference keeps no gradients and no optimizer states, so the training estimate (parallel/memory.py) does not
apply. Per device on pipeline stage s (bytes):
  weights      param_bytes x the stage's parameters after the mp split (same counts as training: family-aware
               biases, tied embeddings, vocab split unless vocab_emb_dp); a weight-only-quantized model
               (model_config `quantization`) counts its decoder projections at bits/8 bytes plus scales
               (memory.layer_weight_bytes)
  KV cache     cache_tokens x 2 (K, V) x stage layers x num_kv_heads x head_dim / mp x compute_bytes;
               cache_tokens = model_config block_size x num_blocks (paged cache) when the yaml gives them,
               else batch x seq_length (telechat_ms's static cache)
  activations  the prefill of batch x seq_length tokens: one layer's intermediates at a time (the training
               per-layer figure without recompute is an upper bound: nothing is kept for a backward pass)
  logits       last stage: the picked positions only, (batch, V / split) in 16 bit + fp32 (+ fp32 again with
               a logit multiplier)
  reserve      as in training (HCCL buffers, workspace, fragmentation)
These are estimates for choosing a tensor-parallel size, not measurements.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config.base import ConfigError
from .memory import GB, Hardware, Workload, edge_params, layer_activation_bytes, layer_params, layer_weight_bytes
from .pipeline import stage_layers

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass
class InferenceStage:
    stage: int
    layers: int
    params: float
    weights_gb: float
    cache_gb: float
    activations_gb: float
    logits_gb: float
    total_gb: float


@dataclass
class InferenceEstimate:
    stages: list = field(default_factory=list)
    hbm_gb: float = 0.0
    cache_tokens: int = 0

    @property
    def peak_gb(self) -> float:
        return max(s.total_gb for s in self.stages)

    @property
    def fits(self) -> bool:
        return self.peak_gb <= self.hbm_gb


def cache_tokens_of(run, batch: int, seq_len: int) -> int:
    """Paged KV cache size from model.model_config (block_size x num_blocks), else batch x seq_len."""
    section = ((run or {}).get("model") or {}).get("model_config") or {}
    block, blocks = section.get("block_size"), section.get("num_blocks")
    if block is None and blocks is None:
        return batch * seq_len
    if not (isinstance(block, int) and isinstance(blocks, int) and block > 0 and blocks > 0):
        raise ConfigError(f"model.model_config block_size ({block!r}) and num_blocks ({blocks!r}) must both be "
                          "positive integers for a paged KV cache")
    return block * blocks


def estimate_inference(config, parallel, work: Workload, hw: Hardware, cache_tokens: int) -> InferenceEstimate:
    """Every stage of a predict layout (pipeline stages from the offsets, recompute irrelevant)."""
    counts = [sum(chunk[s] for chunk in stage_layers(config.num_layers, parallel))
              for s in range(parallel.pipeline_stage)]
    pbytes, cbytes = DTYPE_BYTES[config.param_dtype], DTYPE_BYTES[config.compute_dtype]
    mp, pp = parallel.model_parallel, parallel.pipeline_stage
    dense, expert, replicated = layer_params(config, parallel)
    split = 1 if parallel.vocab_emb_dp else mp
    est = InferenceEstimate(hbm_gb=hw.hbm_gb, cache_tokens=cache_tokens)
    for s, layers in enumerate(counts):
        first, last = s == 0, s == pp - 1
        edge = edge_params(config, parallel, first, last)
        params = layers * (dense + expert + replicated) + edge
        weights = layers * layer_weight_bytes(config, parallel, pbytes) + edge * pbytes
        cache = cache_tokens * 2 * layers * config.num_kv_heads * config.head_dim / mp * cbytes
        activations = layer_activation_bytes(config, parallel, work, False, False)
        logits = 0.0
        if last:
            logits = work.micro_batch_size * config.vocab_size / split * (2 + 4 * (1 + (config.logit_multiplier != 1.0)))
        total = weights + cache + activations + logits + hw.reserve_gb * GB
        est.stages.append(InferenceStage(s, layers, params, weights / GB, cache / GB, activations / GB,
                                         logits / GB, total / GB))
    return est


def format_inference(config, parallel, est: InferenceEstimate, work: Workload, hw: Hardware) -> str:
    quant = config.quantization
    kind = f"int{quant.bits} ({quant.method}, group {quant.group_size}) decoder projections + {config.param_dtype}" \
        if quant is not None else config.param_dtype
    lines = [f"predict layout {parallel.describe()}: {kind} weights, {config.compute_dtype} KV cache "
             f"of {est.cache_tokens} tokens, prefill batch {work.micro_batch_size} x seq {work.seq_len}",
             f"{'stage':>5} {'layers':>6} {'params':>8} {'weights':>8} {'kv':>7} {'activ':>7} {'logits':>7} "
             f"{'total':>7}"]
    for s in est.stages:
        lines.append(f"{s.stage:5d} {s.layers:6d} {s.params / 1e9:7.2f}B {s.weights_gb:7.1f}G {s.cache_gb:6.1f}G "
                     f"{s.activations_gb:6.1f}G {s.logits_gb:6.2f}G {s.total_gb:6.1f}G")
    lines.append(f"peak {est.peak_gb:.1f} GB of {hw.hbm_gb:.1f} GB (incl. {hw.reserve_gb:.1f} GB reserve): "
                 f"{'FITS' if est.fits else 'DOES NOT FIT'} (inference: no gradients or optimizer states)")
    return "\n".join(lines)


def evaluate_inference(config, parallel, work: Workload, hw: Hardware, cache_tokens: int) -> InferenceEstimate:
    """Layout checks (as for training, at the prefill batch) + the inference estimate."""
    from .validate import check_layout   # pylint: disable=import-outside-toplevel
    check_layout(config, parallel, parallel.data_parallel * work.micro_batch_size * parallel.micro_batch_num,
                 work.seq_len)
    return estimate_inference(config, parallel, work, hw, cache_tokens)


def plan_predict(config, run, parallel, work: Workload, hw: Hardware, validate: bool = True) -> int:
    """`telechat-ms plan --config predict_*.yaml`: print the inference estimate of `parallel` (the yaml's layout
    with any CLI overrides) and the static validation of its strategies at the prefill shapes; exit status
    0 fits, 1 does not fit."""
    cache = cache_tokens_of(run, work.micro_batch_size, work.seq_len)
    est = evaluate_inference(config, parallel, work, hw, cache)
    print(f"{config.family} {config.num_parameters() / 1e9:.2f}B params, predict (run_mode {run.get('run_mode')!r})")
    print(format_inference(config, parallel, est, work, hw))
    if validate:
        from ..model import Kernels   # pylint: disable=import-outside-toplevel
        from .strategies import shard_model   # pylint: disable=import-outside-toplevel
        from .validate import build_abstract_model, validate as check   # pylint: disable=import-outside-toplevel
        model = shard_model(build_abstract_model(config, Kernels.for_device("Ascend")), parallel)
        batch = parallel.data_parallel * work.micro_batch_size * parallel.micro_batch_num
        report = check(model, parallel, batch, work.seq_len, training=False)
        print(f"static validation (Ascend kernels): {len(report.ops)} sharded ops valid for prefill batch {batch}, "
              f"seq {work.seq_len}")
    return 0 if est.fits else 1
