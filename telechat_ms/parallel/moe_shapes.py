"""Input shapes of the MoE subtree's planned primitives (dotted paths relative to the MoE cell).

Mirrors telechat_ms/model/moe.py: router on all tokens (T, H); aux loss over G = moe.groups groups of all
tokens; per chunk of n = T / chunks tokens, G groups of n_g = n / G tokens with capacity
C = expert_capacity(n_g, ...) rounded to the MoE's capacity_multiple: buffer (G, E, C, H) -> experts (E, G*C, H).
With `use_grouped_matmul` (Ascend kernels) dropless calls take the fused path: only the router and the aux
loss run planned primitives (the fused path's own primitives carry no strategy).
"""
from __future__ import annotations

from .shapes import SCALAR, Dim


def _capacity(moe, n: int, training: bool) -> int:
    from ..model.moe import expert_capacity   # pylint: disable=import-outside-toplevel
    return expert_capacity(n, moe.top_k, moe.num_experts, moe.capacity_factor, moe.token_dropping and training,
                           moe.capacity_multiple)


def _router_calls(moe, d, e, k) -> dict:
    t = d["T"]
    router = moe.router
    calls = {"router.dense.matmul": [((t, d["H"]), (e, d["H"]))],
             "router.softmax": [((t, e),)], "router.topk": [((t, e),)]}
    if router.norm_topk_prob:
        calls["router.sum_keep"] = [((t, k),)]
        calls["router.div"] = [((t, k), (t, d["1"]))]
    if router.scaling != 1.0:
        calls["router.mul"] = [((t, k), SCALAR)]
    return calls


def _aux_calls(d, e, k, g) -> dict:
    """Aux loss: experts (T, k) -> (G, T/G, k) -> rank-major (k*T/G, G) -> one-hot (k*T/G, G, E)."""
    per = Dim(int(d["T"]) // int(g), "tokens per moe group (tokens / groups)")
    kn = Dim(int(k) * int(per), "top_k * tokens per moe group")
    return {"transpose": [((g, per, k),)], "one_hot": [((kn, g, e), SCALAR, SCALAR)]}


def _chunk_calls(moe, d, e, k, g, per, cap) -> dict:
    """One chunk: G groups of `per` tokens, capacity cap per group; {path: [shapes]} for that chunk's calls."""
    h, f = d["H"], d["F"]
    kn = Dim(int(k) * int(per), "top_k * tokens per moe group")
    slots = Dim(int(e) * int(cap), "num_experts * capacity")
    group_slots = Dim(int(g) * int(cap), "groups * capacity")
    buf, mid = (e, group_slots, h), (e, group_slots, f)
    return {
        "transpose": [((g, per, k),), ((g, per, k),)],  # experts in assign_slots, weights in combine
        "one_hot": [((kn, g, e), SCALAR, SCALAR)],       # OneHot's strategy is on its output (k*n_g, G, E)
        "cumsum": [((kn, g, e),)],
        "transpose_slots": [((kn, g),)],
        "pad_concat": [((g, d["1"], h), (g, per, h)), ((g, slots, h), (g, d["1"], h))],
        "gather": [((g, Dim(int(per) + 1, "tokens per moe group + 1"), h), (g, slots)),
                   ((g, Dim(int(slots) + 1, "num_experts * capacity + 1"), h), (g, kn))],
        "transpose_in": [((g, e, cap, h),)], "transpose_out": [((e, g, cap, h),)],
        "ffn.w1.bmm": [(buf, (e, f, h))], "ffn.w3.bmm": [(buf, (e, f, h))],
        "ffn.mul": [(mid, mid)],
        "ffn.w2.bmm": [(mid, (e, h, f))], "ffn.w2.bias_add": [(buf, (e, d["1"], h))],
        "ffn.w2.expand": [((e, h),)],
    }


def moe_calls(moe, config, d, ctx) -> dict:
    e = Dim(moe.num_experts, "num_experts")
    k = Dim(moe.top_k, "num_experts_per_tok")
    g = Dim(moe.groups, "moe token groups (dp')")
    total = int(d["T"])
    calls = _router_calls(moe, d, e, k)
    calls.update(_aux_calls(d, e, k, g))
    dropping = moe.token_dropping and ctx.training
    if moe.use_grouped_matmul and not dropping:
        return calls
    per = Dim(total // moe.chunks // int(g), "tokens per moe group (tokens / moe_chunks / groups)")
    cap = Dim(_capacity(moe, int(per), ctx.training), "expert capacity")
    for _ in range(moe.chunks):
        for path, shapes in _chunk_calls(moe, d, e, k, g, per, cap).items():
            calls.setdefault(path, []).extend(shapes)
    return calls


MOE_CALLS = {"MoE": moe_calls}
