"""Tensor dtypes as stored on disk, and exact casts between them in numpy.

numpy has no bfloat16, and the package must not need torch or ml_dtypes: bfloat16 tensors are carried as their
raw uint16 bit patterns and converted with bit arithmetic. float32 -> bfloat16 rounds to nearest-even like
torch's `.to(torch.bfloat16)`, so our bf16 outputs are bit-identical to a torch cast of the same data.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import ConvertError


@dataclass(frozen=True)
class DType:
    name: str            # our name (config / CLI)
    safetensors: str     # safetensors header code
    ckpt: str            # MindSpore .ckpt TensorProto.tensor_type
    storage: type        # numpy dtype holding the raw bytes (uint16 for bfloat16)

    @property
    def itemsize(self) -> int:
        return np.dtype(self.storage).itemsize

    @property
    def is_float(self) -> bool:
        return self.name in FLOAT_DTYPES


_ALL = [
    DType("float64", "F64", "Float64", np.float64), DType("float32", "F32", "Float32", np.float32),
    DType("float16", "F16", "Float16", np.float16), DType("bfloat16", "BF16", "BFloat16", np.uint16),
    DType("int64", "I64", "Int64", np.int64), DType("int32", "I32", "Int32", np.int32),
    DType("int16", "I16", "Int16", np.int16), DType("int8", "I8", "Int8", np.int8),
    DType("uint64", "U64", "UInt64", np.uint64), DType("uint32", "U32", "UInt32", np.uint32),
    DType("uint16", "U16", "UInt16", np.uint16), DType("uint8", "U8", "UInt8", np.uint8),
    DType("bool", "BOOL", "Bool", np.bool_),
]
BY_NAME = {d.name: d for d in _ALL}
BY_SAFETENSORS = {d.safetensors: d for d in _ALL}
BY_CKPT = {d.ckpt: d for d in _ALL}
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
OUTPUT_DTYPES = ("float32", "float16", "bfloat16")


def dtype(name: str) -> DType:
    if name not in BY_NAME:
        raise ConvertError(f"unknown dtype {name!r} (known: {', '.join(BY_NAME)})")
    return BY_NAME[name]


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)          # exact: bf16 is the top half of f32


def _f32_to_bf16(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    # round to nearest, ties to even: add 0x7FFF + (bit 16), keep the top half; in place to bound temporaries
    out = bits >> 16
    out &= 1
    out += 0x7FFF
    out += bits
    out >>= 16
    out = out.astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():                                                    # keep NaN a (quiet) NaN with its sign
        out[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)
    return out


def cast(data: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Cast raw storage `data` of dtype `src` to storage of `dst` (both float dtype names)."""
    if src == dst:
        return data
    if src == "bfloat16":
        data, src = _bf16_to_f32(data), "float32"
        if dst == "float32":
            return data
    if dst == "bfloat16":
        # via float32: exact from float16/float32 (float64 inputs round twice; none seen in TeleChat2 checkpoints)
        return _f32_to_bf16(data.astype(np.float32, copy=False))
    return data.astype(BY_NAME[dst].storage)


def parse_size(text: str | int) -> int:
    """'4GB' -> 4*10**9, '500MiB' -> 500*2**20, plain integers are bytes (the transformers convention)."""
    if isinstance(text, int):
        size = text
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(text), re.IGNORECASE)
        if not match:
            raise ConvertError(f"invalid size {text!r}: expected e.g. 4GB, 500MB, 2GiB or a byte count")
        unit = (match.group(2) or "B").upper()
        scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
                 "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
        size = int(float(match.group(1)) * scale)
    if size <= 0:
        raise ConvertError(f"size must be positive, got {text!r}")
    return size
