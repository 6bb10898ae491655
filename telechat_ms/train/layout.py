"""A run's ParallelConfig applied to a TelechatForCausalLM: shard strategies, pipeline stages, recompute, gradient
communication fusion. Used by the native loop (recompute and fusion; it trains data parallel only) and by the
MindFormers engine's model class (everything; telechat_ms/integrations/mf_layout.py).

Every ParallelConfig field has an effect here or is refused by ParallelConfig itself (config/parallel.py):
    dp/mp/ep/sp/vocab_emb_dp         shard strategies (semi-auto parallel only; MindSpore ignores them otherwise)
    pipeline_stage/offset/interleave pipeline stages (semi-auto parallel with pipeline_stage > 1)
    recompute/select_*/mp_comm       recompute flags per layer (parallel/pipeline.py configure_pipeline)
    recompute_slice_activation,      extra Cell.recompute flags of fully recomputed layers (DecoderLayer.recompute)
    parallel_optimizer_comm_recompute
    gradient_aggregation_group       communication fusion groups of the gradient all-reduce (MindFormers' rule)
    micro_batch_num                  MindFormers' PipelineCell (engine), 1 otherwise
    parallel optimizer fields        the MindSpore auto-parallel context (MindFormers' `parallel` section)
"""
from __future__ import annotations


def recompute_requested(parallel) -> bool:
    return any(getattr(parallel, name) not in (False, 0, [], None)
               for name in ("recompute", "select_recompute", "select_comm_recompute"))


def apply_layout(model, parallel, sharded: bool, fused: bool) -> None:
    """`sharded`: semi-auto / auto parallel (apply shard strategies); `fused`: gradients are all-reduced (set the
    fusion groups). Recompute is applied whenever the config asks for it (it changes memory, not values)."""
    from ..parallel.pipeline import configure_pipeline   # pylint: disable=import-outside-toplevel
    from ..parallel.strategies import shard_model   # pylint: disable=import-outside-toplevel
    flags = {name: True for name in ("recompute_slice_activation", "parallel_optimizer_comm_recompute")
             if getattr(parallel, name)}
    for layer in model.model.layers:
        layer.recompute_flags = flags
    if sharded:
        shard_model(model, parallel)
    if sharded or recompute_requested(parallel):
        configure_pipeline(model, parallel)
    if fused:
        set_comm_fusion(model, parallel)


def set_comm_fusion(model, parallel) -> None:
    """MindFormers' grouping: layer i joins all-reduce group int((i + offset) / dis) + 1 with
    dis = max(int((num_layers + 1) / gradient_aggregation_group), 1); everything in group 2 with pipeline stages."""
    layers = model.model.layers
    group = parallel.gradient_aggregation_group
    dis = max(int((len(layers) + 1) / group), 1)
    first_offset = parallel.offsets()[0][0]
    for i, layer in enumerate(layers):
        layer.set_comm_fusion(2 if parallel.pipeline_stage > 1 else int((i + first_offset) / dis) + 1)
    edge = 2 if parallel.pipeline_stage > 1 else group
    for cell in (model.model.tok_embeddings, model.model.norm_out, model.lm_head):
        cell.set_comm_fusion(edge)
