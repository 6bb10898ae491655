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
    """RMSNorm on (B, S, H): tokens (dp, sp), hidden never split (the mean runs over it). Plain path: the
    (B*S, H) rows split dp x sp; rsqrt (N, 1) tiled over H and the weight (1, H) tiled over the rows take that
    layout; the weight gradient's row sum reduces over the split rows (an all-reduce)."""
    a = Axes.of(parallel)
    x = (a.dp, a.sp, ONE)
    if cell.fused:
        return {"rms_norm": _op(x, (ONE,))}
    rows = (a.dp * a.sp, ONE)
    plan = {f"rows.{name}": _op(rows) for name in ("mean", "rsqrt", "tile_rsqrt", "tile_weight", "sum_dw",
                                                    "mean_gn", "tile_gn")}
    plan.update({f"rows.{name}": _op(rows, rows) for name in ("square", "mul", "mul_weight", "mul_dw", "mul_g",
                                                               "mul_gn", "mul_n", "sub", "mul_dx")})
    plan["rows.add"] = _op(rows, ())
    return plan


def rotary_plan(cell, parallel) -> Plan:
    """(B, N, S, D) heads split by mp. Plain path: tables arrive expanded to x's shape (RopeTables; the
    decoding paths tile them here with the same layout). Fused (Ascend): (1, 1, S, D) tables replicated."""
    a = Axes.of(parallel)
    x = (a.dp, a.mp, ONE, ONE)
    if cell.fused:
        return {"rope": _op(x, (ONE,) * 4, (ONE,) * 4)}          # (the int `mode` input takes no strategy)
    return {"split_half": _op(x), "neg": _op(x), "concat": _op(x, x), "mul_cos": _op(x, x), "mul_sin": _op(x, x),
            "add": _op(x, x), "tile_cos": _op(x), "tile_sin": _op(x)}


def rope_tables_plan(cell, parallel) -> Plan:
    """Per-token tables gathered from the replicated (S, D) table by position ids split by dp; the plain path
    tiles them to the (B, N, S, D) / (B, N_kv, S, D) layout of q / k: (dp, mp, 1, 1)."""
    a = Axes.of(parallel)
    gather = _op((ONE, ONE), (a.dp, ONE))
    plan = {"gather_cos": gather, "gather_sin": gather}
    if cell.expand:
        heads = (a.dp, a.mp, ONE, ONE)
        plan.update({name: _op(heads) for name in ("tile_cos_q", "tile_sin_q", "tile_cos_k", "tile_sin_k")})
    return plan


def attention_mask_plan(cell, parallel) -> Plan:
    """Mask (B, 1, S, S) by dp: the causal constant tiled over the batch, the padding / document terms."""
    a = Axes.of(parallel)
    m = (a.dp, ONE, ONE, ONE)
    return {"tile_causal": _op(m), "is_pad": _op((a.dp, ONE)), "tile_pad": _op(m), "or_pad": _op(m, m),
            "tile_doc_q": _op(m), "tile_doc_k": _op(m), "other_doc": _op(m, m), "or_doc": _op(m, m)}


def core_attention_plan(cell, parallel) -> Plan:
    """(B, N, S, D) by (dp, mp): every head's softmax stays on one rank; the mask (B, 1, S, S) is tiled over
    the heads into the same layout (plain path) or read by dp (flash attention)."""
    a = Axes.of(parallel)
    x = (a.dp, a.mp, ONE, ONE)
    if cell.flash:
        return {"flash_attention": _op(x, x, x, (a.dp, ONE, ONE, ONE))}
    plan = {"qk": _op(x, x), "mul_scale": _op(x, ()), "tile_mask": _op(x), "fill": _op(x, x, ()),
            "softmax": _op(x), "pv": _op(x, x)}
    # the softmax gradient's own ops (they run in the backward graph only): the scores' layout throughout
    plan.update({f"scores_softmax.{name}": _op(x, x) for name in ("mul_out", "sub", "mul_dx")})
    # the row sum runs on the (B*N*Sq, Sk) view: rows split by dp x mp
    plan.update({"scores_softmax.sum_rows": _op((a.dp * a.mp, ONE)), "scores_softmax.tile_rows": _op(x)})
    if hasattr(cell.dropout, "dropout"):
        plan["dropout.dropout"] = _op(x)
    return plan


def attention_plan(cell, parallel) -> Plan:
    """The head-axis ops; (B, S, N, D) split (dp, 1, mp, 1) keeps whole heads per rank.

    `split_kv` cuts each per-head [K_h | V_h] row (B, S, N_kv, 2D) on its last axis (unsplit); `transpose`
    turns q/k/v to (B, N, S, D), `transpose_back` the context to (B, S, N, D) (split (dp, mp, 1, 1), so no
    sequence constraint); GQA: `tile_kv` copies each kv head for its query heads on (B, N_kv, 1, S, D).
    """
    a = Axes.of(parallel)
    plan = {"transpose": _op((a.dp, ONE, a.mp, ONE)), "split_kv": _op((a.dp, ONE, a.mp, ONE)),
            "transpose_back": _op((a.dp, a.mp, ONE, ONE))}
    if cell.n_rep > 1:
        plan["tile_kv"] = _op((a.dp, a.mp, ONE, ONE, ONE))
    return plan


def mlp_plan(cell, parallel) -> Plan:
    """silu(w1 x) * w3 x on (B, S, F): F split by mp like the column-parallel outputs."""
    a = Axes.of(parallel)
    x = (a.dp, ONE, a.mp)
    return {"silu": _op(x), "mul": _op(x, x)}


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
    """Cross entropy on logits (N, V) split (dp, vocab): max / exp / sum reduce over the split vocab
    (all-reduce); the label logit is a one-hot (N, V) split like the logits (MindSpore offsets the labels per
    vocab shard) times the logits, summed -- vocab-parallel end to end. Per-token vectors (N,) by dp."""
    a = Axes.of(parallel)
    v = a.vocab(parallel)
    logits, col, vec = (a.dp, v), (a.dp, ONE), (a.dp,)
    plan = {"row_max": _op(logits), "sub": _op(logits, col if cell.native_broadcast else logits),
            "exp": _op(logits), "sum_keep": _op(logits), "log": _op(col), "valid": _op(vec, ()),
            "clamp": _op(vec, ()), "one_hot": _op(logits, (), ()), "mul_hot": _op(logits, logits),
            "sum_pick": _op(logits), "sub_nll": _op(col, col), "sum": _op(vec), "mul": _op(vec, vec),
            "maximum": _op((), ()), "div": _op((), ())}
    if not cell.native_broadcast:
        plan["tile_max"] = _op(logits)
    return plan


def model_plan(cell, parallel) -> Plan:
    """The layers' aux losses summed as scalars; the embedding multiplier (Tele-FLM input_mult) on (B, S, H)
    tokens: the (dp, sp, 1) region the first norm and residual add read, only when it runs (!= 1.0)."""
    plan = {"add_aux": _op((), ())}
    if cell.embedding_multiplier != 1.0:
        a = Axes.of(parallel)
        plan["mul_embed"] = _op((a.dp, a.sp, ONE), ())
    return plan


def causal_lm_plan(cell, parallel) -> Plan:
    """The shift: logits (B, S, V) keep the lm_head output layout (dp, 1, vocab split) -- the sliced sequence
    axis is unsplit --, labels / loss_mask (B, S) by dp; the aux loss is a scalar. Logit multiplier (Tele-FLM
    output_mult / mup_scale_factor) on the same layout, only when it runs (!= 1.0)."""
    a = Axes.of(parallel)
    logits = (a.dp, ONE, a.vocab(parallel))
    plan = {"slice_logits": _op(logits), "slice_labels": _op((a.dp, ONE)), "slice_mask": _op((a.dp, ONE)),
            "add_aux": _op((), ())}
    if cell.logit_multiplier != 1.0:
        plan["mul_logits"] = _op(logits, ())
    return plan


PLANS: dict[str, Callable] = {
    "Linear": linear_plan, "RMSNorm": norm_plan, "RotaryEmbedding": rotary_plan, "RopeTables": rope_tables_plan,
    "AttentionMask": attention_mask_plan,
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


def walk_cells(network):
    """(path, cell, kind) of every cell of `network`, a unit's (the MoE's) descendants left out: a unit plans its
    whole subtree (dotted plan keys such as "ffn.w1.bmm")."""
    units: list[str] = []
    for path, cell in network.cells_and_names():
        if any(path.startswith(u + ".") for u in units):
            continue
        kind = cell_kind(cell)
        if kind in UNITS:
            units.append(path)
        yield path, cell, kind


def cell_kind(cell) -> str:
    """The class name a cell's plan is registered under: its own class or the nearest base class with a plan
    (ReusedDecoderLayer, the lazy_inline subclass, is planned as DecoderLayer)."""
    for klass in type(cell).__mro__:
        if klass.__name__ in PLANS or klass.__name__ in UNITS:
            return klass.__name__
    return type(cell).__name__


def plan_for(cell, parallel) -> Plan:
    """The plan of one cell (its own primitives only; children have their own)."""
    kind = cell_kind(cell)
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
