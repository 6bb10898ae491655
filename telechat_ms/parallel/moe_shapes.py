"""Input shapes of the MoE subtree's planned primitives (dotted paths relative to the MoE cell).

Mirrors telechat_ms/model/moe.py: router on all tokens (T, H); aux loss over G = moe.groups groups of all
tokens; per chunk of n = T / chunks tokens, G groups of n_g = n / G tokens with capacity
C = expert_capacity(n_g, ...) rounded to the MoE's capacity_multiple: buffer (G, E, C, H) -> experts (E, G*C, H).
With `use_grouped_matmul` (Ascend kernels, stand-alone) dropless calls take the fused path: only the router and
the aux loss run planned primitives; a sharded MoE never does (shard_moe turns the fused path off).
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
        calls["router.add_eps"] = [((t, d["1"]), SCALAR)]
        calls["router.div"] = [((t, k), (t, d["1"]))]
    if router.scaling != 1.0:
        calls["router.mul"] = [((t, k), SCALAR)]
    return calls


def _aux_calls(moe, d, e, k, g) -> dict:
    """Aux loss: experts (T, k) -> (G, T/G, k) -> rank-major (G, k*T/G) -> one-hot (G, k*T/G, E); z-loss on the
    router logits (T, E)."""
    per = Dim(int(d["T"]) // int(g), "tokens per moe group (tokens / groups)")
    kn = Dim(int(k) * int(per), "top_k * tokens per moe group")
    ge = (g, e)
    calls = {"transpose": [((g, per, k),)], "one_hot": [((g, kn, e), SCALAR, SCALAR)],
             "sum_assign": [((g, kn, e),)], "div_assign": [(ge, SCALAR)], "mean": [((g, per, e),)],
             "mul_aux": [(ge, ge)], "sum_aux": [(ge,)], "scale_aux": [(SCALAR, SCALAR)],
             "div_groups": [(SCALAR, SCALAR)]}
    if moe.z_coef > 0:
        t, col = d["T"], (d["T"], d["1"])
        calls.update({"max_keep": [((t, e),)], "sub_peak": [((t, e), col)], "exp": [((t, e),)],
                      "sum_keep": [((t, e),)], "log": [(col,)], "add_peak": [(col, col)], "mul_lse": [(col, col)],
                      "mean_z": [(col,)], "scale_z": [(SCALAR, SCALAR)], "add_z": [(SCALAR, SCALAR)]})
    return calls


def _chunk_calls(moe, d, e, k, g, per, cap) -> dict:
    """One chunk: G groups of `per` tokens, capacity cap per group; {path: [shapes]} for that chunk's calls."""
    h, f = d["H"], d["F"]
    kn = Dim(int(k) * int(per), "top_k * tokens per moe group")
    slots = Dim(int(e) * int(cap), "num_experts * capacity")
    table = Dim(int(g) * (int(slots) + 1), "groups * (num_experts * capacity + 1)")
    group_slots = Dim(int(g) * int(cap), "groups * capacity")
    buf, mid, assign = (e, group_slots, h), (e, group_slots, f), (g, kn)
    return {
        "transpose": [((g, per, k),), ((g, per, k),)],  # experts in assign_slots, weights in combine
        "one_hot": [((g, kn, e), SCALAR, SCALAR)],       # OneHot's strategy is on its output (G, k*n_g, E)
        "cumsum": [((g, kn, e),)], "mul_queue": [((g, kn, e), (g, kn, e))], "sum_queue": [((g, kn, e),)],
        "sub_one": [(assign, SCALAR)], "mul_cap": [(assign, SCALAR)], "add_pos": [(assign, assign)],
        "ge_cap": [(assign, SCALAR)], "fill_trash": [(assign, assign, SCALAR)],
        "add_base": [(assign, (g, d["1"]))],
        "scatter": [((table,), (Dim(int(g) * int(kn), "groups * top_k * tokens per moe group"), d["1"]),
                     (Dim(int(g) * int(kn), "groups * top_k * tokens per moe group"),))],
        "slice_filler": [((g, Dim(int(slots) + 1, "num_experts * capacity + 1")),)],
        "pad_concat": [((g, d["1"], h), (g, per, h)), ((g, slots, h), (g, d["1"], h))],
        "gather": [((g, Dim(int(per) + 1, "tokens per moe group + 1"), h), (g, slots)),
                   ((g, Dim(int(slots) + 1, "num_experts * capacity + 1"), h), (g, kn))],
        "transpose_in": [((g, e, cap, h),)], "transpose_out": [((e, g, cap, h),)],
        "less_slots": [(assign, SCALAR)], "mul_keep": [(assign, assign)], "mul_weight": [((g, kn, h), (g, kn, d["1"]))],
        "sum_choices": [((g, k, per, h),)],
        "ffn.w1.bmm": [(buf, (e, f, h))], "ffn.w3.bmm": [(buf, (e, f, h))],
        "ffn.silu": [(mid,)], "ffn.mul": [(mid, mid)],
        "ffn.w2.bmm": [(mid, (e, h, f))], "ffn.w2.bias_add": [(buf, (e, d["1"], h))],
        "ffn.w2.expand": [((e, h),)],
    }


def _slice_calls(moe, d, k) -> dict:
    """moe_chunks > 1: x (B, S, H), weights and experts (B, S, k) cut per chunk; outputs (B, S/chunks, H) joined."""
    b, s = d["B"], d["S"]
    part = (b, Dim(int(s) // moe.chunks, "seq_length / moe_chunks"), d["H"])
    return {"slice_x": [((b, s, d["H"]),)] * moe.chunks, "slice_w": [((b, s, k),)] * moe.chunks,
            "slice_e": [((b, s, k),)] * moe.chunks, "concat1": [(part,) * moe.chunks]}


def moe_calls(moe, config, d, ctx) -> dict:
    e = Dim(moe.num_experts, "num_experts")
    k = Dim(moe.top_k, "num_experts_per_tok")
    g = Dim(moe.groups, "moe token groups (dp')")
    total = int(d["T"])
    calls = _router_calls(moe, d, e, k)
    calls.update(_aux_calls(moe, d, e, k, g))
    dropping = moe.token_dropping and ctx.training
    if moe.use_grouped_matmul and not dropping:
        return calls
    per = Dim(total // moe.chunks // int(g), "tokens per moe group (tokens / moe_chunks / groups)")
    cap = Dim(_capacity(moe, int(per), ctx.training), "expert capacity")
    for _ in range(moe.chunks):
        for path, shapes in _chunk_calls(moe, d, e, k, g, per, cap).items():
            calls.setdefault(path, []).extend(shapes)
    if moe.chunks > 1:
        calls.update(_slice_calls(moe, d, k))
    return calls


MOE_CALLS = {"MoE": moe_calls}
