"""Expert-parallel layout of the MoE block (spec §4.4), as pure functions of ParallelConfig + model config.

Inside the MoE the device group of a pipeline stage (dp * mp ranks) is re-read as
    tokens  dp' = dp * mp, experts ep' = ep * mp, expert FFN mp' = 1      with ep_extend_tp
    tokens  dp' = dp,      experts ep' = ep,      expert FFN mp' = mp     without
The MoE dispatches per token group (official per-data-parallel-group semantics): G = dp' groups, each with its
own expert queues and capacity, buffer (G, E, C, H) split by dp' on G. `transpose_in` turns it into
(E, G, C, H) -> (E, G*C, H) laid out (ep', slot, ., .) with slot = dp' / ep' (= dp / ep) on the group axis:
the change from groups-by-dp' to experts-by-ep' is the dispatch all-to-all (inside each ep' group), and
`transpose_out` + the combine gather's (dp', ...) layout is the all-to-all back. Every expert tensor is laid
out (ep', slot, mp') over exactly dp * mp ranks; the capacity axis C itself is never split.
`shard_moe(moe_cell, parallel)` applies the plans below to telechat_ms.model.moe (docs/parallel.md).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config.base import ConfigError
from .strategies import ONE, OpPlan, Plan, Split, _op, apply_plan


@dataclass(frozen=True)
class MoeLayout:
    dp: Split           # token split inside the MoE (router, aux loss, token groups)
    ep: Split           # expert split of the stacked (E, ., .) weights and the dispatched buffer
    mp: Split           # split of the expert FFN dimension
    slot: Split         # split of the group part of the experts' slot axis G*C (= dp' / ep')
    groups: int              # MoE.groups: token groups with their own capacity (= dp')
    capacity_multiple: int   # MoE.capacity_multiple: C rounded up to a multiple of mp' (official rounding)


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
    # capacity rounding as the official port (a multiple of the MoE's model-parallel size); the layout itself
    # does not need it since C is never split
    if parallel.ep_extend_tp:
        layout = MoeLayout(dp * mp, Split(int(ep) * int(mp), ("expert_parallel", "model_parallel", "ep_extend_tp")),
                           ONE, slot, int(dp) * int(mp), 1)
    else:
        layout = MoeLayout(dp, ep, mp, slot, int(dp), int(mp))
    experts = getattr(model_cfg, "num_experts", None)
    if experts and experts % layout.ep:
        raise ConfigError(f"num_experts ({experts}) must be divisible by the expert split {layout.ep.describe()}")
    return layout


def moe_strategies(parallel, model_cfg=None) -> dict[str, Plan]:
    """Named plans, keyed by the attribute path inside the MoE cell ('' = the MoE cell itself)."""
    lay = moe_layout(parallel, model_cfg)
    dp = Split(parallel.data_parallel, ("data_parallel",))
    tok, col = (lay.dp, ONE), (lay.dp, ONE)   # (N, .) rows by dp'; (N, 1) / (G, .) the same layout
    group3 = (lay.dp, ONE, ONE)                 # (G, ., .) token groups by dp' (OneHot: only axis 0 splits)
    expert_in = (lay.ep, lay.slot, ONE)         # (E, G*C, H)
    expert_mid = (lay.ep, lay.slot, lay.mp)     # (E, G*C, F)
    chunk = (dp, ONE, ONE)                      # (B, S, .) sliced on the sequence, batch by dp
    chunks = max(int(getattr(model_cfg, "chunks", getattr(model_cfg, "moe_chunks", 1)) or 1), 1)
    return {
        # the router is tiny (E x H): replicated weight, tokens split by dp'
        "router.dense": {"matmul": _op(tok, (ONE, ONE))},
        "router": {"softmax": _op(tok), "topk": _op(tok), "sum_keep": _op(tok), "add_eps": _op(col, ()),
                   "div": _op(tok, col), "mul": _op(tok, ())},
        "ffn.w1": {"bmm": _op(expert_in, (lay.ep, lay.mp, ONE))},           # column in F
        "ffn.w3": {"bmm": _op(expert_in, (lay.ep, lay.mp, ONE))},
        "ffn.w2": {"bmm": _op(expert_mid, (lay.ep, ONE, lay.mp)),            # row in F: reduce over mp'
                   "bias_add": _op(expert_in, (lay.ep, ONE, ONE)), "expand": _op((lay.ep, ONE))},
        "ffn": {"silu": _op(expert_mid), "mul": _op(expert_mid, expert_mid)},
        # dispatch / combine: everything before transpose_in and after transpose_out is local to a token group
        # (G = dp' groups split by dp'); the expert queues count along the assignment axis (cumsum axis 1)
        "": {"slice_x": _op(chunk), "slice_w": _op(chunk), "slice_e": _op(chunk), "concat1": _op(*(chunk,) * chunks),
             "transpose": _op(group3), "one_hot": _op(group3, (), ()), "cumsum": _op(group3),
             "mul_queue": _op(group3, group3), "sum_queue": _op(group3), "sub_one": _op(col, ()),
             "mul_cap": _op(col, ()), "add_pos": _op(col, col), "ge_cap": _op(col, ()),
             "fill_trash": _op(col, col, ()), "add_base": _op(col, col),
             # the flat (G*(E*C+1),) slot table is group-major: split by dp' it is split by group; indices and
             # token ids are read whole (MindSpore offsets the indices per rank)
             "scatter": _op((lay.dp,), (ONE, ONE), (ONE,)), "slice_filler": _op(col),
             "pad_concat": _op(group3, group3), "gather": _op(group3, (lay.dp, ONE)),   # batch_dims=1: per group
             # (G, E, C, H) read as groups by slot x experts by ep': from the gather's (dp', 1, 1, 1) this is the
             # dispatch all-to-all; transpose_out's output (slot, ep') -> pad_concat (dp', 1, 1) the one back
             "transpose_in": _op((lay.slot, lay.ep, ONE, ONE)),
             "transpose_out": _op((lay.ep, lay.slot, ONE, ONE)),
             "less_slots": _op(col, ()), "mul_keep": _op(col, col), "mul_weight": _op(group3, group3),
             "sum_choices": _op((lay.dp, ONE, ONE, ONE)),
             # aux loss over the same groups; z-loss on the router logits (N, E)
             "sum_assign": _op(group3), "div_assign": _op(col, ()), "mean": _op(group3),
             "mul_aux": _op(col, col), "sum_aux": _op(col), "scale_aux": _op((), ()), "div_groups": _op((), ()),
             "max_keep": _op(tok), "sub_peak": _op(tok, col), "exp": _op(tok), "sum_keep": _op(tok),
             "log": _op(col), "add_peak": _op(col, col), "mul_lse": _op(col, col), "mean_z": _op(col),
             "scale_z": _op((), ()), "add_z": _op((), ())},
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
    """Everything MoE.shard(parallel) needs: strategies of the whole MoE subtree, the token groups (G = dp')
    and the capacity rounding. Both numbers change the MoE's math (per-group queues / capacity / aux loss)
    also stand-alone, as the layout would on the cluster; set them before compiling.

    A sharded MoE always takes the planned capacity path (dropless at inference: C = the group's tokens): the
    fused Ascend grouped-matmul path (MoeTokenPermute / GroupedMatmul) carries no planned strategies, so it
    stays for stand-alone and telechat_ms.infer tensor-parallel inference only (docs/parallel.md).

    The sub-cells (Router, Experts, ExpertLinear, router.dense) are covered here; their own shard() stays empty.
    """
    layout = moe_layout(parallel, moe)
    moe.groups = layout.groups
    moe.capacity_multiple = layout.capacity_multiple
    moe.use_grouped_matmul = False
    apply_plan(moe, moe_plan(moe, parallel))


__all__ = ["MoeLayout", "moe_layout", "moe_strategies", "moe_plan", "shard_moe", "OpPlan"]
