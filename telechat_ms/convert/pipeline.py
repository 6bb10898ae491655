"""The three conversions, as library functions the CLIs wrap.

Each one: check the destination, load the config (hf2ms: detect the family), open the source lazily, validate
everything (keys, shapes, dtypes, file integrity from headers), and only then stream the tensors into a staged
output directory. The family's name table (families/<family>.py) decides the HF layout in both directions.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from ..config.base import ConfigError
from ..config.model import TelechatConfig
from ..families import detect
from ..families.hf_config import read_hf_json
from ..io.checkpoint import HF_CONFIG, META, MODEL_CONFIG
from ..io.dtypes import BY_NAME, FLOAT_DTYPES, OUTPUT_DTYPES, parse_size
from ..io.errors import ConvertError
from ..io import integrity
from ..io.virtual import Computed, Transposed
from ..io.output import TOKENIZER_FILES, check_destination, copy_side_files, staged_output, write_json
from ..io.safetensors_io import read_header
from ..io.sources import BIN_INDEX, BIN_SINGLE, SAFE_INDEX, SAFE_SINGLE, Source, open_hf, open_ms
from ..io.virtual import Virtual
from ..io.writer import DEFAULT_CHUNK_BYTES, output_dtypes, write_ckpt, write_safetensors
from . import hf_extras
from ..quant.layout import quantized_names
from ..quant.spec import named_weights_file as read_named_weights
from ..quant.spec import read_source_format
from .memory import WithConstants
from .names import table
from .views import hf_outputs, hf_view, ms_outputs, ms_view

FORMATS = ("safetensors", "ckpt")
# tokenizer files copied beside the weights: the SentencePiece / tokenizer.json ones, plus the GPT-2 BPE pair and
# added tokens of Aquila2-style checkpoints
SIDE_FILES = TOKENIZER_FILES + tuple(n for n in ("vocab.json", "merges.txt", "added_tokens.json")
                                     if n not in TOKENIZER_FILES)


@dataclass
class ConvertReport:
    dst: str
    tensors: int
    bytes: int
    files: list[str]
    seconds: float
    dropped: list[str] = field(default_factory=list)     # non-model entries of a training checkpoint
    copied: list[str] = field(default_factory=list)      # tokenizer / generation files
    notes: list[str] = field(default_factory=list)       # choices worth telling the user (which config.json)

    def summary(self) -> str:
        rate = self.bytes / 2**20 / self.seconds if self.seconds > 0 else float("inf")
        return (f"wrote {self.tensors} tensors, {self.bytes / 2**30:.2f} GiB in {len(self.files)} files to "
                f"{self.dst} in {self.seconds:.1f} s ({rate:.0f} MiB/s)")


def load_config(path: str, family: str | None = None) -> TelechatConfig:
    """Our model_config.yaml or an HF config.json (a file, or a directory holding one); `family` overrides
    the detection of an HF config's family."""
    try:
        if os.path.isdir(path):
            if os.path.isfile(os.path.join(path, MODEL_CONFIG)):
                return TelechatConfig.from_yaml(os.path.join(path, MODEL_CONFIG))
            return TelechatConfig.from_hf_config(os.path.join(path, HF_CONFIG), family=family)
        if path.endswith(".json"):
            return TelechatConfig.from_hf_config(path, family=family)
        if path.endswith((".yaml", ".yml")):
            return TelechatConfig.from_yaml(path)
    except ConfigError as exc:
        raise ConvertError(f"config: {exc}") from None
    raise ConvertError(f"{path}: expected a model_config.yaml, an HF config.json or a directory with one")


def _options(dtype: str | None, fmt: str, max_shard_size) -> int:
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise ConvertError(f"dtype must be one of {', '.join(OUTPUT_DTYPES)}, got {dtype!r}")
    if fmt not in FORMATS:
        raise ConvertError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return parse_size(max_shard_size)


def _bar(items, dtype, progress: bool, desc: str):
    total = sum(t.numel * BY_NAME[d].itemsize for (_, t), d in zip(items, output_dtypes(items, dtype)))
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not progress)


def _with_param_dtype(config: TelechatConfig, items, dtype) -> TelechatConfig:
    """Record the stored dtype as param_dtype so the model is built to match the weights."""
    dtypes = set(output_dtypes(items, dtype))
    return dataclasses.replace(config, param_dtype=dtypes.pop()) if len(dtypes) == 1 else config


def _write_ms(source, items, config, dst, opts: dict, side_dirs, meta: dict, keep_config=None,
              float_items=None, side_files=SIDE_FILES) -> ConvertReport:
    """`keep_config`: the source directory whose config.json is kept, or a function writing it into the
    output (returns the file name); `float_items`: the tensors whose dtype is the model's param_dtype
    (default: all; a quantized model's packed weights and scales are not)."""
    start, dtype = time.perf_counter(), opts["dtype"]
    with staged_output(dst, opts["overwrite"]) as out, _bar(items, dtype, opts["progress"], "convert") as bar:
        if callable(keep_config):
            kept = [keep_config(out)]
        else:
            kept = [hf_extras.keep_hf_config(keep_config, out)] if keep_config else []
        if opts["fmt"] == "ckpt":
            written = write_ckpt(out, items, source, dtype, opts["chunk_bytes"], bar)
        else:
            written = write_safetensors(out, items, source, dtype, opts["max_bytes"], {"format": "ms"},
                                        opts["chunk_bytes"], bar)
        _with_param_dtype(config, items if float_items is None else float_items, dtype).to_yaml(
            os.path.join(out, MODEL_CONFIG))
        copied = copy_side_files(side_dirs, out, side_files)
        write_json(os.path.join(out, META), {**meta, "format": opts["fmt"], "dtype": dtype})
    return ConvertReport(dst, len(items), written.total_size,
                         written.files + [MODEL_CONFIG, META] + kept + copied, time.perf_counter() - start,
                         meta.get("dropped", []), copied)



def _hf_source_config(src: str, source, family: str | None):
    """(config, family, quantization format or None) of an HF directory: its config.json, the family
    detected from it and the tensor names (`family` overrides), mapped by that family's HF config reader.
    A quantized checkpoint's `quantization_config` (and quantize_config.json) is read by telechat_ms.quant;
    the family reads the rest, with the quantized tensors named as their float originals for detection."""
    try:
        data, path = read_hf_json(os.path.join(src, HF_CONFIG))
        fmt = read_source_format(src, data, path)
        keys = frozenset(source.infos)
        if fmt is not None:
            data, keys = {k: v for k, v in data.items() if k != "quantization_config"}, quantized_names(keys)
        fam = detect(data, keys, family)
        if fam.hf_layout is None:
            raise ConvertError(f"family {fam.name!r} has no HF checkpoint layout")
        return fam.config_from_hf(data, path), fam, fmt
    except ConfigError as exc:
        raise ConvertError(f"config: {exc}") from None


def _table(config, spelling):
    try:
        return table(config, spelling)
    except ConfigError as exc:
        raise ConvertError(f"config: {exc}") from None


def _uniform_dtype(view) -> str | None:
    dtypes = {part.dtype for tensor in view.values() for part in tensor.segments}
    return dtypes.pop() if len(dtypes) == 1 else None


def convert_hf_to_ms(src: str, dst: str, *, family: str | None = None, dtype: str | None = None,
                     fmt: str = "safetensors", max_shard_size="4GB", overwrite: bool = False,
                     progress: bool = False, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                     check_finite: bool = True, dequantize: bool = False) -> ConvertReport:
    """HF directory of any known family -> our MindSpore directory (sharded safetensors + index, or one .ckpt).

    The family is detected from config.json and the tensor names unless `family` names it. `check_finite`:
    read every weight once before writing and refuse NaN / Inf, naming the tensor. A GPTQ / AWQ checkpoint
    stays quantized (docs/quantization.md) unless `dequantize` asks for exact float weights."""
    max_bytes = _options(dtype, fmt, max_shard_size)
    if not os.path.isdir(src):
        raise ConvertError(f"{src}: not a directory (expected an HF model directory with config.json and weights)")
    check_destination(dst, overwrite, [src])
    if not os.path.isfile(os.path.join(src, HF_CONFIG)):
        raise ConvertError(f"{os.path.join(src, HF_CONFIG)}: file not found (an HF model directory needs it)")
    with _open_hf(src) as source:
        config, fam, quantized = _hf_source_config(src, source, family)
        opts = dict(dtype=dtype, fmt=fmt, max_bytes=max_bytes, overwrite=overwrite, progress=progress,
                    chunk_bytes=chunk_bytes)
        if quantized is not None:
            from ..quant import convert as quant_convert   # pylint: disable=import-outside-toplevel
            return quant_convert.hf_to_ms(src, dst, source, config, fam, quantized, opts, dequantize, check_finite)
        if dequantize:
            raise ConvertError(f"--dequantize: {src} is not a quantized checkpoint (no quantize_config.json, "
                               "quant_config.json or quantization_config in config.json)")
        spelling = fam.hf_layout.spelling(frozenset(source.infos))
        names = _table(config, spelling)
        view, buffers = hf_view(source, config, names)
        if check_finite:
            _check_finite(source, view, chunk_bytes, progress)
        meta = {"source": os.path.abspath(src), "source_kind": source.kind, "family": fam.name,
                "hf_spelling": spelling, "router_key": spelling.get("router_key") if config.is_moe else None,
                "hf_buffers": hf_extras.record_buffers(source, buffers, names),
                "hf_config": hf_extras.HF_CONFIG_COPY, "hf_config_describes": hf_extras.describes(config),
                "source_dtype": _uniform_dtype(view)}
        return _write_ms(source, ms_outputs(view, names), config, dst, opts, [src], meta, keep_config=src)


def _open_hf(src: str):
    """open_hf, or -- when the directory has none of the standard weight files -- the single
    `<model_file_base_name>.safetensors` its quantize_config.json names."""
    named = read_named_weights(src)
    if named and not any(os.path.isfile(os.path.join(src, n)) for n in (SAFE_INDEX, SAFE_SINGLE, BIN_INDEX,
                                                                          BIN_SINGLE)):
        return Source(read_header(named)[0], named, "hf-safetensors")
    return open_hf(src)


def _source_keys(tensor):
    """Source tensor names a Virtual reads (through Transposed blocks and Computed parts too)."""
    for part in tensor.segments:
        if isinstance(part, Transposed):
            yield from _source_keys(part.inner)
        elif isinstance(part, Computed):
            yield from part.keys
        else:
            yield part.key


def _check_finite(source, view, chunk_bytes: int, progress: bool) -> None:
    """One chunked read of every source tensor the output uses (before anything is written): a NaN / Inf
    weight is one error naming the tensor, never a converted model that prints empty answers."""
    keys = sorted({key for tensor in view.values() for key in _source_keys(tensor)
                   if source.infos[key].dtype in FLOAT_DTYPES})            # packed integers cannot be NaN
    total = sum(source.infos[k].numel * BY_NAME[source.infos[k].dtype].itemsize for k in keys)
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="check finite",
              disable=not progress) as bar:
        for key in keys:
            info = source.infos[key]
            step = max(1, chunk_bytes // BY_NAME[info.dtype].itemsize)
            for start in range(0, info.numel, step):
                stop = min(start + step, info.numel)
                integrity.check_finite(source.read(key, start, stop), info.dtype, key, source.description, start)
                bar.update((stop - start) * BY_NAME[info.dtype].itemsize)


def convert_mindformers_to_ms(src: str, dst: str, *, config: str | None = None, dtype: str | None = None,
                              fmt: str = "safetensors", max_shard_size="4GB", overwrite: bool = False,
                              progress: bool = False, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> ConvertReport:
    """A MindSpore checkpoint of the official TeleChat2 port (or a training checkpoint) -> our directory."""
    max_bytes = _options(dtype, fmt, max_shard_size)
    check_destination(dst, overwrite, [src])
    model_config = _ms_config(src, config)
    if model_config.family != "telechat2":
        raise ConvertError(f"mf2ms converts checkpoints of the official mindformers TeleChat2 port only; the config "
                           f"is family {model_config.family!r} (convert its HF checkpoint with hf2ms instead)")
    names = _table(model_config, None)
    with open_ms(src) as source:
        view, dropped = ms_view(source, model_config, names)
        meta = {"source": os.path.abspath(src), "source_kind": source.kind, "family": model_config.family,
                "router_key": None, "dropped": dropped}
        opts = dict(dtype=dtype, fmt=fmt, max_bytes=max_bytes, overwrite=overwrite, progress=progress,
                    chunk_bytes=chunk_bytes)
        side = [os.path.dirname(os.path.abspath(config)) if config else None, _src_dir(src)]
        return _write_ms(source, ms_outputs(view, names), model_config, dst, opts, side, meta)


def _src_dir(src: str) -> str:
    return src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))


def _ms_config(src: str, config: str | None, family: str | None = None) -> TelechatConfig:
    if config is not None:
        loaded = load_config(config, family)
    elif os.path.isdir(src) and os.path.isfile(os.path.join(src, MODEL_CONFIG)):
        loaded = load_config(os.path.join(src, MODEL_CONFIG))
    else:
        raise ConvertError(f"{src}: no {MODEL_CONFIG} beside the weights: pass --config (our {MODEL_CONFIG} or "
                           "the model's HF config.json)")
    if family is not None and loaded.family != family:
        raise ConvertError(f"--family {family!r} contradicts the config, which is family {loaded.family!r}")
    return loaded


def _read_meta(directory: str | None) -> dict:
    path = os.path.join(directory, META) if directory else ""
    if not path or not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ConvertError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None


def _meta_for(config, directories) -> tuple[dict, str | None]:
    """convert_meta.json of the first directory that has one, if it belongs to this config's family (old
    directories without a family are TeleChat2's)."""
    for directory in directories:
        meta = _read_meta(directory)
        if meta:
            return (meta, directory) if meta.get("family", "telechat2") == config.family else ({}, None)
    return {}, None


def _spelling(meta: dict, router_key: str | None) -> dict:
    spelling = dict(meta.get("hf_spelling") or {})
    if meta.get("router_key") and "router_key" not in spelling:      # directories written before families
        spelling["router_key"] = meta["router_key"]
    if router_key:
        spelling["router_key"] = router_key
    return spelling


def _original_config(config_arg, meta: dict, meta_dir, model_config) -> tuple[str | None, str | None, str]:
    """(the source config.json to write back, its weights' dtype, a note on the choice)."""
    if config_arg and config_arg.endswith(".json"):
        return config_arg, None, f"config.json: {config_arg} (as given)"
    kept = os.path.join(meta_dir, meta.get("hf_config") or "") if meta_dir and meta.get("hf_config") else ""
    if not kept or not os.path.isfile(kept):
        return None, None, "config.json: written from the model config (no source config.json kept)"
    if not hf_extras.still_describes(meta.get("hf_config_describes"), model_config):
        return None, None, (f"config.json: written from the model config ({kept} describes the model before its "
                            "config was changed)")
    return kept, meta.get("source_dtype"), f"config.json: the source's, kept in {kept}"


@dataclass
class HFWeights:
    """What ms2hf writes: the HF-named weights, the model config they describe and how config.json is made."""
    weights: list                        # (HF key, Virtual) in model order
    dropped: list                        # non-model entries of a training checkpoint
    config: TelechatConfig               # the model the HF directory holds (a dequantized one: float)
    float_weights: list = None           # the tensors whose dtype is the model's (default: all weights)
    side_files: tuple = ()               # files copied beside the weights besides SIDE_FILES
    write_config: object = None          # (path, original, stored config, out dtype, source dtype) -> None
    default_dtype: str | None = None     # output dtype when --dtype is not given (None: each tensor's own)


def write_hf_config(path: str, original: str | None, stored: TelechatConfig, out_dtype, source_dtype) -> None:
    """The source's config.json (byte for byte, dtype keys updated) or one written from the model config."""
    if original:
        hf_extras.write_original_config(original, path, out_dtype, source_dtype)
    else:
        write_json(path, stored.to_hf_config())


def _float_weights(ms_source, model_config, names) -> HFWeights:
    view, dropped = ms_view(ms_source, model_config, names)
    return HFWeights(hf_outputs(view, model_config, names), dropped, model_config)


def convert_ms_to_hf(src: str, dst: str, *, config: str | None = None, family: str | None = None,
                     dtype: str | None = None, max_shard_size="4GB", overwrite: bool = False,
                     router_key: str | None = None, progress: bool = False,
                     chunk_bytes: int = DEFAULT_CHUNK_BYTES, dequantize: bool = False) -> ConvertReport:
    """Our directory, a training checkpoint or a merged distributed checkpoint -> an HF directory in the
    family's own layout, key spelling, buffers and (when kept and still accurate) original config.json.
    A quantized directory is written back in its source format (GPTQ / AWQ), or as exact float weights
    with `dequantize`."""
    max_bytes = _options(dtype, "safetensors", max_shard_size)
    if router_key not in (None, "router", "gate"):
        raise ConvertError(f"router_key must be 'router' or 'gate', got {router_key!r}")
    check_destination(dst, overwrite, [src])
    model_config = _ms_config(src, config, family)
    if dequantize and model_config.quantization is None:
        raise ConvertError(f"--dequantize: the model config of {src} has no quantization (nothing to dequantize)")
    config_dir = os.path.dirname(os.path.abspath(config)) if config else None
    meta, meta_dir = _meta_for(model_config, [_src_dir(src), config_dir])
    names = _table(model_config, _spelling(meta, router_key))
    original, source_dtype, note = _original_config(config, meta, meta_dir, model_config)
    start = time.perf_counter()
    with open_ms(src) as ms_source:
        if model_config.quantization is not None:
            from ..quant import convert as quant_convert   # pylint: disable=import-outside-toplevel
            part = quant_convert.ms_to_hf(ms_source, model_config, names, meta, dequantize)
        else:
            part = _float_weights(ms_source, model_config, names)
        dtype = dtype or part.default_dtype
        constants, buffer_keys = hf_extras.buffer_constants(meta.get("hf_buffers") or [], names,
                                                            os.path.join(meta_dir or "", META))
        source = WithConstants(ms_source, constants)
        float_weights = part.weights if part.float_weights is None else part.float_weights
        items = part.weights + [(key, Virtual.whole(constants.infos[k])) for key, k in buffer_keys.items()]
        with staged_output(dst, overwrite) as out, _bar(items, dtype, progress, "ms2hf") as bar:
            written = write_safetensors(out, items, source, dtype, max_bytes, {"format": "pt"}, chunk_bytes, bar)
            stored = _with_param_dtype(part.config, float_weights, dtype)
            out_dtype = stored.param_dtype if len(set(output_dtypes(float_weights, dtype))) == 1 else None
            (part.write_config or write_hf_config)(os.path.join(out, HF_CONFIG), original, stored, out_dtype,
                                                  source_dtype)
            side = [_src_dir(src), config_dir]
            copied = copy_side_files(side, out, SIDE_FILES + tuple(part.side_files))
    return ConvertReport(dst, len(items), written.total_size, written.files + [HF_CONFIG] + copied,
                         time.perf_counter() - start, part.dropped, copied, [note])
