"""Input shapes of the MoE subtree's planned primitives (dotted paths relative to the MoE cell).

Mirrors telechat_ms/model/moe.py: router on all tokens (T, H); per chunk of n = T / chunks tokens, the
dispatched buffer is (E, C, H) with C = expert_capacity(n, ...) rounded to the MoE's capacity_multiple.
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


def _chunk_calls(moe, d, e, k, n, cap) -> dict:
    """One chunk: n tokens, capacity cap; returns {path: [shapes]} for that chunk's calls."""
    h, f = d["H"], d["F"]
    kn = Dim(k * n, "top_k * tokens per chunk")
    slots = Dim(e * cap, "num_experts * capacity")
    buf, mid = (e, cap, h), (e, cap, f)
    return {
        "one_hot": [((kn, e), SCALAR, SCALAR)],          # OneHot's strategy is on its output (k*n, E)
        "transpose": [((n, k),), ((n, k),)],             # experts in assign_slots, weights in combine
        "cumsum": [((kn, e),)],
        "gather": [((Dim(n + 1, "tokens per chunk + 1"), h), (slots,)),
                   ((Dim(e * cap + 1, "num_experts * capacity + 1"), h), (kn,))],
        "concat0": [((d["1"], h), (n, h)), ((slots, h), (d["1"], h))],
        "ffn.w1.bmm": [(buf, (e, f, h))], "ffn.w3.bmm": [(buf, (e, f, h))],
        "ffn.mul": [(mid, mid)],
        "ffn.w2.bmm": [(mid, (e, h, f))], "ffn.w2.bias_add": [(buf, (e, d["1"], h))],
        "ffn.w2.expand": [((e, h),)],
    }


def moe_calls(moe, config, d, ctx) -> dict:
    e = Dim(moe.num_experts, "num_experts")
    k = Dim(moe.top_k, "num_experts_per_tok")
    total = int(d["T"])
    calls = _router_calls(moe, d, e, k)
    calls["one_hot"] = [((Dim(total * int(k), "tokens * top_k"), e), SCALAR, SCALAR)]   # aux-loss counts
    n = Dim(total // moe.chunks, "tokens per moe chunk")
    cap = Dim(_capacity(moe, int(n), ctx.training), "expert capacity")
    for _ in range(moe.chunks):
        for path, shapes in _chunk_calls(moe, d, e, k, n, cap).items():
            calls.setdefault(path, []).extend(shapes)
    return calls


MOE_CALLS = {"MoE": moe_calls}
