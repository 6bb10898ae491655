"""hf2ms / ms2hf for GPTQ and AWQ checkpoints (called by telechat_ms/convert/pipeline.py).

hf2ms keeps the weights quantized in our layout (quant/packing.py) -- or, with --dequantize, writes exact float
weights. Everything is validated before anything is written: tensor presence, dtypes and shapes against bits,
group_size and the layer's dimensions, g_idx values and group sizes, desc_act, the sym zero points. ms2hf
writes a quantized directory back in its source format (bit-exact) or, with --dequantize, as float weights.
Unquantized tensors (embeddings, norms, lm_head, biases) go through the family's name table as always.
"""
from __future__ import annotations

import dataclasses
import json
import os

from ..config.base import ConfigError
from ..convert import hf_extras
from ..convert import names as names_mod
from ..convert import pipeline
from ..convert.views import hf_outputs, hf_view, ms_view
from ..families.hf_layout import Table
from ..io.checkpoint import HF_CONFIG
from ..io.errors import ConvertError, summarize
from ..io.output import write_json
from ..io.virtual import Virtual
from . import layout
from .layout import QEntry
from .spec import QUANT_FILES, QuantizationConfig, SourceFormat

META_KEY = "quantization_source"


def _linears(order) -> list:
    return [lin for item in order if isinstance(item, QEntry) for lin in item.linears]


def _g_idx_present(source, linears, fmt: SourceFormat) -> bool:
    """GPTQ checkpoints carry g_idx for every linear (AutoGPTQ, GPTQModel) or, very old ones, for none."""
    found = [f"{lin.hf}.g_idx" in source.infos for lin in linears]
    if fmt.method == "awq" or not any(found):
        return False
    if not all(found):
        missing = [f"{lin.hf}.g_idx" for lin, ok in zip(linears, found) if not ok]
        raise ConvertError(f"invalid quantized checkpoint {source.description}: g_idx present for some linears but "
                           f"missing for {summarize(missing)}")
    return True


def _validate_hf(source, config, rest: Table, order, fmt: SourceFormat):
    """The float view of the unquantized tensors, the buffers, act_order and g_idx presence -- or one error."""
    linears = _linears(order)
    problems = [p for lin in linears for p in layout.alignment_problems(lin, fmt.bits, fmt.method == "awq")]
    layout.raise_problems(problems, source)
    g_idx = _g_idx_present(source, linears, fmt)
    expected = [e for lin in linears for e in layout.hf_expected(lin, fmt, g_idx)]
    layout.check_headers(source, expected, problems)
    view, buffers = hf_view(source, config, rest, strict=False)
    used = {k for e in rest.entries for k in e.hf_keys} | set(buffers) | {key for key, *_ in expected}
    extra = layout.unexpected(source, used)
    if extra:
        problems.append(f"unexpected tensors ({len(extra)}): {summarize(extra)}")
    layout.raise_problems(problems, source)
    act_order = False
    for lin in linears:
        act, found = layout.check_hf_data(source, lin, fmt)
        act_order, problems = act_order or act, problems + found
    layout.raise_problems(problems, source)
    dtypes = {source.infos[f"{lin.hf}.scales"].dtype for lin in linears}
    if len(dtypes) > 1:
        layout.raise_problems([f"scales of different dtypes ({', '.join(sorted(dtypes))}) in one checkpoint"], source)
    return view, buffers, act_order, g_idx, dtypes.pop()


def _quant_config(fmt: SourceFormat, order, act_order: bool, scale_dtype: str) -> QuantizationConfig:
    if fmt.bits not in (4, 8):
        raise ConvertError(f"bits {fmt.bits}: kept-quantized models hold int4 or int8 weights; convert with "
                           "--dequantize for float weights")
    if scale_dtype not in ("float16", "bfloat16", "float32"):
        raise ConvertError(f"scales of dtype {scale_dtype} are not supported (float16, bfloat16 or float32)")
    return QuantizationConfig(method=fmt.method, bits=fmt.bits, group_size=fmt.group_size, act_order=act_order,
                              split_kv=any(item.split for item in order if isinstance(item, QEntry)),
                              scale_dtype=scale_dtype)


def _dequantized_entry(source, item: QEntry, config, dequant) -> tuple[str, Virtual]:
    """Our float tensor of a quantized entry; a split k/v pair is re-interleaved per kv head."""
    key, shape = item.entry.ms_keys[0], item.entry.ms_shapes[0]
    keys = tuple(k for lin in item.linears for k in source.infos if k.startswith(lin.hf + "."))
    if not item.split:
        return key, Virtual.computed(lambda src: dequant(src, item.linears[0]), shape, "float32", keys)
    return key, Virtual.computed(lambda src: names_mod.merge_key_value(
        dequant(src, item.linears[0]), dequant(src, item.linears[1]), config.num_kv_heads, config.head_dim),
        shape, "float32", keys)


def _clean_config(src_config: str, out_dtype: str | None):
    """config.json without quantization_config (a dequantized model), dtype keys updated."""
    def write(path: str) -> None:
        with open(src_config, encoding="utf-8") as fh:
            data = json.load(fh)
        data.pop("quantization_config", None)
        for key in ("torch_dtype", "dtype"):
            if out_dtype and data.get(key) is not None:
                data[key] = out_dtype
        write_json(path, data)
    return write


def hf_to_ms(src: str, dst: str, source, config, fam, fmt: SourceFormat, opts: dict, dequantize: bool,
             check_finite: bool):
    spelling = fam.hf_layout.spelling(layout.quantized_names(source.infos))
    rest, order = layout.split_table(pipeline._table(config, spelling), config)   # pylint: disable=protected-access
    view, buffers, act_order, g_idx, scale_dtype = _validate_hf(source, config, rest, order, fmt)
    scales = {f"{lin.hf}.scales": Virtual.whole(source.infos[f"{lin.hf}.scales"]) for lin in _linears(order)}
    if check_finite:
        pipeline._check_finite(source, {**view, **scales}, opts["chunk_bytes"],   # pylint: disable=protected-access
                               opts["progress"])
    meta = {"source": os.path.abspath(src), "source_kind": source.kind, "family": fam.name, "hf_spelling": spelling,
            "router_key": None, "hf_buffers": hf_extras.record_buffers(source, buffers, rest),
            "hf_config": hf_extras.HF_CONFIG_COPY, META_KEY: {**fmt.to_record(), "g_idx": g_idx}}
    floats = [(k, view[k]) for item in order if not isinstance(item, QEntry) for k in item.ms_keys]
    meta["source_dtype"] = pipeline._uniform_dtype(dict(floats))             # pylint: disable=protected-access
    if dequantize:
        return _write_dequantized(src, dst, source, config, order, view, fmt, opts, meta,
                                  meta["source_dtype"] or scale_dtype)
    quant = _quant_config(fmt, order, act_order, scale_dtype)
    config = dataclasses.replace(config, quantization=quant)
    meta["hf_config_describes"] = hf_extras.describes(config)
    items = []
    for item in order:
        if isinstance(item, QEntry):
            items += [pair for lin in item.linears for pair in layout.ours_from_hf(source, lin, fmt, quant)]
        else:
            items += [(k, view[k]) for k in item.ms_keys]
    return pipeline._write_ms(source, items, config, dst, opts, [src], meta,   # pylint: disable=protected-access
                              keep_config=src, float_items=floats or None,
                              side_files=pipeline.SIDE_FILES + fmt.files)


def _write_dequantized(src, dst, source, config, order, view, fmt: SourceFormat, opts: dict, meta: dict,
                       default_dtype: str):
    """A float directory: each quantized weight dequantized in fp32 and rounded once to the output dtype
    (--dtype, default the checkpoint's float dtype)."""
    opts = dict(opts, dtype=opts["dtype"] or default_dtype)
    items = []
    for item in order:
        if isinstance(item, QEntry):
            items.append(_dequantized_entry(source, item, config,
                                            lambda src_, lin: layout.dequantized_from_hf(src_, lin, fmt)))
        else:
            items += [(k, view[k]) for k in item.ms_keys]
    meta["hf_config_describes"] = hf_extras.describes(config)
    clean = _clean_config(os.path.join(src, HF_CONFIG), opts["dtype"])

    def keep(out: str) -> str:        # config.json without its quantization_config: the weights are float now
        clean(os.path.join(out, hf_extras.HF_CONFIG_COPY))
        return hf_extras.HF_CONFIG_COPY
    return pipeline._write_ms(source, items, config, dst, opts, [src], meta,   # pylint: disable=protected-access
                              keep_config=keep)


# ---------------------------------------------------------------- ms2hf


def source_format(meta: dict, quant: QuantizationConfig) -> tuple[SourceFormat, bool]:
    """The format to write back (recorded by hf2ms; without a record: AutoGPTQ v1 with g_idx, or AWQ)."""
    record = meta.get(META_KEY)
    if record:
        record = dict(record)
        g_idx = bool(record.pop("g_idx", True))
        try:
            return SourceFormat.from_record(record, "convert_meta.json"), g_idx
        except ConfigError as exc:
            raise ConvertError(str(exc)) from None
    if quant.method == "awq":
        return SourceFormat("awq", "awq", quant.bits, quant.group_size, False, False), False
    return SourceFormat("gptq", "gptq", quant.bits, quant.group_size, quant.act_order, False), True


def _validate_ms(ms_source, model_config, rest: Table, order, fmt: SourceFormat):
    quant = model_config.quantization
    linears = _linears(order)
    view, dropped = ms_view(ms_source, model_config, rest, strict=False)
    problems: list[str] = []
    expected = [e for lin in linears for e in layout.ms_expected(lin, quant)]
    layout.check_headers(ms_source, expected, problems)
    used = {k for e in rest.entries for k in e.ms_keys} | {key for key, *_ in expected} | set(dropped)
    extra = layout.unexpected(ms_source, used)
    if extra:
        problems.append(f"unexpected tensors ({len(extra)}): {summarize(extra)}")
    layout.raise_problems(problems, ms_source)
    for lin in linears:
        problems += layout.check_ours_data(ms_source, lin, quant, fmt)
    layout.raise_problems(problems, ms_source)
    return view, dropped


def _quantized_config_writer(fmt: SourceFormat, g_idx: bool):
    def write(path, original, stored, out_dtype, source_dtype) -> None:
        if original:
            hf_extras.write_original_config(original, path, out_dtype, source_dtype)
            return
        data = stored.to_hf_config()
        data["quantization_config"] = {"quant_method": fmt.method, "bits": fmt.bits, "group_size": fmt.group_size,
                                       **({"version": "gemm", "zero_point": True} if fmt.method == "awq" else
                                          {"desc_act": fmt.desc_act, "sym": fmt.sym,
                                           "checkpoint_format": fmt.checkpoint_format})}
        write_json(path, data)
    return write


def _dequantized_config_writer(path, original, stored, out_dtype, source_dtype) -> None:
    if original:
        _clean_config(original, out_dtype)(path)
    else:
        write_json(path, stored.to_hf_config())


def ms_to_hf(ms_source, model_config, table: Table, meta: dict, dequantize: bool):
    """HFWeights of a quantized directory: the source format's tensors, or exact float weights."""
    quant = model_config.quantization
    rest, order = layout.split_table(table, model_config)
    fmt, g_idx = source_format(meta, quant)
    view, dropped = _validate_ms(ms_source, model_config, rest, order, None if dequantize else fmt)
    weights, floats = [], []
    for item in order:
        if not isinstance(item, QEntry):
            pairs = hf_outputs(view, model_config, Table([item]))
            weights, floats = weights + pairs, floats + pairs
        elif dequantize:
            for lin, key, shape in zip(item.linears, item.entry.hf_keys, item.entry.hf_shapes):
                keys = tuple(k for k in ms_source.infos if k.startswith(lin.ms + "."))
                weights.append((key, Virtual.computed(lambda src, lin=lin: layout.dequantized_from_ours(src, lin, quant),
                                                      shape, "float32", keys)))
        else:
            weights += [pair for lin in item.linears for pair in layout.hf_from_ours(ms_source, lin, quant, fmt, g_idx)]
    if dequantize:
        return pipeline.HFWeights(weights, dropped, dataclasses.replace(model_config, quantization=None),
                                  write_config=_dequantized_config_writer, default_dtype=model_config.param_dtype)
    return pipeline.HFWeights(weights, dropped, model_config, float_weights=floats or None,
                              side_files=tuple(n for n in fmt.files if n in QUANT_FILES),
                              write_config=_quantized_config_writer(fmt, g_idx))

