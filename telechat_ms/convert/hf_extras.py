"""What an HF checkpoint carries besides its weights, kept so ms2hf writes it back exactly:

* buffers (per-layer non-weight tensors: GPT-2 `attn.masked_bias` / `attn.bias`, old Llama `rotary_emb.inv_freq`):
  hf2ms drops them and records each template's dtype, shape, layers and content in convert_meta.json (raw
  bytes when small, "causal" for a lower-triangular 0/1 mask); ms2hf re-creates them from the record;
* the source's own config.json, stored verbatim as hf_config.json in the converted directory; ms2hf writes it
  back as config.json when it still describes the model (else the family's config_to_hf is used).
"""
from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np

from ..io.dtypes import BY_NAME
from ..io.errors import ConvertError
from .memory import ArraySource

HF_CONFIG_COPY = "hf_config.json"
_SMALL = 4096                      # bytes of a buffer kept verbatim (hex) in convert_meta.json
_DTYPE_FIELDS = ("param_dtype", "compute_dtype")


def record_buffers(source, buffers: dict, table) -> list[dict]:
    """One record per buffer template present in the source; all layers must hold the same content."""
    by_template: dict[str, list[tuple[int, str]]] = {}
    where = table.buffer_keys()
    for key in buffers:
        template, layer = where[key]
        by_template.setdefault(template, []).append((layer, key))
    records = []
    for template, found in by_template.items():
        found.sort()
        first = buffers[found[0][1]]
        if first.dtype not in BY_NAME:
            raise ConvertError(f"'{first.key}' in {first.path}: buffer dtype {first.dtype} is not supported")
        content = None
        for _, key in found:
            info = buffers[key]
            data = source.read(key, 0, info.numel)
            if info.dtype != first.dtype or info.shape != first.shape or \
                    (content is not None and not np.array_equal(data, content)):
                raise ConvertError(f"'{key}' in {info.path}: buffer differs from '{first.key}' (dtype, shape or "
                                   "values); only buffers identical in every layer can be re-created")
            content = data
        records.append({"template": template, "layers": [layer for layer, _ in found], "dtype": first.dtype,
                        "shape": list(first.shape), **_encode(content, first)})
    return records


def _encode(data: np.ndarray, info) -> dict:
    if data.nbytes <= _SMALL:
        return {"hex": np.ascontiguousarray(data).tobytes().hex()}
    if len(info.shape) >= 2 and info.shape[-1] == info.shape[-2] and not BY_NAME[info.dtype].is_float and \
            math.prod(info.shape[:-2]) == 1 and np.array_equal(data.reshape(info.shape[-2:]) != 0,
                                                               np.tri(info.shape[-1], dtype=bool)):
        return {"fill": "causal"}
    raise ConvertError(f"'{info.key}' in {info.path}: buffer {info.dtype}{list(info.shape)} is neither small "
                       "nor a causal 0/1 mask: cannot be recorded for re-creation")


def buffer_constants(records: list[dict], table, source: str) -> tuple[ArraySource, dict[str, str]]:
    """The recorded buffers as in-memory tensors under internal keys, and {HF key: internal key}."""
    arrays, dtypes, names = {}, {}, {}
    for record in records:
        try:
            value = _decode(record)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConvertError(f"{source}: invalid hf_buffers record {record!r} ({type(exc).__name__}: {exc})") \
                from None
        internal = "\0buffer:" + record["template"]
        arrays[internal], dtypes[internal] = value, record["dtype"]
        for layer in record["layers"]:
            if layer >= table.num_layers:
                raise ConvertError(f"{source}: buffer {record['template']} recorded for layer {layer}, "
                                   f"but the model has {table.num_layers} layers")
            names[record["template"].format(i=layer)] = internal
    return ArraySource(arrays, "<buffers recorded in convert_meta.json>", dtypes), names


def _decode(record: dict) -> np.ndarray:
    storage, shape = BY_NAME[record["dtype"]].storage, tuple(record["shape"])
    if "hex" in record:
        return np.frombuffer(bytes.fromhex(record["hex"]), dtype=storage).reshape(shape)
    if record.get("fill") != "causal":
        raise ValueError("expected 'hex' or fill 'causal'")
    return np.tri(shape[-1], dtype=storage).reshape(shape)                     # (n, n) -> (1, .., n, n)


def describes(config) -> dict:
    """The config fields an HF config.json determines (not the dtypes a conversion may change)."""
    out = config.to_dict()
    for name in _DTYPE_FIELDS:
        out.pop(name, None)
    return out


def still_describes(recorded, config) -> bool:
    """True if `config` is the model `recorded` (describes() at conversion time) described. Fields added to
    TelechatConfig since then count as unchanged while they hold their default."""
    if not isinstance(recorded, dict):
        return False
    current = describes(config)
    defaults = describes(type(config)(family=config.family))
    return all(current.get(k, object()) == v for k, v in recorded.items()) and \
        all(current[k] == defaults.get(k) for k in current if k not in recorded)


def keep_hf_config(src_dir: str, out_dir: str) -> str:
    shutil.copy2(os.path.join(src_dir, "config.json"), os.path.join(out_dir, HF_CONFIG_COPY))
    return HF_CONFIG_COPY


def write_original_config(path: str, out_path: str, out_dtype: str | None, source_dtype: str | None) -> None:
    """The source's config.json byte for byte; when the weights' dtype changed, with `torch_dtype` (and
    transformers 5's `dtype`) updated -- the only keys a dtype change touches."""
    if out_dtype is None or out_dtype == source_dtype:
        shutil.copyfile(path, out_path)
        return
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not any(data.get(k) not in (None, out_dtype) for k in ("torch_dtype", "dtype")):
        shutil.copyfile(path, out_path)
        return
    for key in ("torch_dtype", "dtype"):
        if data.get(key) is not None:
            data[key] = out_dtype
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
