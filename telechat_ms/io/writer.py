"""Streaming writers: tensors go to disk chunk by chunk, so peak memory is one chunk, not one shard (a
transposed tensor -- GPT-2 Conv1D layouts -- holds the columns it is made of: at most one tensor).

Sharding follows transformers: tensors in model order, a new shard when the next tensor would push the current
one past `max_shard_bytes` (a tensor bigger than the limit gets a shard of its own); files are named
model-0000i-of-0000N.safetensors and listed in model.safetensors.index.json (always written, even for one shard).
"""
from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field

import numpy as np

from . import ckpt_io, safetensors_io
from .dtypes import BY_NAME, OUTPUT_DTYPES, cast
from .errors import ConvertError
from .sources import SAFE_INDEX, Source
from .virtual import Computed, Transposed, Virtual, column_block

DEFAULT_CHUNK_BYTES = 32 * 2**20      # per read; working set ~1 chunk (same dtype) to ~2.5 chunks (bf16 cast)
COPY_BYTES = 256 * 2**20              # per in-kernel copy (also the .ckpt slice size, MindSpore uses 512 MiB)
CKPT_NAME = "model.ckpt"


@dataclass
class Written:
    files: list[str] = field(default_factory=list)
    weight_map: dict[str, str] = field(default_factory=dict)
    total_size: int = 0


def output_dtypes(items: list[tuple[str, Virtual]], dtype: str | None) -> list[str]:
    """`dtype` for every float tensor, or each tensor's own source dtype (stacks of mixed dtypes take the
    first; float64, which the model cannot use, becomes float32). Non-float tensors (an HF checkpoint's bool /
    integer buffers, packed quantized weights) and tensors marked `keep_dtype` (quantization scales) keep
    their dtype."""
    out = []
    for _, tensor in items:
        own = tensor.dtype
        keep = not BY_NAME[own].is_float or tensor.keep_dtype
        out.append(own if keep else dtype or (own if own in OUTPUT_DTYPES else "float32"))
    return out


def _plan_shards(sizes: list[int], max_bytes: int) -> list[list[int]]:
    shards, current, used = [], [], 0
    for i, size in enumerate(sizes):
        if current and used + size > max_bytes:
            shards.append(current)
            current, used = [], 0
        current.append(i)
        used += size
    return shards + [current] if current else shards


def _write_all(fh, data) -> None:
    view = memoryview(data).cast("B")
    while view:                              # raw writes may be partial
        view = view[fh.write(view):]


_COPY = {"supported": hasattr(os, "copy_file_range")}


def _copy(fh, ranges) -> bool:
    """Copy file byte ranges into `fh` in the kernel (no user-space buffer, reflinks where the file system
    can). False, with nothing written, when the kernel / file system cannot; later calls then skip it."""
    if ranges is None or not _COPY["supported"]:
        return False
    src, pieces = ranges
    for offset, size in pieces:
        while size:
            try:
                done = os.copy_file_range(src.fileno(), fh.fileno(), size, offset)
            except OSError as exc:
                if exc.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP) and \
                        pieces[0] == (offset, size):
                    _COPY["supported"] = False
                    return False
                raise
            if done == 0:
                raise ConvertError(f"{src.name}: truncated (no data at offset {offset})")
            offset, size = offset + done, size - done
    return True


def _write_tensor(fh, name: str, tensor: Virtual, source, dtype, chunk_bytes, bar, ckpt=False) -> int:
    """Part by part: a Segment of the same dtype -> in-kernel copy, else bounded read + cast + write chunks;
    consecutive Transposed blocks of one inner tensor -> its needed columns read once, written transposed;
    a Computed part -> built once, cast, written in chunks."""
    itemsize, written = BY_NAME[dtype].itemsize, 0
    for group in _groups(tensor.segments):
        if isinstance(group, list):
            written += _write_transposed(fh, name, tensor.shape, group, source, dtype, chunk_bytes, bar, ckpt)
            continue
        if isinstance(group, Computed):
            written += _write_computed(fh, name, tensor.shape, group, source, dtype, chunk_bytes, bar, ckpt)
            continue
        seg = group
        same = seg.dtype == dtype
        widest = max(BY_NAME[seg.dtype].itemsize, itemsize)
        chunk_elems = max(1, chunk_bytes // widest)
        step = max(chunk_elems, COPY_BYTES // widest) if same else chunk_elems
        for start in range(seg.start, seg.stop, step):
            stop = min(start + step, seg.stop)
            nbytes = (stop - start) * itemsize
            if ckpt:                  # one protobuf Value per piece; MindSpore joins consecutive same-tag Values
                _write_all(fh, ckpt_io.value_header(name, tensor.shape, dtype, nbytes))
            if not (same and _copy(fh, source.byte_ranges(seg.key, start, stop))):
                for lo in range(start, stop, chunk_elems):
                    chunk = cast(source.read(seg.key, lo, min(lo + chunk_elems, stop)), seg.dtype, dtype)
                    _write_all(fh, np.ascontiguousarray(chunk))
                    del chunk         # free before the next read
            written += nbytes
            bar.update(nbytes)
    if written != tensor.numel * itemsize:   # a bug guard: the header already promised this many bytes
        raise ConvertError(f"internal error: wrote {written} bytes for '{name}', expected {tensor.numel * itemsize}")
    return written


def _groups(parts):
    """Segments one by one; runs of Transposed blocks over the same inner tensor as one list."""
    run = []
    for part in parts:
        if isinstance(part, Transposed) and (not run or part.inner is run[0].inner):
            run.append(part)
            continue
        if run:
            yield run
            run = []
        if isinstance(part, Transposed):
            run = [part]
        else:
            yield part
    if run:
        yield run


def _write_transposed(fh, name, shape, run: list[Transposed], source, dtype, chunk_bytes, bar, ckpt) -> int:
    """The inner tensor's columns [lo, hi) that `run` needs, read once in row chunks (peak: that block, at
    most one output tensor), then each block's rows written in chunks of about chunk_bytes."""
    lo, hi = min(p.start for p in run), max(p.stop for p in run)
    block = column_block(run[0].inner, lo, hi, source, dtype, chunk_bytes)       # (R, hi - lo)
    itemsize, written = BY_NAME[dtype].itemsize, 0
    step = max(1, chunk_bytes // max(1, block.shape[0] * itemsize))              # output rows per chunk
    for part in run:
        for r in range(part.start, part.stop, step):
            r_end = min(part.stop, r + step)
            chunk = np.ascontiguousarray(block[:, r - lo:r_end - lo].T)          # (R, n) -> (n, R) rows
            if ckpt:
                _write_all(fh, ckpt_io.value_header(name, shape, dtype, chunk.nbytes))
            _write_all(fh, chunk)
            written += chunk.nbytes
            bar.update(chunk.nbytes)
    del block
    return written


def _write_computed(fh, name, shape, part: Computed, source, dtype, chunk_bytes, bar, ckpt) -> int:
    """The part's elements, built in memory once (peak: one tensor), cast and written in chunk_bytes pieces."""
    flat = part.values(source)
    step = max(1, chunk_bytes // max(BY_NAME[dtype].itemsize, BY_NAME[part.dtype].itemsize))
    written = 0
    for start in range(0, flat.size, step):
        chunk = np.ascontiguousarray(cast(flat[start:start + step], part.dtype, dtype))
        if ckpt:
            _write_all(fh, ckpt_io.value_header(name, shape, dtype, chunk.nbytes))
        _write_all(fh, chunk)
        written += chunk.nbytes
        bar.update(chunk.nbytes)
    del flat
    return written


def write_safetensors(out_dir: str, items, source: Source, dtype: str | None, max_shard_bytes: int,
                      metadata: dict[str, str], chunk_bytes: int, bar) -> Written:
    """Sharded safetensors + index into `out_dir`."""
    dtypes = output_dtypes(items, dtype)
    sizes = [t.numel * BY_NAME[d].itemsize for (_, t), d in zip(items, dtypes)]
    shards = _plan_shards(sizes, max_shard_bytes)
    out = Written()
    for number, indices in enumerate(shards, 1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        entries = [(items[i][0], dtypes[i], items[i][1].shape) for i in indices]
        with open(os.path.join(out_dir, name), "wb", buffering=0) as fh:
            _write_all(fh, safetensors_io.build_header(entries, metadata))
            for i in indices:
                out.total_size += _write_tensor(fh, items[i][0], items[i][1], source, dtypes[i], chunk_bytes, bar)
                out.weight_map[items[i][0]] = name
        out.files.append(name)
    index = {"metadata": {"total_size": out.total_size}, "weight_map": dict(sorted(out.weight_map.items()))}
    with open(os.path.join(out_dir, SAFE_INDEX), "w", encoding="utf-8") as fh:
        json.dump(index, fh, indent=2)
        fh.write("\n")
    out.files.append(SAFE_INDEX)
    return out


def write_ckpt(out_dir: str, items, source: Source, dtype: str | None, chunk_bytes: int, bar) -> Written:
    """One MindSpore .ckpt (the mindformers workflow), streamed Value by Value."""
    out = Written(files=[CKPT_NAME])
    with open(os.path.join(out_dir, CKPT_NAME), "wb", buffering=0) as fh:
        for (name, tensor), tensor_dtype in zip(items, output_dtypes(items, dtype)):
            out.total_size += _write_tensor(fh, name, tensor, source, tensor_dtype, chunk_bytes, bar, ckpt=True)
            out.weight_map[name] = CKPT_NAME
    return out
