"""Input shapes of every planned primitive, computed from the model config, batch and sequence length.

This is the static stand-in for tracing (semi-auto parallel cannot compile on CPU, and a 115B model cannot
run here): for each Cell class, `op_calls(cell, ctx)` lists, per primitive attribute, one tuple of input
shapes per call in construct() (a primitive used twice is checked for both calls). Dimensions are `Dim`
ints carrying a name ("num_kv_heads", "seq_length", ...), so a failed divisibility check names the quantity.
tests/test_parallel_strategies.py checks these shapes against the shapes recorded from a real pynative run
of the tiny models, and parallel/trace.py checks that no other primitive runs, so this table cannot drift
from construct().
"""
from __future__ import annotations

from dataclasses import dataclass

SCALAR = ()   # a Python scalar or 0-d tensor input (strategy ())


class Multiples(tuple):
    """Tile's multiples (not a tensor, no strategy): with the input shape they give the extent each axis of
    the Tile strategy splits (the multiple where > 1, else the input dimension)."""


# axis arguments the rules need: CumSum's axis, GatherD's gather axis, the axis each StridedSlice cuts
AXES = {"cumsum": 1, "gather_d": 1, "slice_logits": 1, "slice_labels": 1, "slice_mask": 1, "slice_x": 1,
        "slice_w": 1, "slice_e": 1, "slice_filler": 1}


class Dim(int):
    name: str = ""

    def __new__(cls, value: int, name: str = ""):
        obj = super().__new__(cls, int(value))
        obj.name = name
        return obj


@dataclass(frozen=True)
class ShapeContext:
    """Sizes one micro-batch presents to the network graph (global shapes, as semi-auto parallel sees them),
    and which optional inputs it feeds: `padded` an attention_mask, `packed` position_ids + document_ids,
    `loss_mask` an SFT loss mask."""

    batch: int          # sequences per micro-batch (= global batch / micro_batch_num)
    seq_len: int
    training: bool = True
    padded: bool = False
    packed: bool = False
    loss_mask: bool = True

    def dims(self, config) -> dict:
        b, s = self.batch, self.seq_len
        return {
            "B": Dim(b, "batch per micro-batch"), "S": Dim(s, "seq_length"), "S2": Dim(s, "seq_length (keys)"),
            "H": Dim(config.hidden_size, "hidden_size"), "N": Dim(config.num_heads, "num_heads"),
            "K": Dim(config.num_kv_heads, "num_kv_heads"), "D": Dim(config.head_dim, "head_dim"),
            "D2": Dim(config.head_dim // 2, "head_dim/2"), "F": Dim(config.ffn_hidden_size, "ffn_hidden_size"),
            "V": Dim(config.vocab_size, "vocab_size"), "T": Dim(b * s, "tokens (batch*seq)"),
            "T1": Dim(b * (s - 1), "loss tokens (batch*(seq-1))"), "1": Dim(1, "1"),
            "R": Dim(config.num_heads // config.num_kv_heads, "query heads per kv head"),
            "KD": Dim(2 * config.head_dim, "2*head_dim (per-head [K|V])"),
        }


def linear_calls(cell, config, d, ctx) -> dict:
    """Linear flattens (..., in) to (N, in); every Linear of the model sees all tokens of the micro-batch."""
    x_in, w_out = Dim(cell.in_features, "in_features"), Dim(cell.out_features, "out_features")
    calls = {"matmul": [((d["T"], x_in), (w_out, x_in))]}
    if cell.has_bias:
        calls["bias_add"] = [((d["T"], w_out), (w_out,))]
    return calls


def norm_calls(cell, config, d, ctx) -> dict:
    """Fused: (B, S, H). Plain: the (T, H) rows of RMSNormRows (forward ops; its written-out gradient's ops run
    in the backward graph only and are checked by the strategy tests)."""
    if cell.fused:
        return {"rms_norm": [((d["B"], d["S"], d["H"]), (d["H"],))]}
    x, r = (d["T"], d["H"]), (d["T"], d["1"])
    return {"rows.square": [(x, x)], "rows.mean": [(x,)], "rows.add": [(r, SCALAR)], "rows.rsqrt": [(r,)],
            "rows.tile_rsqrt": [(r, Multiples((1, d["H"])))], "rows.mul": [(x, x)],
            "rows.tile_weight": [((d["1"], d["H"]), Multiples((d["T"], 1)))], "rows.mul_weight": [(x, x)]}


def rotary_calls(cell, config, d, ctx) -> dict:
    """Called on q (B, N, S, D) and on k (B, N_kv, S, D), with tables RopeTables made (the plain path's are
    already of x's shape; the fused kernel reads (1, 1, S, D), or (B, 1, S, D) per token)."""
    keys = ("rope",) if cell.fused else ("split_half", "neg", "concat", "mul_cos", "mul_sin", "add")
    calls: dict = {k: [] for k in keys}
    table = ((d["B"] if ctx.packed else d["1"]), d["1"], d["S"], d["D"])
    for heads in (d["N"], d["K"]):
        x, half = (d["B"], heads, d["S"], d["D"]), (d["B"], heads, d["S"], d["D2"])
        if cell.fused:
            calls["rope"].append((x, table, table))
            continue
        calls["split_half"].append((x,))
        calls["neg"].append((half,))
        calls["concat"].append((half, half))
        calls["mul_cos"].append((x, x))
        calls["mul_sin"].append((x, x))
        calls["add"].append((x, x))
    return calls


def rope_tables_calls(cell, config, d, ctx) -> dict:
    """Gather per position (packed rows), then the plain path tiles (1 or B, 1, S, D) to q's and k's shapes."""
    calls: dict = {}
    if ctx.packed:
        calls["gather_cos"] = calls["gather_sin"] = [((d["S"], d["D"]), (d["B"], d["S"]))]
    if not cell.expand:
        return calls
    rows = (d["B"], d["1"], d["S"], d["D"]) if ctx.packed else (d["1"], d["1"], d["S"], d["D"])
    batch = 1 if ctx.packed else d["B"]
    kinds = (("q", d["N"]),) if config.num_kv_heads == config.num_heads else (("q", d["N"]), ("k", d["K"]))
    for kind, heads in kinds:
        for table in ("cos", "sin"):
            calls[f"tile_{table}_{kind}"] = [(rows, Multiples((batch, heads, 1, 1)))]
    return calls


def attention_mask_calls(cell, config, d, ctx) -> dict:
    """(1, 1, S, S) causal constant tiled over the batch; padding (B, 1, 1, S) and documents (B, 1, S, 1) /
    (B, 1, 1, S) tiled to (B, 1, S, S) unless the kernels broadcast."""
    b, s = d["B"], d["S"]
    full = (b, d["1"], s, d["S2"])
    calls = {"tile_causal": [((d["1"], d["1"], s, d["S2"]), Multiples((b, 1, 1, 1)))]}
    row, col = (b, d["1"], d["1"], d["S2"]), (b, d["1"], s, d["1"])
    tiled = not cell.native_broadcast
    if ctx.padded:
        calls["is_pad"] = [((b, s),)]
        if tiled:
            calls["tile_pad"] = [(row, Multiples((1, 1, s, 1)))]
        calls["or_pad"] = [(full, full if tiled else row)]
    if ctx.packed:
        if tiled:
            calls["tile_doc_q"] = [(col, Multiples((1, 1, 1, s)))]
            calls["tile_doc_k"] = [(row, Multiples((1, 1, s, 1)))]
        calls["other_doc"] = [(full, full) if tiled else (col, row)]
        calls["or_doc"] = [(full, full)]
    return calls


def core_attention_calls(cell, config, d, ctx) -> dict:
    """q, k, v (B, N, S, D) after GQA repeat; scores (B, N, S, S); mask (B, 1, S, S)."""
    x, scores = (d["B"], d["N"], d["S"], d["D"]), (d["B"], d["N"], d["S"], d["S2"])
    mask = (d["B"], d["1"], d["S"], d["S2"])
    if cell.flash:
        return {"flash_attention": [(x, x, x, mask)]}
    calls = {"qk": [(x, x)], "mul_scale": [(scores, SCALAR)], "tile_mask": [(mask, Multiples((1, d["N"], 1, 1)))],
             "fill": [(scores, scores, SCALAR)], "softmax": [(scores,)], "pv": [(scores, x)]}
    if hasattr(cell.dropout, "dropout"):
        calls["dropout.dropout"] = [(scores,)]
    return calls


def attention_calls(cell, config, d, ctx) -> dict:
    """split_kv on (B, S, N_kv, 2D); transpose: q (B, S, N, D), k and v (B, S, N_kv, D); the context back from
    (B, N, S, D); GQA: k and v (B, N_kv, 1, S, D) tiled n_rep times."""
    kv = (d["B"], d["S"], d["K"], d["D"])
    calls = {"split_kv": [((d["B"], d["S"], d["K"], d["KD"]),)],
             "transpose": [((d["B"], d["S"], d["N"], d["D"]),), (kv,), (kv,)],
             "transpose_back": [((d["B"], d["N"], d["S"], d["D"]),)]}
    if cell.n_rep > 1:
        grouped = ((d["B"], d["K"], d["1"], d["S"], d["D"]), Multiples((1, 1, d["R"], 1, 1)))
        calls["tile_kv"] = [grouped, grouped]
    return calls


def mlp_calls(cell, config, d, ctx) -> dict:
    x = (d["B"], d["S"], d["F"])
    return {"silu": [(x,)], "mul": [(x, x)]}


def decoder_calls(cell, config, d, ctx) -> dict:
    x = (d["B"], d["S"], d["H"])
    calls = {"add_attn": [(x, x)], "add_mlp": [(x, x)]}
    for name in ("attn_dropout", "mlp_dropout"):
        if hasattr(getattr(cell, name), "dropout"):
            calls[f"{name}.dropout"] = [(x,)]
    return calls


def embedding_calls(cell, config, d, ctx) -> dict:
    return {"gather": [((d["V"], d["H"]), (d["B"], d["S"]))]}


def loss_calls(cell, config, d, ctx) -> dict:
    """Shifted logits (B*(S-1), V); per-token vectors (B*(S-1),); mul runs once more with a loss_mask.
    OneHot's entry is its output (N, V) (the strategy MindSpore takes), then the on / off values."""
    n, v = d["T1"], d["V"]
    logits, col, vec = (n, v), (n, d["1"]), (n,)
    calls = {"row_max": [(logits,)], "sub": [(logits, col if cell.native_broadcast else logits)],
             "exp": [(logits,)], "sum_keep": [(logits,)], "log": [(col,)], "valid": [(vec, SCALAR)],
             "clamp": [(vec, SCALAR)], "one_hot": [(logits, SCALAR, SCALAR)], "mul_hot": [(logits, logits)],
             "sum_pick": [(logits,)], "sub_nll": [(col, col)], "sum": [(vec,), (vec,)],
             "mul": [(vec, vec)] * (2 if ctx.loss_mask else 1), "maximum": [(SCALAR, SCALAR)],
             "div": [(SCALAR, SCALAR)]}
    if not cell.native_broadcast:
        calls["tile_max"] = [(col, Multiples((1, v)))]
    return calls


def model_calls(cell, config, d, ctx) -> dict:
    """One scalar aux-loss sum per layer; the embedding multiplier scales the (B, S, H) embeddings (!= 1.0)."""
    calls = {"add_aux": [(SCALAR, SCALAR)] * config.num_layers}
    if cell.embedding_multiplier != 1.0:
        calls["mul_embed"] = [((d["B"], d["S"], d["H"]), SCALAR)]
    return calls


def causal_lm_calls(cell, config, d, ctx) -> dict:
    """The shift slices (B, S, V) logits and (B, S) labels / loss_mask; the aux loss joins the scalar loss; the
    logit multiplier scales the fp32 logits (B, S, V) of the whole sequence (only when != 1.0)."""
    calls = {"slice_logits": [((d["B"], d["S"], d["V"]),)], "slice_labels": [((d["B"], d["S"]),)],
             "add_aux": [(SCALAR, SCALAR)]}
    if ctx.loss_mask:
        calls["slice_mask"] = [((d["B"], d["S"]),)]
    if cell.logit_multiplier != 1.0:
        calls["mul_logits"] = [((d["B"], d["S"], d["V"]), SCALAR)]
    return calls


CALLS = {
    "Linear": linear_calls, "RMSNorm": norm_calls, "RotaryEmbedding": rotary_calls, "RopeTables": rope_tables_calls,
    "AttentionMask": attention_mask_calls, "CoreAttention": core_attention_calls, "Attention": attention_calls,
    "MLP": mlp_calls, "DecoderLayer": decoder_calls, "Embedding": embedding_calls, "CausalLMLoss": loss_calls,
    "TelechatModel": model_calls, "TelechatForCausalLM": causal_lm_calls,
}


def op_calls(cell, config, ctx: ShapeContext) -> dict:
    """{attribute path: [input shapes per call]} for one cell."""
    from .strategies import cell_kind   # pylint: disable=import-outside-toplevel
    kind = cell_kind(cell)
    d = ctx.dims(config)
    if kind in CALLS:
        return CALLS[kind](cell, config, d, ctx)
    from .moe_shapes import MOE_CALLS   # pylint: disable=import-outside-toplevel
    if kind in MOE_CALLS:
        return MOE_CALLS[kind](cell, config, d, ctx)
    return {}
