"""What a weight-only-quantized model is (`QuantizationConfig`, a TelechatConfig field) and what a quantized
HF checkpoint says about itself (`SourceFormat`, read from quantize_config.json / quant_config.json /
config.json `quantization_config`). Facts: spec families.md §5 (GPTQ layout, zero-point conventions); AWQ GEMM
packing from AutoAWQ / GPTQModel (docs/quantization.md). No MindSpore, no numpy here.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields

from ..config.base import ConfigError, check_type, strict_from_dict

METHODS = ("gptq", "awq")
KEPT_BITS = (4, 8)                      # the quantized layer holds int4 (two per byte) or int8
SCALE_DTYPES = ("float16", "bfloat16", "float32")


@dataclass
class QuantizationConfig:
    """How the decoder's linear layers are stored (docs/quantization.md). The in-model layout is one for every
    source format: signed int4 / int8 weights (in, out), per-group scale and offset, optional input permutation."""

    method: str = "gptq"            # where the weights came from (gptq | awq); informational for the model
    bits: int = 4                   # 4 | 8
    group_size: int = 128           # input features per scale group; -1 = one group (per output channel)
    act_order: bool = False         # GPTQ desc_act: weight rows follow the permutation `perm` of the inputs
    split_kv: bool = False          # key and value projections quantized separately (Llama-named layouts)
    scale_dtype: str = "float16"    # dtype of the scales and offsets as stored (kept exactly)

    def __post_init__(self):
        check_type("method", self.method, str)
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        check_type("bits", self.bits, int)
        if self.bits not in KEPT_BITS:
            raise ConfigError(f"bits must be 4 or 8 (int4 / int8 weights), got {self.bits}")
        check_type("group_size", self.group_size, int)
        if self.group_size != -1 and self.group_size <= 0:
            raise ConfigError(f"group_size must be -1 or a positive integer, got {self.group_size}")
        for name in ("act_order", "split_kv"):
            check_type(name, getattr(self, name), bool)
        if self.scale_dtype not in SCALE_DTYPES:
            raise ConfigError(f"scale_dtype must be one of {', '.join(SCALE_DTYPES)}, "
                              f"got {self.scale_dtype!r}")

    @classmethod
    def from_value(cls, value, source: str = "quantization") -> "QuantizationConfig | None":
        """None, a QuantizationConfig or a mapping (yaml) -> QuantizationConfig | None; unknown keys fail."""
        if value is None or isinstance(value, cls):
            return value
        return strict_from_dict(cls, value, source)

    def groups(self, in_features: int) -> tuple[int, int]:
        """(group size, number of groups) of a layer with `in_features` inputs."""
        size = in_features if self.group_size == -1 else self.group_size
        return size, -(-in_features // size)

    def packed_columns(self, out_features: int) -> int:
        """Columns of the int8 weight: two int4 values per byte along the output axis."""
        return out_features // 2 if self.bits == 4 else out_features


# ---------------------------------------------------------------- the source checkpoint's format

GPTQ_FILE, AWQ_FILE = "quantize_config.json", "quant_config.json"
QUANT_FILES = (GPTQ_FILE, AWQ_FILE)
FORMATS = ("gptq", "gptq_v2", "awq")

# keys a quantization config carries that do not change the stored math (calibration and runtime settings)
_BOOKKEEPING = frozenset((
    "quant_method", "damp_percent", "damp_auto_increment", "true_sequential", "model_name_or_path",
    "model_file_base_name", "static_groups", "dataset", "tokenizer", "use_cuda_fp16", "model_seqlen",
    "block_name_to_quantize", "module_name_preceding_first_block", "batch_size", "pad_token_id", "use_exllama",
    "max_input_length", "exllama_config", "cache_block_outputs", "meta", "mse", "v2", "v2_alpha",
    "act_group_aware", "backend", "do_fuse", "fuse_max_seq_len", "quantizer", "hyb_act", "bits", "w_bit",
    "group_size", "q_group_size", "desc_act", "sym", "checkpoint_format", "format", "is_marlin_format",
    "lm_head", "dynamic", "pack_dtype", "zero_point", "version", "modules_to_not_convert",
    "modules_in_block_to_quantize"))


@dataclass(frozen=True)
class SourceFormat:
    """A quantized HF checkpoint: how its tensors are packed and what its zero points mean."""
    method: str                  # gptq | awq
    checkpoint_format: str       # gptq (AutoGPTQ, stores zero-1) | gptq_v2 (zero as is) | awq (GEMM order)
    bits: int
    group_size: int              # -1 = per channel
    desc_act: bool
    sym: bool
    files: tuple[str, ...] = ()  # the quantization config files found beside config.json (copied back by ms2hf)

    @property
    def pack(self) -> int:
        return 32 // self.bits

    def to_record(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_record(cls, record: dict, where: str) -> "SourceFormat":
        try:
            return cls(**{**record, "files": tuple(record.get("files", ()))})
        except TypeError as exc:
            raise ConfigError(f"{where}: invalid quantization_source record ({exc})") from None


def _int(data: dict, names: tuple[str, ...], where: str, default=None):
    for name in names:
        if name in data:
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where}: {name} must be an integer, got {value!r}")
            return value
    if default is None:
        raise ConfigError(f"{where}: {' / '.join(names)} is missing")
    return default


def _bool(data: dict, name: str, where: str, default: bool) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {name} must be true or false, got {value!r}")
    return value


def _refuse_unimplemented(data: dict, where: str) -> None:
    """Fields that change which tensors are quantized or how they are packed, beyond what we implement."""
    bad = []
    if data.get("is_marlin_format"):
        bad.append("is_marlin_format true (Marlin-repacked weights)")
    if data.get("lm_head"):
        bad.append("lm_head true (a quantized lm_head)")
    if data.get("dynamic"):
        bad.append("dynamic (per-module overrides)")
    if data.get("modules_to_not_convert"):
        bad.append(f"modules_to_not_convert {data['modules_to_not_convert']!r} (partially quantized layers)")
    if data.get("modules_in_block_to_quantize"):
        bad.append("modules_in_block_to_quantize (partially quantized layers)")
    if data.get("pack_dtype", "int32") not in ("int32", "torch.int32"):
        bad.append(f"pack_dtype {data['pack_dtype']!r} (only int32 packing)")
    unknown = sorted(k for k in data if k not in _BOOKKEEPING)
    if unknown:
        bad.append(f"unknown keys {', '.join(unknown)}")
    if bad:
        raise ConfigError(f"{where}: not supported: {'; '.join(bad)}")


def _normalize(data, where: str, default_method: str) -> SourceFormat:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    _refuse_unimplemented(data, where)
    method = str(data.get("quant_method", default_method)).lower()
    if method == "gptq":
        fmt = data.get("checkpoint_format") or data.get("format") or "gptq"
        if fmt not in ("gptq", "gptq_v2"):
            raise ConfigError(f"{where}: checkpoint_format {fmt!r} is not supported (gptq or gptq_v2)")
        bits = _int(data, ("bits",), where)
        if bits not in (2, 4, 8):
            raise ConfigError(f"{where}: bits {bits} is not supported (GPTQ 2, 4 or 8; 3-bit packing is not)")
        return SourceFormat("gptq", fmt, bits, _group_size(data, ("group_size",), where),
                            _bool(data, "desc_act", where, False), _bool(data, "sym", where, True))
    if method == "awq":
        version = str(data.get("version", "gemm")).lower()
        if version != "gemm":
            raise ConfigError(f"{where}: version {data.get('version')!r} is not supported (AWQ GEMM packing only)")
        if not _bool(data, "zero_point", where, True):
            raise ConfigError(f"{where}: zero_point false is not supported (AWQ GEMM stores zero points)")
        bits = _int(data, ("bits", "w_bit"), where)
        if bits != 4:
            raise ConfigError(f"{where}: bits {bits} is not supported (AWQ GEMM packs 4-bit weights)")
        return SourceFormat("awq", "awq", 4, _group_size(data, ("group_size", "q_group_size"), where), False, False)
    raise ConfigError(f"{where}: quant_method {data.get('quant_method')!r} is not supported (gptq or awq)")


def _group_size(data: dict, names, where: str) -> int:
    size = _int(data, names, where)
    if size != -1 and size <= 0:
        raise ConfigError(f"{where}: {names[0]} must be -1 or a positive integer, got {size}")
    return size


def _load(path: str):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None


def read_source_format(src_dir: str, config_data: dict, config_path: str) -> SourceFormat | None:
    """The checkpoint's quantization (None for a float checkpoint). Every description present -- the
    quantization config files and config.json's `quantization_config` -- must agree."""
    found = []
    for name, default in ((GPTQ_FILE, "gptq"), (AWQ_FILE, "awq")):
        path = os.path.join(src_dir, name)
        if os.path.isfile(path):
            found.append((path, _normalize(_load(path), path, default)))
    inline = config_data.get("quantization_config")
    if inline is not None:
        found.append((f"{config_path}: quantization_config", _normalize(inline, f"{config_path}: "
                                                                       "quantization_config", "gptq")))
    if not found:
        return None
    first_where, first = found[0]
    for where, other in found[1:]:
        diff = [f.name for f in fields(SourceFormat) if f.name != "files" and getattr(first, f.name) !=
                getattr(other, f.name)]
        if diff:
            raise ConfigError(f"{first_where} and {where} disagree on {', '.join(diff)} "
                              f"({', '.join(f'{d}: {getattr(first, d)!r} vs {getattr(other, d)!r}' for d in diff)})")
    files = tuple(os.path.basename(w) for w, _ in found if os.path.basename(w) in QUANT_FILES)
    return SourceFormat(**{**{f.name: getattr(first, f.name) for f in fields(SourceFormat)}, "files": files})


def named_weights_file(src_dir: str) -> str | None:
    """The `<model_file_base_name>.safetensors` an AutoGPTQ quantize_config.json names (older AutoGPTQ /
    TheBloke files are e.g. gptq_model-4bit-128g.safetensors, not model.safetensors), if it exists."""
    path = os.path.join(src_dir, GPTQ_FILE)
    if not os.path.isfile(path):
        return None
    data = _load(path)
    base = data.get("model_file_base_name") if isinstance(data, dict) else None
    if not isinstance(base, str) or not base:
        return None
    weights = os.path.join(src_dir, base + ".safetensors")
    return weights if os.path.isfile(weights) else None
