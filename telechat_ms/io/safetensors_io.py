"""The safetensors format, read and written without the safetensors package's whole-file APIs.

Format: 8-byte little-endian header length N, a JSON header of N bytes ({key: {dtype, shape, data_offsets}},
optional "__metadata__"), then the tensor bytes. Reading the header alone is enough to validate keys, shapes,
dtypes and that the file is not truncated; writing the header first (all shapes are known after validation)
lets tensors be streamed into the file chunk by chunk, so a shard is never assembled in memory.
"""
from __future__ import annotations

import json
import math
import os

from .dtypes import BY_NAME, BY_SAFETENSORS
from .errors import ConvertError
from .tensorfile import TensorInfo

_MAX_HEADER = 100 * 2**20          # same bound as the safetensors package


def read_header(path: str) -> tuple[dict[str, TensorInfo], dict]:
    """{key: TensorInfo} and the metadata of a safetensors file; ConvertError if corrupt or truncated."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if length < 2 or length > min(_MAX_HEADER, size - 8):
                raise ConvertError(f"{path}: not a valid safetensors file (header length {length}, file size "
                                   f"{size} bytes): corrupt or truncated")
            header = json.loads(fh.read(length))
    except FileNotFoundError:
        raise ConvertError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConvertError(f"{path}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise ConvertError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + length
    return {key: _info(path, key, entry, base, size) for key, entry in header.items()}, metadata


def _info(path: str, key: str, entry, base: int, size: int) -> TensorInfo:
    try:
        code, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise ConvertError(f"{path}: corrupt safetensors header entry for '{key}': {entry!r}") from None
    dtype = BY_SAFETENSORS[code].name if code in BY_SAFETENSORS else code
    info = TensorInfo(key, dtype, shape, path, ((base + begin, end - begin),))
    if base + end > size:
        raise ConvertError(f"{path}: truncated: tensor '{key}' ends at byte {base + end} but the file has "
                           f"{size} bytes")
    if end < begin or (info.itemsize and end - begin != info.nbytes):
        raise ConvertError(f"{path}: corrupt header: tensor '{key}' {code}{list(shape)} needs {info.nbytes} "
                           f"bytes, offsets give {end - begin}")
    return info


def build_header(entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str]) -> bytes:
    """Header bytes (length prefix included) for tensors written back to back in `entries` order."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for key, dtype, shape in entries:
        nbytes = math.prod(shape) * BY_NAME[dtype].itemsize
        header[key] = {"dtype": BY_NAME[dtype].safetensors, "shape": list(shape),
                       "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)              # pad like the safetensors package: data starts 8-aligned
    return len(text).to_bytes(8, "little") + text
