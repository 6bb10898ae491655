"""Tensor-parallel inference: every rank (one msrun worker) holds 1/tp of each split layer (docs/inference.md).

Layout (Megatron-style, explicit collectives; `construct()` of the model never branches on it):
  attention  wq rows of the rank's heads, wk_v rows of its kv heads (contiguous blocks of 2*head_dim rows:
             the rows are interleaved per head [K_0; V_0; K_1; V_1; ...]), wo columns of its heads
  MLP        w1 / w3 rows (column-parallel), w2 columns (row-parallel)
  MoE        router replicated; stacked experts ffn.w1 / ffn.w3 split along F (axis 1), ffn.w2 along F (axis 2)
  lm_head    rows V/tp (vocab-parallel); embedding, norms replicated
Row-parallel outputs (attention.wo, feed_forward.w2 / ffn.w2) are partial sums: the AllReduce installed in each
DecoderLayer's `attn_collective` / `mlp_collective` hook adds them. Their biases are loaded divided by tp on every
rank so the all-reduce adds each bias once (as the official port does for MoE; the result differs from the
single-device sum by float rounding only). The vocab-parallel lm_head gathers its logits with an AllGather.

Each rank builds a model from the per-rank config (num_heads/tp, num_kv_heads/tp, ffn_hidden_size/tp, the
global head_dim) and reads only its slices from the converted safetensors shards (lazy, by element range).

Quantized models (telechat_ms/quant, weights stored (in, out)): column-parallel projections split qweight /
scale / offset along the output axis (int4: whole bytes of two outputs); row-parallel ones (wo, w2) split
qweight rows, the scale / offset rows of their groups (replicated when one group spans all inputs) and perm.
With act order, rank r's rows [r K/tp, (r+1) K/tp) of the group-sorted weight read input features from every
rank, so those layers all-gather their input first (the quantized cell's `input_collective`).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

import numpy as np
import mindspore as ms
from mindspore import nn, ops
from mindspore.communication import GlobalComm, get_group_size, get_rank, init

from ..config.base import ConfigError
from ..config.model import TelechatConfig
from ..io import dtypes
from ..io.errors import ConvertError, summarize
from ..io.checkpoint import MODEL_CONFIG
from ..io.checkpoint import read_config
from ..io.sources import Source, open_ms
from ..model import TelechatForCausalLM
from ..model.dtypes import to_ms_dtype
from ..model.linear import Linear

# parameter (name without "model.layers.{i}.") -> axis split by tp; everything not listed is replicated
SPLIT_AXIS = {
    "attention.wq.weight": 0,            # (nh*hd, H): rows of the rank's query heads
    "attention.wk_v.weight": 0,          # (2*nkv*hd, H): the rank's kv heads, 2*hd rows each
    "attention.wo.weight": 1,            # (H, nh*hd): columns of the rank's heads (row-parallel)
    "feed_forward.w1.weight": 0,         # (F, H)
    "feed_forward.w3.weight": 0,         # (F, H)
    "feed_forward.w2.weight": 1,         # (H, F) row-parallel
    "feed_forward.ffn.w1.weight": 1,     # (E, F, H)
    "feed_forward.ffn.w3.weight": 1,     # (E, F, H)
    "feed_forward.ffn.w2.weight": 2,     # (E, H, F) row-parallel
    "lm_head.weight": 0,                 # (V, H) vocab-parallel
}
# biases of row-parallel layers: each rank adds bias / tp to its partial output, the all-reduce sums them
ROW_PARALLEL_BIASES = ("attention.wo.bias", "feed_forward.w2.bias", "feed_forward.ffn.w2.bias")
_LAYER_PREFIX = re.compile(r"^model\.layers\.\d+\.")
# quantized projections (telechat_ms/quant): module -> role; tensors stored (in, out)
QUANT_MODULES = {"attention.wq": "column", "attention.wk_v": "column", "attention.wk_v.k": "column",
                 "attention.wk_v.v": "column", "feed_forward.w1": "column", "feed_forward.w3": "column",
                 "attention.wo": "row", "feed_forward.w2": "row"}
QUANT_LEAVES = ("qweight", "scale", "offset", "perm")


def rank_config(config: TelechatConfig, tp: int) -> TelechatConfig:
    """The architecture one rank builds: heads, kv heads and ffn divided by tp, the global head_dim kept.

    ConfigError (naming the field and the values) when tp does not divide num_heads, num_kv_heads,
    ffn_hidden_size or vocab_size.
    """
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ConfigError(f"tp (tensor-parallel size) must be a positive integer, got {tp!r}")
    bad = [f"{name} ({getattr(config, name)})" for name in ("num_heads", "num_kv_heads", "ffn_hidden_size",
                                                             "vocab_size") if getattr(config, name) % tp]
    if bad:
        raise ConfigError(f"tensor-parallel size tp={tp} must divide {', '.join(bad)}: every rank holds 1/tp "
                          f"of the heads, kv heads, MLP/expert width and lm_head vocabulary")
    _check_quantized_split(config, tp)
    return dataclasses.replace(config, num_heads=config.num_heads // tp, num_kv_heads=config.num_kv_heads // tp,
                               ffn_hidden_size=config.ffn_hidden_size // tp, head_dim_override=config.head_dim)


def _check_quantized_split(config: TelechatConfig, tp: int) -> None:
    """Row-parallel quantized layers split at group boundaries; int4 column splits keep whole bytes."""
    quant = config.quantization
    if quant is None or tp == 1:
        return
    bad = []
    if quant.group_size != -1:
        for name, rows in (("attention.wo", config.num_heads * config.head_dim),
                           ("feed_forward.w2", config.ffn_hidden_size)):
            if (rows // tp) % quant.group_size:
                bad.append(f"{name}: {rows // tp} input rows per rank is not a multiple of group_size "
                           f"{quant.group_size}")
    if quant.bits == 4:
        kv = config.num_kv_heads * config.head_dim * (1 if quant.split_kv else 2)
        for name, cols in (("attention.wq", config.num_heads * config.head_dim), ("attention.wk_v", kv),
                           ("feed_forward.w1 / w3", config.ffn_hidden_size)):
            if (cols // tp) % 2:
                bad.append(f"{name}: {cols // tp} output columns per rank is odd (int4 packs two per byte)")
    if bad:
        raise ConfigError(f"quantized model: tensor-parallel size tp={tp} does not split it: {'; '.join(bad)}")


# ---------------------------------------------------------------- checkpoint slices


def split_rule(name: str) -> tuple[str, int | None]:
    """("split", axis) | ("groups", 0) | ("bias", None) | ("replicated", None) for a full parameter name;
    "groups": scale / offset rows of a row-parallel quantized layer (split, or replicated when one row)."""
    local = _LAYER_PREFIX.sub("", name)
    module, _, leaf = local.rpartition(".")
    if module in QUANT_MODULES and leaf in QUANT_LEAVES:
        if QUANT_MODULES[module] == "column":
            return ("replicated", None) if leaf == "perm" else ("split", 1)
        return ("groups", 0) if leaf in ("scale", "offset") else ("split", 0)
    if local in SPLIT_AXIS:
        return "split", SPLIT_AXIS[local]
    if local in ROW_PARALLEL_BIASES:
        return "bias", None
    return "replicated", None


def read_split(source: Source, key: str, axis: int, rank: int, tp: int) -> np.ndarray:
    """Part `rank` of `tp` along `axis` of tensor `key`, reading only its elements (storage dtype).

    A C-order tensor (pre, n, post) split on n is `pre` runs of (n/tp)*post contiguous elements, one per
    index of the leading axes (one run for axis 0).
    """
    info = source.infos[key]
    shape = info.shape
    part = shape[axis] // tp
    outer, inner = math.prod(shape[:axis]), math.prod(shape[axis + 1:])
    run, stride = part * inner, shape[axis] * inner
    begin = rank * run
    out_shape = shape[:axis] + (part,) + shape[axis + 1:]
    if outer == 1:
        return source.read(key, begin, begin + run).reshape(out_shape)
    out = np.empty((outer, run), dtype=dtypes.BY_NAME[info.dtype].storage)
    for i in range(outer):
        out[i] = source.read(key, i * stride + begin, i * stride + begin + run)
    return out.reshape(out_shape)


def check_names(source: Source, names) -> None:
    """The checkpoint holds exactly the model's parameters (names as in load_pretrained's check)."""
    names = set(names)
    missing = sorted(n for n in names if n not in source.infos)
    unexpected = sorted(k for k in source.infos if k not in names)
    if missing or unexpected:
        parts = [f"missing ({len(missing)}): {summarize(missing)}" if missing else "",
                 f"unexpected ({len(unexpected)}): {summarize(unexpected)}" if unexpected else ""]
        raise ConvertError(f"{source.description}: weights do not match the model built from {MODEL_CONFIG}: "
                           + "; ".join(p for p in parts if p))


def rank_slice(source: Source, name: str, tp: int, rank: int, key: str | None = None) -> np.ndarray:
    """float32 part of parameter `name` held by `rank`: split parameters sliced, row-parallel biases / tp,
    replicated ones whole. `key`: the checkpoint tensor holding it (default `name`)."""
    key = key or name
    info = source.infos[key]
    kind, axis = split_rule(name)
    packed = name.rpartition(".")[2] in ("qweight", "perm") and kind != "bias"
    if not packed and info.dtype not in dtypes.FLOAT_DTYPES:
        raise ConvertError(f"{source.description}: '{key}' has dtype {info.dtype}, expected a float dtype")
    if kind == "groups":
        kind = "split" if info.shape[0] > 1 else "replicated"
    if kind == "split":
        if info.shape[axis] % tp:
            raise ConvertError(f"{source.description}: '{key}' {list(info.shape)}: axis {axis} is not "
                               f"divisible by tp={tp}")
        data = read_split(source, key, axis, rank, tp)
    else:
        data = source.read(key, 0, info.numel).reshape(info.shape)
    if packed:                                 # quantized integers: as stored (int8 weights, int32 perm)
        return np.ascontiguousarray(data)
    data = dtypes.cast(data, info.dtype, "float32")
    if kind == "bias":
        data = data / np.float32(tp)           # each rank adds 1/tp of the bias; the all-reduce sums them
    return np.ascontiguousarray(data, dtype=np.float32)


TIED_HEAD_SOURCE = "model.tok_embeddings.embedding_weight"


def checkpoint_keys(names, tied: bool) -> dict[str, str]:
    """{rank parameter name: checkpoint tensor}. Tied embeddings (TeleChat v1 7B): the rank's vocab-parallel
    head is its slice of the embedding table, which the checkpoint stores once."""
    return {n: (TIED_HEAD_SOURCE if tied and n == "lm_head.weight" else n) for n in names}


def read_rank_state(source: Source, names, tp: int, rank: int, tied: bool = False) -> dict[str, np.ndarray]:
    """{name: float32 slice} of one rank (all at once: for tests and small models)."""
    keys = checkpoint_keys(names, tied)
    check_names(source, set(keys.values()))
    return {name: rank_slice(source, name, tp, rank, key) for name, key in keys.items()}


# ---------------------------------------------------------------- per-rank model


class AllReduceSum(nn.Cell):
    """Sums the row-parallel partial outputs (B, S, H) of all ranks."""

    def __init__(self):
        super().__init__()
        self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM)

    def construct(self, x):
        return self.all_reduce(x)


class GatherVocab(nn.Cell):
    """(..., V/tp) logits (or a quantized row-parallel layer's input features) of every rank -> (..., V), rank
    r's block at columns [r*V/tp, (r+1)*V/tp)."""

    def __init__(self, tp: int):
        super().__init__()
        self.tp = tp
        self.all_gather = ops.AllGather()          # concatenates the ranks' tensors on axis 0
        self.reshape = ops.Reshape()
        self.transpose = ops.Transpose()

    def construct(self, x):
        part = x.shape[-1]
        flat = self.reshape(x, (-1, part))                                       # (N, V/tp)
        gathered = self.all_gather(flat)                                         # (tp*N, V/tp), rank-major
        gathered = self.reshape(gathered, (self.tp, -1, part))                   # (tp, N, V/tp)
        gathered = self.transpose(gathered, (1, 0, 2))                           # (N, tp, V/tp)
        return self.reshape(gathered, x.shape[:-1] + (self.tp * part,))          # (..., V)


class VocabParallelHead(Linear):
    """lm_head rows of one rank: (..., H) -> (..., V/tp), then `logits_collective` (identity until the TP
    loader installs GatherVocab). It replaces TelechatForCausalLM.lm_head, so both the full forward and the
    KV-cache step (telechat_ms/infer/engine.py calls lm_head directly) return full-vocabulary logits."""

    def __init__(self, hidden: int, vocab_part: int, compute_dtype, param_dtype, init_std: float):
        super().__init__(hidden, vocab_part, False, compute_dtype, param_dtype, init_std)
        self.logits_collective = nn.Identity()

    def construct(self, x):
        return self.logits_collective(super().construct(x))


def build_rank_model(config: TelechatConfig, tp: int, kernels=None, collectives: bool = True):
    """TelechatForCausalLM of one rank (random weights): per-rank layers, a vocab-parallel lm_head and, with
    `collectives`, the AllReduce / AllGather hooks (these need mindspore.communication.init() first).
    `.config` is the global config (generation, tokenizer checks); `.rank_config` the per-rank one."""
    local = rank_config(config, tp)
    net = TelechatForCausalLM(local, kernels)
    head = VocabParallelHead(config.hidden_size, config.vocab_size // tp, to_ms_dtype(config.compute_dtype),
                             to_ms_dtype(config.param_dtype), config.initializer_range)
    net.lm_head = head                         # with tied embeddings: its own copy of the rank's vocab rows
    head.weight.name = "lm_head.weight"        # attached after construction: keep the checkpoint name
    if config.quantization is not None:
        from ..quant.cells import quantize_linears, quantized_cells   # pylint: disable=import-outside-toplevel
        quantize_linears(net, local.quantization, kernels)
    if collectives:
        for layer in net.model.layers:
            layer.attn_collective = AllReduceSum()
            layer.mlp_collective = AllReduceSum()
        head.logits_collective = GatherVocab(tp)
        if config.quantization is not None and config.quantization.act_order and tp > 1:
            for _, cell in quantized_cells(net, "row"):    # group-sorted rows read every rank's inputs
                cell.input_collective = GatherVocab(tp)
    net.config, net.rank_config, net.tp_size = config, local, tp
    return net


def load_rank_weights(net, source: Source, tp: int, rank: int) -> None:
    """Read this rank's slices into `net` (built by build_rank_model) one tensor at a time; names and shapes
    are checked. Values are cast to each parameter's dtype (e.g. bf16 weights into an fp32 CPU model)."""
    wanted = net.parameters_dict()
    keys = checkpoint_keys(wanted, net.config.tie_word_embeddings)
    check_names(source, set(keys.values()))
    for name, param in wanted.items():
        data = rank_slice(source, name, tp, rank, keys[name])
        if tuple(param.shape) != data.shape:
            raise ConvertError(f"{source.description}: '{name}': the tp={tp} slice is {list(data.shape)} but the "
                               f"rank model holds {list(param.shape)}")
        param.set_data(ms.Tensor(data, dtype=param.dtype))


def _join_group(tp: int) -> int:
    """mindspore.communication.init() unless done; check the group size; return this rank."""
    if not GlobalComm.INITED:
        if not (os.environ.get("MS_ROLE") or os.environ.get("RANK_TABLE_FILE")):
            raise ConfigError(f"--tp {tp} needs {tp} processes started by msrun (one per rank), e.g. "
                              f"scripts/msrun_predict.sh --workers {tp} -- --model DIR --tp {tp} ...; this process "
                              "was not started by a launcher")
        try:
            init()
        except RuntimeError as exc:
            first = next((line for line in str(exc).splitlines() if line.strip()), "")
            raise ConfigError(f"--tp {tp}: cannot join the distributed job ({first.strip()}); start the workers "
                              "with scripts/msrun_predict.sh") from None
    size = get_group_size()
    if size != tp:
        raise ConfigError(f"--tp {tp} but the job has {size} ranks (msrun --worker_num): start exactly tp workers")
    return get_rank()


def load_tensor_parallel(path: str, tp: int, kernels=None, **overrides):
    """This rank's model of a converted directory for tensor-parallel inference under msrun.

    Checks (before joining the job or reading weights): tp divides heads / kv heads / ffn / vocab, the
    directory holds model_config.yaml and its weight files. Then joins the communication group (init() if not
    done yet), checks its size equals tp, builds the rank's model with the collective hooks and reads only
    the rank's slices. overrides replace config fields as in from_pretrained (e.g. param_dtype="float32").
    """
    config = read_config(path, **overrides)
    rank_config(config, tp)                                 # divisibility errors before anything else
    with open_ms(path) as source:                           # headers only: missing / corrupt files fail here
        rank = _join_group(tp)
        net = build_rank_model(config, tp, kernels)
        load_rank_weights(net, source, tp, rank)
    net.tp_rank = rank
    return net
