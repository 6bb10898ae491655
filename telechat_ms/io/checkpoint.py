"""The converted-directory format (model_config.yaml + weights + convert_meta.json) and loading a model from it:
`TelechatForCausalLM.from_pretrained(path)` lands here."""
from __future__ import annotations

import dataclasses
import glob
import os

from ..config.base import ConfigError
from ..config.model import TelechatConfig
from . import ckpt_io, safetensors_io
from .errors import ConvertError, summarize
from .sources import SAFE_INDEX, read_index

MODEL_CONFIG = "model_config.yaml"
HF_CONFIG = "config.json"
META = "convert_meta.json"          # how the directory was made; the HF router key spelling for the way back


def weight_files(path: str) -> tuple[list[str], str]:
    """The weight files of a converted directory and their format ('safetensors' or 'ckpt')."""
    index = os.path.join(path, SAFE_INDEX)
    if os.path.isfile(index):
        files = [os.path.join(path, name) for name in sorted(set(read_index(index).values()))]
        for file in files:
            if not os.path.isfile(file):
                raise ConvertError(f"{index}: names {os.path.basename(file)} but {file} does not exist")
        return files, "safetensors"
    ckpts = sorted(glob.glob(os.path.join(path, "*.ckpt")))
    if len(ckpts) == 1:
        return ckpts, "ckpt"
    raise ConvertError(f"{path}: no weights: expected {SAFE_INDEX} (+ shards) or exactly one .ckpt file "
                       f"(found {len(ckpts)} .ckpt files)")


def check_weight_files(files: list[str], fmt: str) -> None:
    """The converters' header checks (a file shorter than its header says, a corrupt header or .ckpt stream)
    before MindSpore reads the files: its errors on such files are tracebacks that do not name the file."""
    for file in files:
        if fmt == "safetensors":
            safetensors_io.read_header(file)
        else:
            ckpt_io.scan_ckpt(file)


def _load_params(files: list[str], fmt: str) -> dict:
    import mindspore as ms   # pylint: disable=import-outside-toplevel
    check_weight_files(files, fmt)
    params = {}
    for file in files:
        try:
            params.update(ms.load_checkpoint(file, format=fmt))
        except (RuntimeError, ValueError, TypeError, OSError) as exc:   # what the header checks cannot see
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConvertError(f"{file}: MindSpore cannot read this {fmt} file ({first})") from None
    return params


def _match(net, params: dict, path: str) -> dict:
    """Check names and shapes against the model; cast dtypes to the model's (e.g. bf16 weights, fp32 model)."""
    from mindspore import Parameter, ops   # pylint: disable=import-outside-toplevel
    wanted = net.parameters_dict()
    missing = [k for k in wanted if k not in params]
    unexpected = [k for k in params if k not in wanted]
    wrong = [f"{k}: model {list(p.shape)}, checkpoint {list(params[k].shape)}"
             for k, p in wanted.items() if k in params and tuple(p.shape) != tuple(params[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"missing ({len(missing)}): {summarize(missing)}" if missing else "",
                 f"unexpected ({len(unexpected)}): {summarize(unexpected)}" if unexpected else "",
                 f"wrong shapes ({len(wrong)}): {summarize(wrong)}" if wrong else ""]
        raise ConvertError(f"{path}: weights do not match the model built from {MODEL_CONFIG}: "
                           + "; ".join(p for p in parts if p))
    out = {}
    for name, param in params.items():
        target = wanted[name].dtype
        out[name] = param if param.dtype == target else Parameter(ops.cast(param, target), name=name)
    return out


def read_config(path: str, **overrides) -> TelechatConfig:
    """model_config.yaml of a converted directory (+ overrides replacing config fields)."""
    if not os.path.isdir(path):
        raise ConvertError(f"{path}: not a directory (expected a directory written by convert/hf2ms.py)")
    config_path = os.path.join(path, MODEL_CONFIG)
    if not os.path.isfile(config_path):
        raise ConvertError(f"{config_path}: file not found (expected a directory written by convert/hf2ms.py)")
    try:
        config = TelechatConfig.from_yaml(config_path)
        return dataclasses.replace(config, **overrides) if overrides else config
    except (ConfigError, TypeError) as exc:
        raise ConvertError(f"{config_path}: {exc}") from None


def load_pretrained(cls, path: str, kernels=None, **overrides):
    """cls(config, kernels) with the weights of a directory written by hf2ms / mf2ms; overrides replace config
    fields (e.g. param_dtype="float32" to run bf16 weights on CPU)."""
    import mindspore as ms   # pylint: disable=import-outside-toplevel
    config = read_config(path, **overrides)
    files, fmt = weight_files(path)
    params = _load_params(files, fmt)
    net = cls(config, kernels)
    params = _match(net, params, path)
    not_loaded, _ = ms.load_param_into_net(net, params, strict_load=True)
    if not_loaded:
        raise ConvertError(f"{path}: parameters not loaded: {summarize(not_loaded)}")
    return net
