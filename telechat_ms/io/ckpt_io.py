"""MindSpore .ckpt files, scanned and written as a protobuf stream without loading tensor data.

A .ckpt is a concatenation of serialized `Checkpoint` messages (mindspore/train/checkpoint.proto):
  Checkpoint { repeated Value value = 1 }   Value { string tag = 1; TensorProto tensor = 2; MapTensorProto = 3 }
  TensorProto { repeated int64 dims = 1; string tensor_type = 2; bytes tensor_content = 3 }
MindSpore splits big tensors into several consecutive Values with the same tag and joins them on load, and may
append b"crc_num" + 10 bytes. Scanning only the small protobuf headers gives every tensor's byte extents, so a
230 GB checkpoint is indexed without reading it, and writing Value by Value streams a .ckpt chunk by chunk.
"""
from __future__ import annotations

import mmap
import os

from .dtypes import BY_CKPT, BY_NAME
from .errors import ConvertError
from .tensorfile import TensorInfo

_CRC_TRAILER = 17                  # b"crc_num" + 10-byte big-endian crc


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise ValueError("varint runs past the end of its message")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _fields(buf, pos: int, end: int):
    """Yield (field number, wire type, value or (start, stop) for length-delimited) in buf[pos:end]."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield field, wire, value
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise ValueError(f"field {field} of {length} bytes runs past the end of its message")
            yield field, wire, (pos, pos + length)
            pos += length
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")


def _parse_tensor(buf, start: int, end: int):
    dims, ttype, content = [], "", (start, start)
    for field, wire, value in _fields(buf, start, end):
        if field == 1 and wire == 0:
            dims.append(value)
        elif field == 1:                                   # packed dims
            pos, stop = value
            while pos < stop:
                dim, pos = _varint(buf, pos, stop)
                dims.append(dim)
        elif field == 2:
            ttype = bytes(buf[value[0]:value[1]]).decode()
        elif field == 3:
            content = value
    return dims, ttype, content


def _parse_value(buf, start: int, end: int):
    tag, tensor = None, None
    for field, _, value in _fields(buf, start, end):
        if field == 1:
            tag = bytes(buf[value[0]:value[1]]).decode()
        elif field == 2:
            tensor = _parse_tensor(buf, *value)
        elif field == 3:
            raise ValueError(f"map parameter '{tag}' (MapTensor) is not supported")
    if tag is None or tensor is None:
        raise ValueError("a Value without tag or tensor")
    return tag, tensor


def scan_ckpt(path: str) -> dict[str, TensorInfo]:
    """{key: TensorInfo} of a .ckpt from its protobuf headers; ConvertError if it is corrupt or truncated."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise ConvertError(f"{path}: file not found") from None
    if size == 0:
        raise ConvertError(f"{path}: empty .ckpt file")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        end = size
        if size >= _CRC_TRAILER and buf[size - _CRC_TRAILER:size - _CRC_TRAILER + 7] == b"crc_num":
            end = size - _CRC_TRAILER
        pieces: list[tuple[str, list, str, tuple[int, int]]] = []
        try:
            for field, wire, value in _fields(buf, 0, end):
                if field != 1 or wire != 2:
                    raise ValueError(f"unexpected top-level field {field}")
                pieces.append(_parse_value(buf, *value))          # (tag, (dims, type, content))
        except ValueError as exc:
            raise ConvertError(f"{path}: corrupt or truncated .ckpt ({exc})") from None
    return _merge_pieces(path, pieces)


def _merge_pieces(path: str, pieces) -> dict[str, TensorInfo]:
    """Consecutive Values with one tag are one tensor split in slices (MindSpore joins them the same way)."""
    infos: dict[str, TensorInfo] = {}
    prev = None
    for tag, (dims, ttype, (start, stop)) in pieces:
        if tag == prev:
            old = infos[tag]
            infos[tag] = TensorInfo(tag, old.dtype, old.shape, path, old.extents + ((start, stop - start),))
            continue
        if tag in infos:
            raise ConvertError(f"{path}: tensor '{tag}' appears twice (corrupt .ckpt)")
        shape = () if dims == [0] else tuple(dims)
        dtype = BY_CKPT[ttype].name if ttype in BY_CKPT else ttype
        infos[tag] = TensorInfo(tag, dtype, shape, path, ((start, stop - start),))
        prev = tag
    for info in infos.values():
        stored = sum(n for _, n in info.extents)
        if info.itemsize and stored != info.nbytes:
            raise ConvertError(f"{path}: corrupt .ckpt: tensor '{info.key}' {info.dtype}{list(info.shape)} "
                               f"needs {info.nbytes} bytes, found {stored}")
    return infos


def value_header(tag: str, shape: tuple[int, ...], dtype: str, content_len: int) -> bytes:
    """Bytes of one top-level `Checkpoint.value` entry up to its tensor_content; the content follows."""
    name = tag.encode()
    packed = b"".join(_encode_varint(d) for d in shape)
    ttype = BY_NAME[dtype].ckpt.encode()
    tensor = (b"\x0a" + _encode_varint(len(packed)) + packed if packed else b"") \
        + b"\x12" + _encode_varint(len(ttype)) + ttype + b"\x1a" + _encode_varint(content_len)
    tensor_len = len(tensor) + content_len
    value = b"\x0a" + _encode_varint(len(name)) + name + b"\x12" + _encode_varint(tensor_len) + tensor
    return b"\x0a" + _encode_varint(len(value) + content_len) + value

