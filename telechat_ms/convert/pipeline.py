"""The three conversions, as library functions the CLIs wrap.

Each one: check the destination, load the config, open the source lazily, validate everything (keys, shapes,
dtypes, file integrity from headers), and only then stream the tensors into a staged output directory.
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
from ..io.dtypes import BY_NAME, OUTPUT_DTYPES, parse_size
from ..io.errors import ConvertError
from ..io.checkpoint import HF_CONFIG, META, MODEL_CONFIG
from ..io.output import check_destination, copy_side_files, staged_output, write_json
from ..io.sources import open_hf, open_ms
from .views import hf_outputs, hf_view, ms_outputs, ms_view
from ..io.writer import DEFAULT_CHUNK_BYTES, output_dtypes, write_ckpt, write_safetensors

FORMATS = ("safetensors", "ckpt")


@dataclass
class ConvertReport:
    dst: str
    tensors: int
    bytes: int
    files: list[str]
    seconds: float
    dropped: list[str] = field(default_factory=list)     # non-model entries of a training checkpoint
    copied: list[str] = field(default_factory=list)      # tokenizer / generation files

    def summary(self) -> str:
        rate = self.bytes / 2**20 / self.seconds if self.seconds > 0 else float("inf")
        return (f"wrote {self.tensors} tensors, {self.bytes / 2**30:.2f} GiB in {len(self.files)} files to "
                f"{self.dst} in {self.seconds:.1f} s ({rate:.0f} MiB/s)")


def load_config(path: str) -> TelechatConfig:
    """Our model_config.yaml or an HF config.json (a file, or a directory holding one)."""
    try:
        if os.path.isdir(path):
            if os.path.isfile(os.path.join(path, MODEL_CONFIG)):
                return TelechatConfig.from_yaml(os.path.join(path, MODEL_CONFIG))
            return TelechatConfig.from_hf_config(os.path.join(path, HF_CONFIG))
        if path.endswith(".json"):
            return TelechatConfig.from_hf_config(path)
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


def _write_ms(source, items, config, dst, opts: dict, side_dirs, meta: dict) -> ConvertReport:
    start, dtype = time.perf_counter(), opts["dtype"]
    with staged_output(dst, opts["overwrite"]) as out, _bar(items, dtype, opts["progress"], "convert") as bar:
        if opts["fmt"] == "ckpt":
            written = write_ckpt(out, items, source, dtype, opts["chunk_bytes"], bar)
        else:
            written = write_safetensors(out, items, source, dtype, opts["max_bytes"], {"format": "ms"},
                                        opts["chunk_bytes"], bar)
        _with_param_dtype(config, items, dtype).to_yaml(os.path.join(out, MODEL_CONFIG))
        copied = copy_side_files(side_dirs, out)
        write_json(os.path.join(out, META), {**meta, "format": opts["fmt"], "dtype": dtype})
    return ConvertReport(dst, len(items), written.total_size, written.files + [MODEL_CONFIG, META] + copied,
                         time.perf_counter() - start, meta.get("dropped", []), copied)


def convert_hf_to_ms(src: str, dst: str, *, dtype: str | None = None, fmt: str = "safetensors",
                     max_shard_size="4GB", overwrite: bool = False, progress: bool = False,
                     chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> ConvertReport:
    """HF TeleChat2 directory -> our MindSpore directory (sharded safetensors + index, or one .ckpt)."""
    max_bytes = _options(dtype, fmt, max_shard_size)
    if not os.path.isdir(src):
        raise ConvertError(f"{src}: not a directory (expected an HF model directory with config.json and weights)")
    check_destination(dst, overwrite, [src])
    config = load_config(os.path.join(src, HF_CONFIG))
    with open_hf(src) as source:
        view, router = hf_view(source, config)
        meta = {"source": os.path.abspath(src), "source_kind": source.kind, "router_key": router}
        opts = dict(dtype=dtype, fmt=fmt, max_bytes=max_bytes, overwrite=overwrite, progress=progress,
                    chunk_bytes=chunk_bytes)
        return _write_ms(source, ms_outputs(view, config), config, dst, opts, [src], meta)


def convert_mindformers_to_ms(src: str, dst: str, *, config: str | None = None, dtype: str | None = None,
                              fmt: str = "safetensors", max_shard_size="4GB", overwrite: bool = False,
                              progress: bool = False, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> ConvertReport:
    """A MindSpore checkpoint of the official port (or a training checkpoint) -> our MindSpore directory."""
    max_bytes = _options(dtype, fmt, max_shard_size)
    check_destination(dst, overwrite, [src])
    model_config = _ms_config(src, config)
    with open_ms(src) as source:
        view, dropped = ms_view(source, model_config)
        meta = {"source": os.path.abspath(src), "source_kind": source.kind, "router_key": None,
                "dropped": dropped}
        opts = dict(dtype=dtype, fmt=fmt, max_bytes=max_bytes, overwrite=overwrite, progress=progress,
                    chunk_bytes=chunk_bytes)
        side = [os.path.dirname(os.path.abspath(config)) if config else None, _src_dir(src)]
        return _write_ms(source, ms_outputs(view, model_config), model_config, dst, opts, side, meta)


def _src_dir(src: str) -> str:
    return src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))


def _ms_config(src: str, config: str | None) -> TelechatConfig:
    if config is not None:
        return load_config(config)
    if os.path.isdir(src) and os.path.isfile(os.path.join(src, MODEL_CONFIG)):
        return load_config(os.path.join(src, MODEL_CONFIG))
    raise ConvertError(f"{src}: no {MODEL_CONFIG} beside the weights: pass --config (our {MODEL_CONFIG} or the "
                       "model's HF config.json)")


def _read_meta(src: str) -> dict:
    path = os.path.join(src, META)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ConvertError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None


def convert_ms_to_hf(src: str, dst: str, *, config: str | None = None, dtype: str | None = None,
                     max_shard_size="4GB", overwrite: bool = False, router_key: str | None = None,
                     progress: bool = False, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> ConvertReport:
    """Our directory, a training checkpoint or a merged distributed checkpoint -> an HF TeleChat2 directory."""
    max_bytes = _options(dtype, "safetensors", max_shard_size)
    if router_key not in (None, "router", "gate"):
        raise ConvertError(f"router_key must be 'router' or 'gate', got {router_key!r}")
    check_destination(dst, overwrite, [src])
    model_config = _ms_config(src, config)
    router = router_key or _read_meta(_src_dir(src)).get("router_key") or "router"
    start = time.perf_counter()
    with open_ms(src) as source:
        view, dropped = ms_view(source, model_config)
        items = hf_outputs(view, model_config, router)
        with staged_output(dst, overwrite) as out, _bar(items, dtype, progress, "ms2hf") as bar:
            written = write_safetensors(out, items, source, dtype, max_bytes, {"format": "pt"}, chunk_bytes, bar)
            write_json(os.path.join(out, HF_CONFIG), _with_param_dtype(model_config, items, dtype).to_hf_config())
            side = [_src_dir(src), os.path.dirname(os.path.abspath(config)) if config else None]
            copied = copy_side_files(side, out)
    return ConvertReport(dst, len(items), written.total_size, written.files + [HF_CONFIG] + copied,
                         time.perf_counter() - start, dropped, copied)
