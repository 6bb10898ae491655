"""Expert-parallel layout of the MoE block (spec §4.4), as pure functions of ParallelConfig + model config.

Inside the MoE the device group of a pipeline stage (dp * mp ranks) is re-read as
    tokens  dp' = dp * mp, experts ep' = ep * mp, expert FFN mp' = 1      with ep_extend_tp
    tokens  dp' = dp,      experts ep' = ep,      expert FFN mp' = mp     without
and the capacity (slot) axis of the dispatched buffer (E, C, H) is split by slot = dp' / ep' (= dp / ep).
Every expert tensor is therefore laid out (ep', slot, mp') over exactly dp * mp ranks; the change from
tokens-by-dp' to experts-by-ep' between router and experts is the all-to-all of expert parallelism.
`shard_moe(moe_cell, parallel)` applies the plans below to telechat_ms.model.moe (docs/parallel.md).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config.base import ConfigError
from .strategies import ONE, OpPlan, Plan, Split, _op, apply_plan


@dataclass(frozen=True)
class MoeLayout:
    dp: Split           # token split inside the MoE (router, aux loss, dispatch indices)
    ep: Split           # expert split of the stacked (E, ., .) weights and the dispatched buffer
    mp: Split           # split of the expert FFN dimension
    slot: Split         # split of the capacity axis C of the dispatched buffer
    capacity_multiple: int   # the MoE must round C up to a multiple of this (= slot)


def moe_layout(parallel, model_cfg=None) -> MoeLayout:
    """dp'/ep'/mp'/slot of the MoE for `parallel`; checks experts and data parallel divide as needed.

    `model_cfg` is anything with `num_experts` (TelechatConfig or the MoE cell); None skips that check.
    """
    dp = Split(parallel.data_parallel, ("data_parallel",))
    mp = Split(parallel.model_parallel, ("model_parallel",))
    ep = Split(parallel.expert_parallel, ("expert_parallel",))
    if parallel.data_parallel % parallel.expert_parallel:
        # expert-parallel ranks are carved out of the data-parallel ranks (each ep group sees dp/ep replicas)
        raise ConfigError(f"expert_parallel ({parallel.expert_parallel}) must divide data_parallel "
                          f"({parallel.data_parallel})")
    slot = Split(parallel.data_parallel // parallel.expert_parallel, ("data_parallel", "expert_parallel"))
    if parallel.ep_extend_tp:
        layout = MoeLayout(dp * mp, Split(int(ep) * int(mp), ("expert_parallel", "model_parallel", "ep_extend_tp")),
                           ONE, slot, int(slot))
    else:
        layout = MoeLayout(dp, ep, mp, slot, int(slot))
    experts = getattr(model_cfg, "num_experts", None)
    if experts and experts % layout.ep:
        raise ConfigError(f"num_experts ({experts}) must be divisible by the expert split {layout.ep.describe()}")
    return layout


def moe_strategies(parallel, model_cfg=None) -> dict[str, Plan]:
    """Named plans, keyed by the attribute path inside the MoE cell ('' = the MoE cell itself)."""
    lay = moe_layout(parallel, model_cfg)
    tok = (lay.dp, ONE)
    expert_in = (lay.ep, lay.slot, ONE)         # (E, C, H)
    expert_mid = (lay.ep, lay.slot, lay.mp)     # (E, C, F)
    return {
        # the router is tiny (E x H): replicated weight, tokens split by dp'
        "router.dense": {"matmul": _op(tok, (ONE, ONE))},
        "router": {"softmax": _op(tok), "topk": _op(tok), "sum_keep": _op(tok), "div": _op(tok, tok),
                   "mul": _op(tok, ())},
        "ffn.w1": {"bmm": _op(expert_in, (lay.ep, lay.mp, ONE))},           # column in F
        "ffn.w3": {"bmm": _op(expert_in, (lay.ep, lay.mp, ONE))},
        "ffn.w2": {"bmm": _op(expert_mid, (lay.ep, ONE, lay.mp)),            # row in F: reduce over mp'
                   "bias_add": _op(expert_in, (lay.ep, ONE, ONE)), "expand": _op((lay.ep, ONE))},
        "ffn": {"mul": _op(expert_mid, expert_mid)},
        # dispatch / combine bookkeeping of the current (global-capacity) MoE: one-hot and transpose by
        # tokens; each expert's queue count (cumsum over tokens) by experts; the token gathers read a
        # replicated token table, their index / output split so that (E*C, H) lands as (ep', slot) blocks
        "": {"one_hot": _op(tok, (), ()), "transpose": _op(tok), "cumsum": _op((ONE, lay.ep)),
             "gather": _op((ONE, ONE), (lay.dp,)), "concat0": _op((ONE, ONE), (ONE, ONE))},
    }


def moe_plan(moe, parallel) -> Plan:
    """The MoE subtree's plans flattened to dotted paths ("ffn.w2.bias_add") relative to the MoE cell.

    Entries whose primitive does not exist in this configuration (no bias on w1/w3) are dropped.
    """
    flat: Plan = {}
    for prefix, plan in moe_strategies(parallel, moe).items():
        for name, op in plan.items():
            path = f"{prefix}.{name}" if prefix else name
            if _exists(moe, path):
                flat[path] = op
    return flat


def _exists(cell, path: str) -> bool:
    obj = cell
    for part in path.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def shard_moe(moe, parallel) -> None:
    """Everything MoE.shard(parallel) needs: strategies of the whole MoE subtree and the capacity rounding.

    The sub-cells (Router, Experts, ExpertLinear, router.dense) are covered here; their own shard() stays empty.
    """
    moe.capacity_multiple = moe_layout(parallel, moe).capacity_multiple
    apply_plan(moe, moe_plan(moe, parallel))


__all__ = ["MoeLayout", "moe_layout", "moe_strategies", "moe_plan", "shard_moe", "OpPlan"]
