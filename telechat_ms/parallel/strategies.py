"""Shard strategies of every TeleChat2 primitive, derived from a ParallelConfig (one source of truth).

Each model Cell's `shard(parallel)` calls `shard_cell(self, parallel)`, which applies the plan returned by
the plan function registered for that Cell class; `telechat_ms.parallel.validate` recomputes the same plans
and checks them against the real input shapes. Split counts are `Split` ints that remember which
ParallelConfig fields produced them, so a failing check can name the field.

Layout summary (dp = data_parallel, mp = model_parallel, sp = mp with use_seq_parallel else 1):
  tokens (B, S, H) outside the matmuls: (dp, sp, 1)      -- norms, residual adds, dropout
  column-parallel linear (wq, wk_v, w1, w3): x (dp, 1) @ W(out, in) (mp, 1)   -- whole heads per rank
  row-parallel linear (wo, w2): x (dp, mp) @ W (1, mp) -> partial sums reduced (all-reduce, or
      reduce-scatter onto (dp*mp, 1) with SP) *before* the bias add, so the bias is added once
  attention tensors (B, N, S, D): (dp, mp, 1, 1)          -- heads split, kv heads too (n_kv % mp == 0)
  embedding / lm_head / loss: vocab split by mp unless vocab_emb_dp
MindSpore ignores all of it in stand-alone mode, so CPU numerics are unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..config.base import ConfigError


class Split(int):
    """A split count that remembers the ParallelConfig fields it came from (for error messages)."""

    fields: tuple = ()

    def __new__(cls, value: int, fields: tuple = ()):
        obj = super().__new__(cls, int(value))
        obj.fields = tuple(fields)
        return obj

    def __mul__(self, other):
        fields = self.fields + tuple(f for f in getattr(other, "fields", ()) if f not in self.fields)
        return Split(int(self) * int(other), fields)

    __rmul__ = __mul__

    def describe(self) -> str:
        return f"{int(self)} from {' x '.join(self.fields)}" if self.fields else str(int(self))


ONE = Split(1)


@dataclass(frozen=True)
class OpPlan:
    """in_strategy (one tuple per tensor input, () for a scalar) and optional out_strategy."""

    in_strategy: tuple
    out_strategy: tuple | None = None

    def plain(self) -> tuple[tuple, tuple | None]:
        to_int = lambda s: tuple(tuple(int(x) for x in part) for part in s)   # noqa: E731
        return to_int(self.in_strategy), (None if self.out_strategy is None else to_int(self.out_strategy))


Plan = dict   # attribute path (may be dotted: "attn_dropout.dropout") -> OpPlan


@dataclass(frozen=True)
class Axes:
    dp: Split
    mp: Split
    sp: Split      # sequence split outside the matmuls

    @classmethod
    def of(cls, parallel) -> "Axes":
        dp = Split(parallel.data_parallel, ("data_parallel",))
        mp = Split(parallel.model_parallel, ("model_parallel",))
        sp = Split(parallel.model_parallel, ("use_seq_parallel", "model_parallel")) if parallel.use_seq_parallel else ONE
        return cls(dp, mp, sp)

    def vocab(self, parallel) -> Split:
        """Split of the vocabulary axis: 1 when embedding and head are data-parallel (vocab_emb_dp)."""
        return ONE if parallel.vocab_emb_dp else Split(parallel.model_parallel, ("vocab_emb_dp", "model_parallel"))


def _op(*inputs, out=None) -> OpPlan:
    return OpPlan(tuple(tuple(i) for i in inputs), None if out is None else tuple(tuple(o) for o in out))


# ----------------------------------------------------------------------------- plans per Cell class
def linear_plan(cell, parallel) -> Plan:
    """x (N, in) @ W(out, in)^T by role; the bias add sees the reduced output."""
    role = getattr(cell, "parallel_role", None)
    if role is None:
        raise ConfigError(f"Linear({cell.in_features}->{cell.out_features}) has no parallel role: its parent's "
                          "shard() must call linear.shard(parallel, role)")
    a = Axes.of(parallel)
    if role == "column":
        plan = {"matmul": _op((a.dp, ONE), (a.mp, ONE))}
        bias = _op((a.dp, a.mp), (a.mp,))
    elif role == "row":
        # with SP the partial sums are reduce-scattered onto tokens (dp*mp) instead of all-reduced
        out = ((a.dp * a.sp, ONE),) if a.sp > 1 else None
        plan = {"matmul": _op((a.dp, a.mp), (ONE, a.mp), out=out)}
        bias = _op((a.dp * a.sp, ONE), (ONE,))
    elif role == "head":
        plan = {"matmul": _op((a.dp, ONE), (a.vocab(parallel), ONE))}
        bias = _op((a.dp, a.vocab(parallel)), (a.vocab(parallel),))
    elif role == "replicated":
        plan = {"matmul": _op((a.dp, ONE), (ONE, ONE))}
        bias = _op((a.dp, ONE), (ONE,))
    else:
        raise ConfigError(f"unknown Linear parallel role {role!r}")
    if cell.has_bias:
        plan["bias_add"] = bias
    return plan


def norm_plan(cell, parallel) -> Plan:
    """RMSNorm on (B, S, H): tokens (dp, sp), hidden never split (the mean runs over it)."""
    a = Axes.of(parallel)
    x = (a.dp, a.sp, ONE)
    if cell.fused:
        return {"rms_norm": _op(x, (ONE,))}
    return {"square": _op(x), "mean": _op(x), "add": _op(x, ()), "rsqrt": _op(x),
            "mul": _op(x, x), "mul_weight": _op(x, (ONE,))}


def rotary_plan(cell, parallel) -> Plan:
    """Elementwise on (B, N, S, D) with tables (S, D): heads split by mp; the fused op is functional."""
    if cell.fused:
        return {}
    a = Axes.of(parallel)
    x = (a.dp, a.mp, ONE, ONE)
    return {"mul_cos": _op(x, (ONE, ONE)), "mul_sin": _op(x, (ONE, ONE)), "neg": _op(x),
            "concat": _op(x, x), "add": _op(x, x)}


def core_attention_plan(cell, parallel) -> Plan:
    """(B, N, S, D) by (dp, mp): every head's softmax stays on one rank; mask (B, 1, S, S) by dp."""
    a = Axes.of(parallel)
    x = (a.dp, a.mp, ONE, ONE)
    if cell.flash:
        return {"flash_attention": _op(x, x, x, (a.dp, ONE, ONE, ONE))}
    plan = {"qk": _op(x, x), "mul_scale": _op(x, ()), "select": _op(x, x, x), "softmax": _op(x),
            "pv": _op(x, x)}
    if hasattr(cell.dropout, "dropout"):
        plan["dropout.dropout"] = _op(x)
    return plan


def attention_plan(cell, parallel) -> Plan:
    """The head-axis transposes; (B, S, N, D) split (dp, 1, mp, 1) keeps whole heads per rank.

    construct() uses one Transpose for q/k/v and for the context (B, N, S, D) -> (B, S, N, D), so the
    context call gets the same split, which lands on its *sequence* axis: seq_len % mp is required and
    MindSpore redistributes around it. A separate `transpose_back` primitive (same math) would take
    (dp, mp, 1, 1) instead; it is planned here as soon as the cell has one.
    """
    a = Axes.of(parallel)
    plan = {"transpose": _op((a.dp, ONE, a.mp, ONE))}
    if hasattr(cell, "transpose_back"):
        plan["transpose_back"] = _op((a.dp, a.mp, ONE, ONE))
    return plan


def mlp_plan(cell, parallel) -> Plan:
    """silu(w1 x) * w3 x on (B, S, F): F split by mp like the column-parallel outputs."""
    a = Axes.of(parallel)
    x = (a.dp, ONE, a.mp)
    return {"mul": _op(x, x)}


def decoder_plan(cell, parallel) -> Plan:
    """Residual adds (and dropout) on (B, S, H) tokens: (dp, sp, 1) -- the sequence-parallel region."""
    a = Axes.of(parallel)
    x = (a.dp, a.sp, ONE)
    plan = {"add_attn": _op(x, x), "add_mlp": _op(x, x)}
    for name in ("attn_dropout", "mlp_dropout"):
        if hasattr(getattr(cell, name), "dropout"):
            plan[f"{name}.dropout"] = _op(x)
    return plan


def embedding_plan(cell, parallel) -> Plan:
    """Gather(table (V, H), ids (B, S)): table rows split by mp (vocab parallel) unless vocab_emb_dp."""
    a = Axes.of(parallel)
    return {"gather": _op((a.vocab(parallel), ONE), (a.dp, ONE))}


def loss_plan(cell, parallel) -> Plan:
    """Cross entropy on logits (N, V): max / exp / sum reduce over the split vocab (all-reduce).

    GatherD cannot split its gather axis, so the picked logit reads (dp, 1): MindSpore gathers the vocab
    axis for that op (docs/parallel.md: a one-hot pick would avoid it).
    """
    a = Axes.of(parallel)
    v = a.vocab(parallel)
    return {"reduce_max": _op((a.dp, v)), "sub": _op((a.dp, v), (a.dp, ONE)), "exp": _op((a.dp, v)),
            "sum_keep": _op((a.dp, v)), "log": _op((a.dp, ONE)), "gather_d": _op((a.dp, ONE), (a.dp, ONE)),
            "sum": _op((a.dp,)), "mul": _op((a.dp,), (a.dp,))}


def model_plan(cell, parallel) -> Plan:
    """Embedding multiplier (Tele-FLM input_mult) on (B, S, H) tokens: the (dp, sp, 1) region the first norm
    and residual add read. Only planned when the op runs (multiplier != 1.0)."""
    if cell.embedding_multiplier == 1.0:
        return {}
    a = Axes.of(parallel)
    return {"mul_embed": _op((a.dp, a.sp, ONE), ())}


def causal_lm_plan(cell, parallel) -> Plan:
    """Logit multiplier (Tele-FLM output_mult / mup_scale_factor) on the fp32 logits (B, S, V): the lm_head
    output layout (dp, 1, vocab split), so no redistribution before the vocab-parallel loss."""
    if cell.logit_multiplier == 1.0:
        return {}
    a = Axes.of(parallel)
    return {"mul_logits": _op((a.dp, ONE, a.vocab(parallel)), ())}


PLANS: dict[str, Callable] = {
    "Linear": linear_plan, "RMSNorm": norm_plan, "RotaryEmbedding": rotary_plan,
    "CoreAttention": core_attention_plan, "Attention": attention_plan, "MLP": mlp_plan,
    "DecoderLayer": decoder_plan, "Embedding": embedding_plan, "CausalLMLoss": loss_plan,
    "TelechatModel": model_plan, "TelechatForCausalLM": causal_lm_plan,
}

# Which op input reads each Parameter (cell class -> parameter attribute -> (op, input index)): a Parameter
# shared by several cells (tied embeddings: lm_head.weight IS model.tok_embeddings.embedding_weight) must be
# sliced alike by every op that reads it; validate.check_shared_parameters compares these inputs' strategies.
# Linear's weight reaches its MatMul through a Cast, which takes the MatMul's layout.
PARAM_INPUTS: dict[str, dict[str, tuple[str, int]]] = {
    "Linear": {"weight": ("matmul", 1), "bias": ("bias_add", 1)},
    "Embedding": {"embedding_weight": ("gather", 0)},
}


# Cells planned as one unit with their whole subtree (dotted paths); validate skips their descendants.
UNITS = frozenset({"MoE"})


def plan_for(cell, parallel) -> Plan:
    """The plan of one cell (its own primitives only; children have their own)."""
    kind = type(cell).__name__
    if kind in PLANS:
        return PLANS[kind](cell, parallel)
    if kind in UNITS:
        from .moe_layout import moe_plan   # pylint: disable=import-outside-toplevel
        return moe_plan(cell, parallel)
    raise ConfigError(f"no shard plan for cell class {kind}")


def resolve(cell, path: str):
    """getattr along a dotted path ("attn_dropout.dropout")."""
    obj = cell
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def apply_plan(cell, plan: Plan) -> None:
    for path, op in plan.items():
        in_strategy, out_strategy = op.plain()
        prim = resolve(cell, path)
        if out_strategy is None:
            if prim.attrs.get("out_strategy") is not None:     # re-sharding: drop a previous layout's output split
                prim.del_prim_attr("out_strategy")
            prim.shard(in_strategy)
        else:
            prim.shard(in_strategy, out_strategy)


def shard_cell(cell, parallel) -> None:
    """Set the strategies of `cell`'s own primitives from its plan (children are sharded by their own shard())."""
    apply_plan(cell, plan_for(cell, parallel))


def shard_model(model, parallel):
    """model.shard(parallel) (which applies every cell's plan, the multipliers of the two top cells included);
    kept as the one entry point the planner, validator and tests call. Returns `model`."""
    model.shard(parallel)
    return model
