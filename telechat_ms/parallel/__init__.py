"""Parallel layer: shard strategies (one source of truth), static validation, pipeline, planner.

    from telechat_ms.parallel import apply_parallel, build_abstract_model, validate
    shard_model(model, parallel)                 # strategies on every primitive (ignored stand-alone)
    report = validate(model, parallel, batch, seq_len)
See docs/parallel.md.
"""
from .moe_layout import moe_layout, moe_strategies, shard_moe
from .pipeline import apply_parallel, configure_pipeline, layer_placements, wrap_pipeline
from .rules import StrategyError
from .strategies import shard_model
from .validate import build_abstract_model, validate

__all__ = ["apply_parallel", "build_abstract_model", "configure_pipeline", "layer_placements", "moe_layout",
           "moe_strategies", "shard_model", "shard_moe", "StrategyError", "validate", "wrap_pipeline"]
