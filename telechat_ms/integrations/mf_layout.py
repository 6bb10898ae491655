"""MindFormers' parallel objects -> our ParallelConfig, applied to the model MindFormers builds.

MindFormers hands the model `config.parallel_config` (a TransformerOpParallelConfig with the yaml's
parallel_config and recompute_config; in stand-alone / data-parallel mode it resets the layout fields to 1 and
keeps recompute) and `config.moe_config`; offset / pp_interleave_num stay in model_config. The same fields the
native loop reads, refused or applied the same way (config/parallel.py, train/layout.py).
"""
from __future__ import annotations

import mindspore as ms

from ..config.parallel import ParallelConfig
from ..train.layout import apply_layout as _apply

_LAYOUT = ("data_parallel", "model_parallel", "pipeline_stage", "expert_parallel", "micro_batch_num",
           "use_seq_parallel", "vocab_emb_dp", "gradient_aggregation_group", "context_parallel", "seq_split_num")
_RECOMPUTE = ("recompute", "select_recompute", "select_comm_recompute", "mp_comm_recompute",
              "recompute_slice_activation", "parallel_optimizer_comm_recompute", "select_recompute_exclude",
              "select_comm_recompute_exclude")


def parallel_of(config) -> ParallelConfig:
    """ParallelConfig of the model config MindFormers built (defaults when it carries none)."""
    flat = {}
    mf_parallel = getattr(config, "parallel_config", None)
    if mf_parallel is not None and hasattr(mf_parallel, "to_dict"):
        data = mf_parallel.to_dict()
        flat.update({k: data[k] for k in _LAYOUT if k in data})
        recompute = data.get("recompute")
        if isinstance(recompute, dict):
            flat.update({k: recompute[k] for k in _RECOMPUTE if k in recompute})
        elif isinstance(recompute, bool):
            flat["recompute"] = recompute
    if flat.get("pipeline_stage", 1) > 1:
        flat["offset"] = getattr(config, "offset", 0)
        flat["pp_interleave_num"] = getattr(config, "pp_interleave_num", 1)
    moe = getattr(config, "moe_config", None)
    if config.telechat.is_moe and moe is not None and hasattr(moe, "ep_extend_tp"):
        flat["ep_extend_tp"] = bool(moe.ep_extend_tp)
    return ParallelConfig.from_dict(flat, source="parallel_config / recompute_config")


def apply_layout(network, parallel: ParallelConfig) -> None:
    mode = ms.get_auto_parallel_context("parallel_mode")
    sharded = mode in ("semi_auto_parallel", "auto_parallel")
    _apply(network, parallel, sharded=sharded, fused=mode != "stand_alone")
