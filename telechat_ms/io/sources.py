"""Where tensors come from: HF model directories, MindSpore checkpoints and directories, all read lazily.

A `Source` knows every tensor's dtype, shape and file from headers alone (validation needs nothing more) and
reads flat element ranges on demand. Layouts accepted:
  HF dir:  model.safetensors.index.json + shards | model.safetensors | pytorch_model.bin.index.json + shards |
           pytorch_model.bin   (first match wins, the order transformers uses)
  MS path: a .safetensors or .ckpt file | a directory with model.safetensors.index.json, or param_name_map.json
           (ms.parallel.unified_safetensors output), or *.safetensors files, or exactly one *.ckpt
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np

from . import ckpt_io, safetensors_io
from .errors import ConvertError, summarize
from .tensorfile import ExtentReader, TensorInfo, byte_ranges

SAFE_INDEX, SAFE_SINGLE = "model.safetensors.index.json", "model.safetensors"
BIN_INDEX, BIN_SINGLE = "pytorch_model.bin.index.json", "pytorch_model.bin"
MS_NAME_MAP = "param_name_map.json"


class Source:
    """Named tensors spread over files. `infos` comes from headers; `read` returns storage-dtype elements."""

    def __init__(self, infos: dict[str, TensorInfo], description: str, kind: str):
        self.infos, self.description, self.kind = infos, description, kind
        self._reader = ExtentReader()

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        return self._reader.read(self.infos[key], start, stop)

    def byte_ranges(self, key: str, start: int, stop: int):
        """(open binary file, [(offset, nbytes)]) of elements [start, stop), for in-kernel copies;
        None when the tensor is not plain bytes in a file."""
        info = self.infos[key]
        return self._reader.file(info.path), byte_ranges(info, start, stop)

    def close(self):
        self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TorchSource(Source):
    """pytorch_model*.bin read with torch.load(weights_only=True, mmap=True), one file mapped at a time."""

    def __init__(self, infos, description, kind):
        super().__init__(infos, description, kind)
        self._path, self._state = None, None

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        info = self.infos[key]
        if info.path != self._path:
            self._state, self._path = None, None                         # unmap the previous file first
            self._state, self._path = _torch_load(info.path), info.path
        flat = self._state[key].reshape(-1)[start:stop]
        if info.dtype == "bfloat16":
            return flat.view(_torch().int16).numpy().view(np.uint16)     # raw bits: numpy has no bfloat16
        return flat.numpy()

    def byte_ranges(self, key: str, start: int, stop: int):
        return None

    def close(self):
        self._state, self._path = None, None


def _torch():
    try:
        import torch   # pylint: disable=import-outside-toplevel
    except ImportError:
        raise ConvertError("reading pytorch_model*.bin checkpoints needs torch (pip install torch); "
                           "safetensors checkpoints do not") from None
    return torch


def _torch_load(path: str):
    torch = _torch()
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise ConvertError(f"{path}: file not found") from None
    except RuntimeError as exc:
        if "mmap" not in str(exc):                                       # legacy (non-zip) files cannot be mapped
            raise ConvertError(f"{path}: not a readable torch checkpoint ({exc})") from None
    except Exception as exc:   # pylint: disable=broad-except  # pickle/zip errors come in many types
        raise ConvertError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # pylint: disable=broad-except
        raise ConvertError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None


def _torch_infos(path: str) -> dict[str, TensorInfo]:
    torch = _torch()
    state = _torch_load(path)
    infos = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ConvertError(f"{path}: entry '{key}' is a {type(value).__name__}, not a tensor")
        infos[key] = TensorInfo(key, str(value.dtype).removeprefix("torch."), tuple(value.shape), path)
    return infos


def read_index(path: str) -> dict[str, str]:
    """weight_map {key: file name} of an HF-style index json (or a flat {key: file} map)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ConvertError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    weight_map = data.get("weight_map", data) if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ConvertError(f"{path}: expected {{'weight_map': {{tensor name: file name}}}}")
    return weight_map


def _from_index(index_path: str, header_of, kind: str, source_cls=Source) -> Source:
    """Open every file an index names; check the files exist and hold the tensors the index says."""
    directory = os.path.dirname(index_path)
    weight_map = read_index(index_path)
    files = sorted(set(weight_map.values()))
    infos: dict[str, TensorInfo] = {}
    for name in files:
        path = os.path.join(directory, name)
        keys = [k for k, v in weight_map.items() if v == name]
        if not os.path.isfile(path):
            raise ConvertError(f"{index_path}: names {name} for {len(keys)} tensors (e.g. '{keys[0]}') but "
                               f"{path} does not exist")
        header = header_of(path)
        absent = [k for k in keys if k not in header]
        if absent:
            raise ConvertError(f"{index_path}: tensors listed for {name} are not in that file: {summarize(absent)}")
        _add_unique(infos, header, path)
    return source_cls(infos, index_path, kind)


def _add_unique(infos: dict[str, TensorInfo], new: dict[str, TensorInfo], path: str) -> None:
    twice = [k for k in new if k in infos]
    if twice:
        raise ConvertError(f"{path}: tensors also stored in {infos[twice[0]].path}: {summarize(twice)}")
    infos.update(new)


def _safetensors_header(path: str) -> dict[str, TensorInfo]:
    return safetensors_io.read_header(path)[0]


def open_hf(src: str) -> Source:
    """The weights of an HF model directory."""
    if not os.path.isdir(src):
        raise ConvertError(f"{src}: not a directory (expected an HF model directory with config.json and weights)")
    path = os.path.join(src, SAFE_INDEX)
    if os.path.isfile(path):
        return _from_index(path, _safetensors_header, "hf-safetensors-sharded")
    path = os.path.join(src, SAFE_SINGLE)
    if os.path.isfile(path):
        return Source(_safetensors_header(path), path, "hf-safetensors")
    path = os.path.join(src, BIN_INDEX)
    if os.path.isfile(path):
        return _from_index(path, _torch_infos, "hf-bin-sharded", TorchSource)
    path = os.path.join(src, BIN_SINGLE)
    if os.path.isfile(path):
        return TorchSource(_torch_infos(path), path, "hf-bin")
    found = ", ".join(sorted(os.listdir(src))) or "nothing"
    raise ConvertError(f"{src}: no weights found: expected {SAFE_INDEX}, {SAFE_SINGLE}, {BIN_INDEX} or "
                       f"{BIN_SINGLE} (found: {found})")


def open_ms(path: str) -> Source:
    """The weights of a MindSpore checkpoint file or directory (ours, a training run's, or the official port's)."""
    if os.path.isfile(path):
        if path.endswith(".safetensors"):
            return Source(_safetensors_header(path), path, "ms-safetensors")
        if path.endswith(".ckpt"):
            return Source(ckpt_io.scan_ckpt(path), path, "ms-ckpt")
        raise ConvertError(f"{path}: expected a .safetensors or .ckpt file")
    if not os.path.isdir(path):
        raise ConvertError(f"{path}: no such file or directory")
    for index in (SAFE_INDEX, MS_NAME_MAP):
        if os.path.isfile(os.path.join(path, index)):
            return _from_index(os.path.join(path, index), _safetensors_header, "ms-safetensors-sharded")
    shards = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if shards:
        infos: dict[str, TensorInfo] = {}
        for shard in shards:
            _add_unique(infos, _safetensors_header(shard), shard)
        return Source(infos, path, "ms-safetensors-sharded")
    ckpts = sorted(glob.glob(os.path.join(path, "*.ckpt")))
    if len(ckpts) == 1:
        return Source(ckpt_io.scan_ckpt(ckpts[0]), ckpts[0], "ms-ckpt")
    if ckpts:
        raise ConvertError(f"{path}: several .ckpt files ({summarize(os.path.basename(c) for c in ckpts)}): "
                           "pass the one to convert (per-rank shards must be merged first, see docs/convert.md)")
    raise ConvertError(f"{path}: no MindSpore weights found (expected {SAFE_INDEX}, {MS_NAME_MAP}, "
                       "*.safetensors or one *.ckpt)")
