"""Which tensors of a family's checkpoint are quantized, what they must look like, and lazy (Computed) views
that turn them into our layout, back into the source's, or into exact float weights (quant/packing.py).

A family's float name table (families/<family>.py) names every weight; the decoder's linear projections
(query, key/value, attention output, gate, up, down) become `QLinear`s: HF module prefix, our module prefix,
in/out features. A plain entry is one QLinear; a Llama split k_proj / v_proj entry is two, kept separate on
our side (`attention.wk_v.k` / `.v`: the quantized key_value cell joins their outputs per head), so no packed
field is ever re-interleaved. Fused key_value checkpoints (TeleChat) keep one `attention.wk_v`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..families.hf_layout import KV_SPLIT, SAME, Entry, Table
from ..io.dtypes import FLOAT_DTYPES, cast
from ..io.errors import ConvertError
from ..io.virtual import Virtual
from . import packing
from .spec import QuantizationConfig, SourceFormat

QUANTIZED = ("attention.wq.weight", "attention.wk_v.weight", "attention.wo.weight",
             "feed_forward.w1.weight", "feed_forward.w2.weight", "feed_forward.w3.weight")
_LAYER = re.compile(r"^model\.layers\.\d+\.(.+)$")
HF_PARTS = ("qweight", "qzeros", "scales", "g_idx")
MS_PARTS = ("qweight", "scale", "offset", "perm")


@dataclass(frozen=True)
class QLinear:
    ms: str          # our module prefix (model.layers.0.attention.wq, ...wk_v.k)
    hf: str          # the checkpoint's module prefix (model.layers.0.self_attn.q_proj)
    k: int           # in_features
    n: int           # out_features


@dataclass(frozen=True)
class QEntry:
    """The float table entry a quantized module replaces, and its one or two quantized linears."""
    entry: Entry
    linears: tuple[QLinear, ...]

    @property
    def split(self) -> bool:
        return len(self.linears) == 2


def split_table(table: Table, config) -> tuple[Table, list]:
    """(the table without the quantized projections, every entry in model order with those as QEntry)."""
    if config.is_moe:
        raise ConvertError(f"quantized checkpoints of MoE models (num_experts={config.num_experts}) are not "
                           "supported")
    rest, order = [], []
    for entry in table.entries:
        match = _LAYER.match(entry.ms_keys[0])
        if not match or match.group(1) not in QUANTIZED:
            rest.append(entry)
            order.append(entry)
            continue
        order.append(QEntry(entry, _linears(entry, config)))
    return Table(rest, table.buffers, table.num_layers), order


def _linears(entry: Entry, config) -> tuple[QLinear, ...]:
    ms = entry.ms_keys[0].removesuffix(".weight")
    if entry.layout is SAME:
        n, k = entry.hf_shapes[0]
        return (QLinear(ms, entry.hf_keys[0].removesuffix(".weight"), k, n),)
    if entry.layout is KV_SPLIT:
        return tuple(QLinear(f"{ms}.{part}", key.removesuffix(".weight"), shape[1], shape[0])
                     for part, key, shape in zip(("k", "v"), entry.hf_keys, entry.hf_shapes))
    raise ConvertError(f"family {config.family!r}: quantized {', '.join(entry.hf_keys)} in the "
                       f"{entry.layout.name} layout are not supported (plain or split k/v projections only)")


def quantized_names(keys) -> frozenset:
    """Tensor names as a float checkpoint would have them (`X.qweight` -> `X.weight`), for family detection."""
    out = set()
    for key in keys:
        head, _, leaf = key.rpartition(".")
        if leaf == "qweight":
            out.add(head + ".weight")
        elif leaf not in ("qzeros", "scales", "g_idx"):
            out.add(key)
    return frozenset(out)


# ---------------------------------------------------------------- expected tensors


def hf_expected(lin: QLinear, fmt: SourceFormat, g_idx: bool) -> list[tuple[str, str, tuple, str]]:
    """(key, dtype kind 'int32' | 'float', shape, what the shape follows from) of one quantized HF linear."""
    p, (_, groups) = fmt.pack, _groups(lin.k, fmt.group_size)
    why = f"in_features {lin.k}, out_features {lin.n}, bits {fmt.bits}, group_size {fmt.group_size}"
    if fmt.method == "awq":
        shapes = [("qweight", "int32", (lin.k, lin.n // p)), ("qzeros", "int32", (groups, lin.n // p))]
    else:
        shapes = [("qweight", "int32", (lin.k // p, lin.n)), ("qzeros", "int32", (groups, lin.n // p))]
    shapes.append(("scales", "float", (groups, lin.n)))
    if g_idx:
        shapes.append(("g_idx", "int32", (lin.k,)))
    return [(f"{lin.hf}.{leaf}", kind, shape, why) for leaf, kind, shape in shapes]


def ms_expected(lin: QLinear, quant: QuantizationConfig) -> list[tuple[str, str, tuple, str]]:
    _, groups = quant.groups(lin.k)
    why = f"in_features {lin.k}, out_features {lin.n}, bits {quant.bits}, group_size {quant.group_size}"
    shapes = [("qweight", "int8", (lin.k, quant.packed_columns(lin.n))), ("scale", "float", (groups, lin.n)),
              ("offset", "float", (groups, lin.n))]
    if quant.act_order:
        shapes.append(("perm", "int32", (lin.k,)))
    return [(f"{lin.ms}.{leaf}", kind, shape, why) for leaf, kind, shape in shapes]


def _groups(k: int, group_size: int) -> tuple[int, int]:
    size = k if group_size == -1 else group_size
    return size, -(-k // size)


def alignment_problems(lin: QLinear, bits: int, awq: bool) -> list[str]:
    """Dimensions the packing cannot hold (named by field) -- checked before shapes."""
    p, out = 32 // bits, []
    if not awq and lin.k % p:
        out.append(f"'{lin.hf}.qweight': in_features {lin.k} is not a multiple of {p} (32 / bits {bits} input rows "
                   "per int32)")
    if lin.n % p:
        out.append(f"'{lin.hf}.qzeros': out_features {lin.n} is not a multiple of {p} (32 / bits {bits} output "
                   "columns per int32)")
    return out


def check_headers(source, expected, problems: list[str]) -> None:
    """Presence, dtype and shape of every expected tensor; problems named by tensor and field."""
    for key, kind, shape, why in expected:
        info = source.infos.get(key)
        if info is None:
            problems.append(f"'{key}': missing")
            continue
        ok_dtype = info.dtype in FLOAT_DTYPES if kind == "float" else info.dtype == kind
        if not ok_dtype or info.shape != tuple(shape):
            want = "a float dtype" if kind == "float" else kind
            problems.append(f"'{key}' in {info.path}: expected {want} {list(shape)} ({why}), found "
                            f"{info.dtype} {list(info.shape)}")


def raise_problems(problems: list[str], source) -> None:
    if problems:
        lines = [f"invalid quantized checkpoint {source.description}:"] + [f"  {p}" for p in problems[:20]]
        if len(problems) > 20:
            lines.append(f"  ... ({len(problems) - 20} more problems)")
        raise ConvertError("\n".join(lines))


# ---------------------------------------------------------------- reads


def read(source, key: str) -> np.ndarray:
    info = source.infos[key]
    return source.read(key, 0, info.numel).reshape(info.shape)


def read_f32(source, key: str) -> np.ndarray:
    return cast(read(source, key), source.infos[key].dtype, "float32")


def hf_values(source, lin: QLinear, fmt: SourceFormat) -> np.ndarray:
    """Unsigned weight values (K, N) in input order."""
    words = read(source, f"{lin.hf}.qweight")
    if fmt.method == "awq":
        return packing.unpack_cols(words, 4, awq=True)
    return packing.unpack_rows(words, fmt.bits)


def hf_zeros(source, lin: QLinear, fmt: SourceFormat) -> np.ndarray:
    stored = packing.unpack_cols(read(source, f"{lin.hf}.qzeros"), fmt.bits, awq=fmt.method == "awq")
    return packing.zero_values(stored, fmt.checkpoint_format)


def hf_groups(source, lin: QLinear, fmt: SourceFormat) -> np.ndarray:
    key = f"{lin.hf}.g_idx"
    size, _ = _groups(lin.k, fmt.group_size)
    return read(source, key).astype(np.int32) if key in source.infos else packing.trivial_groups(lin.k, size)


def check_hf_data(source, lin: QLinear, fmt: SourceFormat) -> tuple[bool, list[str]]:
    """(g_idx is not k // group_size, problems): g_idx range and group sizes, desc_act, sym zero points."""
    problems, act = [], False
    size, groups = _groups(lin.k, fmt.group_size)
    key = f"{lin.hf}.g_idx"
    if key in source.infos:
        g_idx = read(source, key)
        where = f"'{key}' in {source.infos[key].path}"
        if g_idx.size and (g_idx.min() < 0 or g_idx.max() >= groups):
            problems.append(f"{where}: g_idx values must lie in [0, {groups}) (groups of {size} of in_features "
                            f"{lin.k}), found [{int(g_idx.min())}, {int(g_idx.max())}]")
            return False, problems
        act = not np.array_equal(g_idx, packing.trivial_groups(lin.k, size))
        if act and not fmt.desc_act:
            problems.append(f"{where}: g_idx is not k // group_size but desc_act is false")
        elif act:
            try:
                packing.act_order_perm(g_idx, size)
            except packing.PackingError as exc:
                problems.append(f"{where}: g_idx: {exc}")
    if fmt.sym and fmt.method == "gptq":
        problems += _check_sym(source, lin, fmt)
    return act, problems


def _check_sym(source, lin: QLinear, fmt: SourceFormat) -> list[str]:
    """sym=true: every zero is 2^(b-1) (v1 stores 2^(b-1) - 1: 0x77777777 for 4 bit) -- catches a v2
    checkpoint labelled v1 (or the reverse), which would otherwise dequantize off by one step silently."""
    zeros = hf_zeros(source, lin, fmt)
    if np.all(zeros == 1 << (fmt.bits - 1)):
        return []
    other = "gptq_v2" if fmt.checkpoint_format == "gptq" else "gptq"
    hint = f" (they match checkpoint_format {other})" if np.all(
        packing.zero_values(packing.stored_zeros(zeros, fmt.bits, fmt.checkpoint_format), other)
        == 1 << (fmt.bits - 1)) else ""
    key = f"{lin.hf}.qzeros"
    return [f"'{key}' in {source.infos[key].path}: sym is true but the zero points are not {1 << (fmt.bits - 1)} "
            f"for checkpoint_format {fmt.checkpoint_format}{hint}"]


# ---------------------------------------------------------------- HF -> ours


def ours_from_hf(source, lin: QLinear, fmt: SourceFormat, quant: QuantizationConfig) -> list[tuple[str, Virtual]]:
    """Our qweight / scale / offset (/ perm) of one HF quantized linear, computed when written."""
    size, groups = quant.groups(lin.k)
    scales = source.infos[f"{lin.hf}.scales"]
    keys = tuple(k for k in (f"{lin.hf}.{leaf}" for leaf in HF_PARTS) if k in source.infos)

    def perm(src):
        return packing.act_order_perm(hf_groups(src, lin, fmt), size) if quant.act_order else None

    def weight(src):
        values, order = hf_values(src, lin, fmt), perm(src)
        return packing.to_ours(values if order is None else values[order], quant.bits)       # (K, N/2 | N)

    def offset(src):
        return cast(packing.offsets(hf_zeros(src, lin, fmt), quant.bits), "float32", scales.dtype)

    items = [(f"{lin.ms}.qweight", Virtual.computed(weight, (lin.k, quant.packed_columns(lin.n)), "int8", keys)),
             (f"{lin.ms}.scale", Virtual(scales.shape, Virtual.whole(scales).segments, keep_dtype=True)),
             (f"{lin.ms}.offset", Virtual.computed(offset, (groups, lin.n), scales.dtype, keys, keep_dtype=True))]
    if quant.act_order:
        items.append((f"{lin.ms}.perm", Virtual.computed(perm, (lin.k,), "int32", keys)))
    return items


def dequantized_from_hf(source, lin: QLinear, fmt: SourceFormat) -> np.ndarray:
    """The float torch-layout weight (N, K) float32, exact."""
    w_t = packing.dequantize(hf_values(source, lin, fmt), hf_zeros(source, lin, fmt),
                             read_f32(source, f"{lin.hf}.scales"), hf_groups(source, lin, fmt))
    return np.ascontiguousarray(w_t.T)                                           # (K, N) -> (N, K)


# ---------------------------------------------------------------- ours -> HF


def ours_values(source, lin: QLinear, quant: QuantizationConfig) -> np.ndarray:
    """Unsigned weight values (K, N) back in input order."""
    values = packing.from_ours(read(source, f"{lin.ms}.qweight"), quant.bits)
    if not quant.act_order:
        return values
    out = np.empty_like(values)
    out[read(source, f"{lin.ms}.perm")] = values                                 # row j is input perm[j]
    return out


def ours_zeros(source, lin: QLinear, quant: QuantizationConfig) -> np.ndarray:
    return packing.zeros_of(read_f32(source, f"{lin.ms}.offset"), quant.bits)


def ours_groups(source, lin: QLinear, quant: QuantizationConfig) -> np.ndarray:
    size, _ = quant.groups(lin.k)
    if quant.act_order:
        return packing.groups_of_perm(read(source, f"{lin.ms}.perm"), size)
    return packing.trivial_groups(lin.k, size)


def check_ours_data(source, lin: QLinear, quant: QuantizationConfig, fmt: SourceFormat | None) -> list[str]:
    """perm is a permutation; offsets are whole numbers whose zero points `fmt` can store."""
    problems = []
    if quant.act_order:
        key = f"{lin.ms}.perm"
        perm = read(source, key)
        if not np.array_equal(np.sort(perm), np.arange(lin.k)):
            problems.append(f"'{key}' in {source.infos[key].path}: perm must be a permutation of 0..{lin.k - 1}")
    key = f"{lin.ms}.offset"
    try:
        zeros = ours_zeros(source, lin, quant)
        if fmt is not None:
            packing.stored_zeros(zeros, fmt.bits, fmt.checkpoint_format)
    except packing.PackingError as exc:
        problems.append(f"'{key}' in {source.infos[key].path}: offset: {exc}")
    return problems


def hf_from_ours(source, lin: QLinear, quant: QuantizationConfig, fmt: SourceFormat,
                 g_idx: bool) -> list[tuple[str, Virtual]]:
    """The source format's qweight / qzeros / scales (/ g_idx) of one of our quantized linears."""
    p, (_, groups) = fmt.pack, quant.groups(lin.k)
    scales = source.infos[f"{lin.ms}.scale"]
    keys = tuple(k for k in (f"{lin.ms}.{leaf}" for leaf in MS_PARTS) if k in source.infos)
    awq = fmt.method == "awq"

    def qweight(src):
        values = ours_values(src, lin, quant)
        return packing.pack_cols(values, 4, awq=True) if awq else packing.pack_rows(values, fmt.bits)

    def qzeros(src):
        stored = packing.stored_zeros(ours_zeros(src, lin, quant), fmt.bits, fmt.checkpoint_format)
        return packing.pack_cols(stored, fmt.bits, awq=awq)

    shape = (lin.k, lin.n // p) if awq else (lin.k // p, lin.n)
    items = [(f"{lin.hf}.qweight", Virtual.computed(qweight, shape, "int32", keys)),
             (f"{lin.hf}.qzeros", Virtual.computed(qzeros, (groups, lin.n // p), "int32", keys)),
             (f"{lin.hf}.scales", Virtual(scales.shape, Virtual.whole(scales).segments, keep_dtype=True))]
    if g_idx:
        items.append((f"{lin.hf}.g_idx", Virtual.computed(lambda src: ours_groups(src, lin, quant), (lin.k,),
                                                          "int32", keys)))
    return items


def dequantized_from_ours(source, lin: QLinear, quant: QuantizationConfig) -> np.ndarray:
    w_t = packing.dequantize(ours_values(source, lin, quant), ours_zeros(source, lin, quant),
                             read_f32(source, f"{lin.ms}.scale"), ours_groups(source, lin, quant))
    return np.ascontiguousarray(w_t.T)                                           # (K, N) -> (N, K)


def unexpected(source, used) -> list[str]:
    return sorted(k for k in source.infos if k not in used)

