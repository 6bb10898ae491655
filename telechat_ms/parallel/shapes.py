"""Input shapes of every planned primitive, computed from the model config, batch and sequence length.

This is the static stand-in for tracing (semi-auto parallel cannot compile on CPU, and a 115B model cannot
run here): for each Cell class, `op_calls(cell, ctx)` lists, per primitive attribute, one tuple of input
shapes per call in construct() (a primitive used twice is checked for both calls). Dimensions are `Dim`
ints carrying a name ("num_kv_heads", "seq_length", ...), so a failed divisibility check names the quantity.
tests/test_parallel_validate.py checks these shapes against the shapes recorded from a real pynative run
of the tiny models, so this table cannot drift from construct().
"""
from __future__ import annotations

from dataclasses import dataclass

SCALAR = ()   # a Python scalar input (strategy ())

# axis arguments passed in construct() that the rules need (CumSum over tokens, GatherD over the vocab)
AXES = {"cumsum": 0, "gather_d": 1}


class Dim(int):
    name: str = ""

    def __new__(cls, value: int, name: str = ""):
        obj = super().__new__(cls, int(value))
        obj.name = name
        return obj


@dataclass(frozen=True)
class ShapeContext:
    """Sizes one micro-batch presents to the network graph (global shapes, as semi-auto parallel sees them)."""

    batch: int          # sequences per micro-batch (= global batch / micro_batch_num)
    seq_len: int
    training: bool = True

    def dims(self, config) -> dict:
        b, s = self.batch, self.seq_len
        return {
            "B": Dim(b, "batch per micro-batch"), "S": Dim(s, "seq_length"), "S2": Dim(s, "seq_length (keys)"),
            "H": Dim(config.hidden_size, "hidden_size"), "N": Dim(config.num_heads, "num_heads"),
            "K": Dim(config.num_kv_heads, "num_kv_heads"), "D": Dim(config.head_dim, "head_dim"),
            "D2": Dim(config.head_dim // 2, "head_dim/2"), "F": Dim(config.ffn_hidden_size, "ffn_hidden_size"),
            "V": Dim(config.vocab_size, "vocab_size"), "T": Dim(b * s, "tokens (batch*seq)"),
            "T1": Dim(b * (s - 1), "loss tokens (batch*(seq-1))"), "1": Dim(1, "1"),
        }


def linear_calls(cell, config, d) -> dict:
    """Linear flattens (..., in) to (N, in); every Linear of the model sees all tokens of the micro-batch."""
    x_in, w_out = Dim(cell.in_features, "in_features"), Dim(cell.out_features, "out_features")
    calls = {"matmul": [((d["T"], x_in), (w_out, x_in))]}
    if cell.has_bias:
        calls["bias_add"] = [((d["T"], w_out), (w_out,))]
    return calls


def norm_calls(cell, config, d) -> dict:
    x, r = (d["B"], d["S"], d["H"]), (d["B"], d["S"], d["1"])
    if cell.fused:
        return {"rms_norm": [(x, (d["H"],))]}
    return {"square": [(x,)], "mean": [(x,)], "add": [(r, SCALAR)], "rsqrt": [(r,)], "mul": [(x, r)],
            "mul_weight": [(x, (d["H"],))]}


def rotary_calls(cell, config, d) -> dict:
    """Called on q (B, N, S, D) and on k (B, N_kv, S, D)."""
    if cell.fused:
        return {}
    calls: dict = {k: [] for k in ("mul_cos", "mul_sin", "neg", "concat", "add")}
    table = (d["S"], d["D"])
    for heads in (d["N"], d["K"]):
        x, half = (d["B"], heads, d["S"], d["D"]), (d["B"], heads, d["S"], d["D2"])
        calls["mul_cos"].append((x, table))
        calls["mul_sin"].append((x, table))
        calls["neg"].append((half,))
        calls["concat"].append((half, half))
        calls["add"].append((x, x))
    return calls


def core_attention_calls(cell, config, d) -> dict:
    """q, k, v (B, N, S, D) after GQA repeat; scores (B, N, S, S); mask (B, 1, S, S)."""
    x, scores = (d["B"], d["N"], d["S"], d["D"]), (d["B"], d["N"], d["S"], d["S2"])
    if cell.flash:
        return {"flash_attention": [(x, x, x, (d["B"], d["1"], d["S"], d["S2"]))]}
    calls = {"qk": [(x, x)], "mul_scale": [(scores, SCALAR)], "select": [(scores, scores, scores)],
             "softmax": [(scores,)], "pv": [(scores, x)]}
    if hasattr(cell.dropout, "dropout"):
        calls["dropout.dropout"] = [(scores,)]
    return calls


def attention_calls(cell, config, d) -> dict:
    """transpose: q (B, S, N, D), k and v (B, S, N_kv, D), then the context back from (B, N, S, D)."""
    kv = (d["B"], d["S"], d["K"], d["D"])
    calls = {"transpose": [((d["B"], d["S"], d["N"], d["D"]),), (kv,), (kv,)]}
    context = ((d["B"], d["N"], d["S"], d["D"]),)
    if hasattr(cell, "transpose_back"):
        calls["transpose_back"] = [context]
    else:
        calls["transpose"].append(context)
    return calls


def mlp_calls(cell, config, d) -> dict:
    x = (d["B"], d["S"], d["F"])
    return {"mul": [(x, x)]}


def decoder_calls(cell, config, d) -> dict:
    x = (d["B"], d["S"], d["H"])
    calls = {"add_attn": [(x, x)], "add_mlp": [(x, x)]}
    for name in ("attn_dropout", "mlp_dropout"):
        if hasattr(getattr(cell, name), "dropout"):
            calls[f"{name}.dropout"] = [(x,)]
    return calls


def embedding_calls(cell, config, d) -> dict:
    return {"gather": [((d["V"], d["H"]), (d["B"], d["S"]))]}


def loss_calls(cell, config, d) -> dict:
    """Shifted logits (B*(S-1), V); per-token vectors (B*(S-1),); mul runs once more with a loss_mask."""
    n, v = d["T1"], d["V"]
    logits, col, vec = (n, v), (n, d["1"]), (n,)
    return {"reduce_max": [(logits,)], "sub": [(logits, col)], "exp": [(logits,)], "sum_keep": [(logits,)],
            "log": [(col,)], "gather_d": [(logits, col)], "sum": [(vec,), (vec,)], "mul": [(vec, vec), (vec, vec)]}


def model_calls(cell, config, d) -> dict:
    """The embedding multiplier scales the gathered (B, S, H) embeddings (only when != 1.0)."""
    if cell.embedding_multiplier == 1.0:
        return {}
    return {"mul_embed": [((d["B"], d["S"], d["H"]), SCALAR)]}


def causal_lm_calls(cell, config, d) -> dict:
    """The logit multiplier scales the fp32 logits (B, S, V) of the whole sequence (only when != 1.0)."""
    if cell.logit_multiplier == 1.0:
        return {}
    return {"mul_logits": [((d["B"], d["S"], d["V"]), SCALAR)]}


CALLS = {
    "Linear": linear_calls, "RMSNorm": norm_calls, "RotaryEmbedding": rotary_calls,
    "CoreAttention": core_attention_calls, "Attention": attention_calls, "MLP": mlp_calls,
    "DecoderLayer": decoder_calls, "Embedding": embedding_calls, "CausalLMLoss": loss_calls,
    "TelechatModel": model_calls, "TelechatForCausalLM": causal_lm_calls,
}


def op_calls(cell, config, ctx: ShapeContext) -> dict:
    """{attribute path: [input shapes per call]} for one cell."""
    kind = type(cell).__name__
    d = ctx.dims(config)
    if kind in CALLS:
        return CALLS[kind](cell, config, d)
    from .moe_shapes import MOE_CALLS   # pylint: disable=import-outside-toplevel
    if kind in MOE_CALLS:
        return MOE_CALLS[kind](cell, config, d, ctx)
    return {}
