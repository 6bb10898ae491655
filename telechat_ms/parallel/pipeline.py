"""Pipeline stages, interleaved chunks, recompute and the micro-batch wrapper.

Layer order over stages (mindformers semantics): with v = pp_interleave_num chunks, chunk c of stage s holds
    base + offset[c][s] layers,  base = num_layers // (pp * v),  sum of all offsets = num_layers - base*pp*v
and layers are laid out chunk-major: chunk 0 of stages 0..pp-1, then chunk 1 of stages 0..pp-1, ...
Recompute counts (`recompute: [3, 0]`) apply to the first n layers of each (chunk, stage).
The embedding (and its norm) sit on the first stage; final norm, lm_head and loss on the last.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config.base import ConfigError
from .strategies import shard_model


@dataclass(frozen=True)
class LayerPlacement:
    layer: int
    stage: int
    chunk: int
    full_recompute: bool
    select_recompute: bool
    comm_recompute: bool


def stage_layers(num_layers: int, parallel) -> list[list[int]]:
    """Layers per [chunk][stage]; raises naming offset / pipeline_stage / num_layers when they do not add up."""
    pp, v = parallel.pipeline_stage, parallel.pp_interleave_num
    if num_layers < pp * v:
        raise ConfigError(f"num_layers ({num_layers}) < pipeline_stage ({pp}) x pp_interleave_num ({v}): every "
                          "stage chunk needs at least one layer")
    base = num_layers // (pp * v)
    offsets = parallel.offsets()
    counts = [[base + off for off in row] for row in offsets]
    total = sum(map(sum, counts))
    if total != num_layers:
        raise ConfigError(f"offset {parallel.offset} gives {total} layers over pipeline_stage={pp} x "
                          f"pp_interleave_num={v} chunks (base {base} per chunk), but num_layers is {num_layers}: "
                          f"the offsets must sum to {num_layers - base * pp * v}")
    for c, row in enumerate(counts):
        for s, n in enumerate(row):
            if n < 1:
                raise ConfigError(f"offset {parallel.offset} leaves {n} layers on stage {s} chunk {c} "
                                  f"(num_layers={num_layers}, pipeline_stage={pp}, pp_interleave_num={v})")
    return counts


def _flags(name: str, parallel, counts: list[list[int]]) -> list[list[int]]:
    """Recompute-like field as [chunk][stage] number of recomputed layers, checked against the stage sizes."""
    value = parallel.stage_counts(name)
    if isinstance(value, bool):
        return [[n if value else 0 for n in row] for row in counts]
    if len(value) == 1 and len(counts) > 1:
        value = _spread_over_chunks(value[0], counts)
    for c, (row, limit) in enumerate(zip(value, counts)):
        for s, (n, have) in enumerate(zip(row, limit)):
            if n > have:
                raise ConfigError(f"{name} asks for {n} layers on stage {s} chunk {c}, which holds only {have}")
    return value


def _spread_over_chunks(per_stage: list[int], counts: list[list[int]]) -> list[list[int]]:
    """A per-stage count over interleaved chunks: the stage's first layers in execution order (chunk 0 first)."""
    out = [[0] * len(per_stage) for _ in counts]
    for s, want in enumerate(per_stage):
        for c, row in enumerate(counts):
            out[c][s] = min(want, row[s])
            want -= out[c][s]
        if want > 0:
            raise ConfigError(f"recompute count {per_stage[s]} on stage {s} exceeds its {sum(r[s] for r in counts)} layers")
    return out


def layer_placements(num_layers: int, parallel) -> list[LayerPlacement]:
    """Stage, chunk and recompute flags of every layer, in layer order."""
    counts = stage_layers(num_layers, parallel)
    full = _flags("recompute", parallel, counts)
    select = _flags("select_recompute", parallel, counts)
    comm = _flags("select_comm_recompute", parallel, counts)
    out: list[LayerPlacement] = []
    for c, row in enumerate(counts):
        for s, n in enumerate(row):
            for i in range(n):
                out.append(LayerPlacement(len(out), s, c, i < full[c][s], i < select[c][s], i < comm[c][s]))
    return out


def stage_of_path(path: str, placements: list[LayerPlacement], pp: int) -> int:
    """Pipeline stage of a cell path of TelechatForCausalLM (for reports)."""
    parts = path.split(".")
    if "layers" in parts:
        return placements[int(parts[parts.index("layers") + 1])].stage
    if parts[0] in ("lm_head", "loss", "mul_logits") or "norm_out" in parts:
        return pp - 1
    return 0


def _select_recompute(layer) -> None:
    """Recompute the activation-heavy, cheap ops instead of storing them: attention scores/softmax (plain
    path: scaling, the mask tiled over the heads, the fill, softmax; flash attention recomputes internally)
    and the SwiGLU product."""
    core = layer.attention.core
    for name in ("mul_scale", "tile_mask", "fill", "softmax"):
        if hasattr(core, name):
            getattr(core, name).recompute()
    if hasattr(layer.feed_forward, "mul") and hasattr(layer.feed_forward, "w1"):
        layer.feed_forward.mul.recompute()


def _comm_recompute(layer) -> None:
    """Recompute the norms so that, with sequence parallel, their all-gathered outputs are not stored."""
    for norm in (layer.attention_norm, layer.ffn_norm):
        for prim in vars(norm).values():
            if hasattr(prim, "recompute") and hasattr(prim, "attrs"):
                prim.recompute()


def configure_pipeline(model, parallel) -> list[LayerPlacement]:
    """Set pipeline_stage / pipeline_segment of every part of a TelechatForCausalLM and apply recompute.

    Stand-alone (use_parallel False) MindSpore ignores stages; recompute changes memory, not values.
    Recompute can be configured once per cell, so call this once per model.
    """
    pp = parallel.pipeline_stage
    placements = layer_placements(model.config.num_layers, parallel)
    inner = model.model
    inner.tok_embeddings.pipeline_stage = 0
    if inner.embed_norm:
        inner.tok_embeddings_norm.pipeline_stage = 0
    for place, layer in zip(placements, inner.layers):
        layer.pipeline_stage = place.stage
        if parallel.pp_interleave_num > 1:
            layer.pipeline_segment = place.chunk
        if place.full_recompute:
            layer.recompute(mp_comm_recompute=parallel.mp_comm_recompute)
            continue        # a fully recomputed layer already recomputes everything below
        if place.select_recompute:
            _select_recompute(layer)
        if place.comm_recompute:
            _comm_recompute(layer)
    for cell in (inner.norm_out, model.lm_head, model.loss):
        cell.pipeline_stage = pp - 1
    return placements


def wrap_pipeline(network, parallel):
    """The loss network wrapped for micro-batches when pp > 1 (MindSpore PipelineCell), else unchanged.

    PipelineCell slices every input along the batch axis into micro_batch_num parts and accumulates the loss;
    it only does useful work under semi-auto parallel with pipeline_stages set in the context.
    """
    if parallel.pipeline_stage == 1:
        return network
    from mindspore.parallel.nn import PipelineCell   # pylint: disable=import-outside-toplevel
    return PipelineCell(network, micro_size=parallel.micro_batch_num)


def auto_parallel_context(parallel) -> dict:
    """Keyword arguments for mindspore.set_auto_parallel_context matching `parallel` (the launcher calls it)."""
    kwargs = {
        "parallel_mode": "semi_auto_parallel", "device_num": parallel.device_num,
        "pipeline_stages": parallel.pipeline_stage, "gradients_mean": False, "full_batch": True,
        "enable_parallel_optimizer": parallel.enable_parallel_optimizer,
    }
    if parallel.enable_parallel_optimizer:
        kwargs["parallel_optimizer_config"] = {
            "gradient_accumulation_shard": parallel.gradient_accumulation_shard,
            "optimizer_weight_shard_size": parallel.optimizer_weight_shard_size,
        }
    return kwargs


def apply_parallel(model, parallel):
    """shard() + stages + recompute on a TelechatForCausalLM; returns the network to train (wrapped if pp > 1)."""
    shard_model(model, parallel)
    configure_pipeline(model, parallel)
    return wrap_pipeline(model, parallel)
