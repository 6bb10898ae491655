"""Adapters on disk in the HF PEFT format, with the HF module names of the model's family:

    adapter_config.json          peft_type LORA, r, lora_alpha (+ rank_pattern / alpha_pattern where modules
                                 differ), lora_dropout, target_modules, use_rslora, base_model_name_or_path, ...
    adapter_model.safetensors    base_model.model.<HF module>.lora_A.weight (r, in), ....lora_B.weight (out, r)

so `PeftModel.from_pretrained`, vLLM and LLaMA-Factory load what telechat_ms trains, and adapters trained
there load here (`read_adapter` + layouts.hf_to_ours). PEFT features that are not a plain LoRA on linear layers
(DoRA, trained biases, modules_to_save, embedding LoRA, ...) are refused naming the key.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import Counter

import numpy as np

from ..config.base import ConfigError
from .inject import Adapter
from .layouts import hf_to_ours, ours_to_hf
from .names import config_linears

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_\-]+)?\.weight$")
# PEFT options that change the math of a plain LoRA: allowed only at these values
_PLAIN = {"use_dora": (False, None), "bias": ("none", None), "modules_to_save": (None, []),
          "lora_bias": (False, None), "layer_replication": (None, []), "target_parameters": (None, []),
          "trainable_token_indices": (None, {}, []), "use_qalora": (False, None), "alora_invocation_tokens": (None,)}


def is_adapter_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG_FILE))


def _scale_to_alpha(scaling: float, rank: int, rslora: bool) -> float | int:
    alpha = scaling * (math.sqrt(rank) if rslora else rank)
    return int(round(alpha)) if abs(alpha - round(alpha)) < 1e-9 else alpha


def _local(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def peft_config(hf_adapters: dict[str, Adapter], all_hf_modules: list[str], base: str, dropout: float,
                rslora: bool, conv1d: bool) -> dict:
    """adapter_config.json for `hf_adapters`: the most common (rank, alpha) as r / lora_alpha; other modules in
    rank_pattern / alpha_pattern (by last name when all modules of that name agree, else by full name)."""
    pairs = {m: (a.rank, _scale_to_alpha(a.scaling, a.rank, rslora)) for m, a in hf_adapters.items()}
    (rank, alpha), _ = Counter(pairs.values()).most_common(1)[0]
    rank_pattern, alpha_pattern = {}, {}
    by_local: dict[str, set] = {}
    for module, pair in pairs.items():
        by_local.setdefault(_local(module), set()).add(pair)
    for module, (r, a) in pairs.items():
        uniform = len(by_local[_local(module)]) == 1
        key = _local(module) if uniform else re.escape(module)
        if r != rank:
            rank_pattern[key] = r
        if a != alpha:
            alpha_pattern[key] = a
    # whole names when only some modules of a name are adapted (PEFT would add zero adapters to the rest)
    targets = sorted({_local(m) for m in hf_adapters})
    if any(_local(m) in targets and m not in hf_adapters for m in all_hf_modules):
        targets = list(hf_adapters)
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "revision": None,
            "r": rank, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": targets,
            "exclude_modules": None, "bias": "none", "fan_in_fan_out": conv1d, "use_rslora": rslora,
            "use_dora": False, "modules_to_save": None, "init_lora_weights": True, "layers_to_transform": None,
            "layers_pattern": None, "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
            "inference_mode": True}


def write_adapter(out_dir: str, config, adapters: dict[str, Adapter], base: str = "", dropout: float = 0.0,
                  rslora: bool = False) -> list[str]:
    """adapter_config.json + adapter_model.safetensors for our `adapters` ({our module: Adapter}) into an
    existing directory (callers stage it: training checkpoints, save_adapter)."""
    from safetensors.numpy import save_file   # pylint: disable=import-outside-toplevel
    modules = config_linears(config)
    hf = ours_to_hf(config, adapters, modules)
    all_hf = [h for m, hs in _hf_names(config, modules).items() for h in hs]
    conv1d = config.family == "telechat52b"
    settings = peft_config(hf, all_hf, base, dropout, rslora, conv1d)
    tensors = {}
    for module, ad in hf.items():
        tensors[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(ad.a, np.float32)
        tensors[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(ad.b, np.float32)
    save_file(tensors, os.path.join(out_dir, WEIGHTS_FILE), metadata={"format": "pt"})
    with open(os.path.join(out_dir, CONFIG_FILE), "w", encoding="utf-8") as fh:
        json.dump(settings, fh, indent=2)
        fh.write("\n")
    return [CONFIG_FILE, WEIGHTS_FILE]


def _hf_names(config, modules) -> dict[str, list[str]]:
    from .names import hf_modules_of   # pylint: disable=import-outside-toplevel
    return hf_modules_of(config, modules)


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's get_pattern_key: the first key matching `(.*\\.)?(key)$` of the module name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _check_plain(settings: dict, path: str) -> None:
    kind = settings.get("peft_type")
    if str(kind).upper() != "LORA":
        raise ConfigError(f"{path}: peft_type {kind!r} is not supported (only LORA)")
    for key, allowed in _PLAIN.items():
        if key in settings and settings[key] not in allowed:
            raise ConfigError(f"{path}: {key}: {settings[key]!r} is not supported (telechat_ms loads plain LoRA "
                              "adapters on linear layers)")


def read_adapter(path: str) -> tuple[dict[str, Adapter], dict]:
    """({HF module: Adapter}, adapter_config) of a PEFT adapter directory."""
    config_path, weights = os.path.join(path, CONFIG_FILE), os.path.join(path, WEIGHTS_FILE)
    if not os.path.isdir(path):
        raise ConfigError(f"{path}: not a directory (expected a PEFT adapter: {CONFIG_FILE} + {WEIGHTS_FILE})")
    if not os.path.isfile(config_path):
        raise ConfigError(f"{path}: no {CONFIG_FILE} (expected a PEFT LoRA adapter directory)")
    if not os.path.isfile(weights):
        other = " (adapter_model.bin: save it with safe_serialization=True)" \
            if os.path.isfile(os.path.join(path, "adapter_model.bin")) else ""
        raise ConfigError(f"{path}: no {WEIGHTS_FILE}{other}")
    try:
        with open(config_path, encoding="utf-8") as fh:
            settings = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{config_path}: cannot read ({exc})") from None
    _check_plain(settings, config_path)
    return _adapters(_read_tensors(weights), settings, weights), settings


def _read_tensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError   # pylint: disable=import-outside-toplevel
    from safetensors.numpy import load_file   # pylint: disable=import-outside-toplevel
    from ..io.dtypes import cast   # pylint: disable=import-outside-toplevel
    from ..io.safetensors_io import read_header   # pylint: disable=import-outside-toplevel
    infos, _ = read_header(path)                       # truncated / corrupt files: one ConvertError naming them
    if any(info.dtype == "bfloat16" for info in infos.values()):
        from ..io.sources import Source   # pylint: disable=import-outside-toplevel
        from ..io.virtual import Virtual, materialize   # pylint: disable=import-outside-toplevel
        source = Source(infos, path, "adapter")
        return {k: materialize(Virtual.whole(i), source, "float32") for k, i in infos.items()}
    try:
        return {k: cast(v, str(v.dtype), "float32") if v.dtype != np.float32 else v
                for k, v in load_file(path).items()}
    except SafetensorError as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None


def _adapters(tensors: dict[str, np.ndarray], settings: dict, path: str) -> dict[str, Adapter]:
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise ConfigError(f"{path}: tensor {key!r} is not a LoRA A/B weight (embedding LoRA, DoRA magnitudes, "
                              "biases and modules_to_save are not supported)")
        parts.setdefault(match["module"], {})[match["ab"]] = value
    rslora = bool(settings.get("use_rslora", False))
    out = {}
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise ConfigError(f"{path}: {module} has lora_{''.join(ab)} but not both lora_A and lora_B")
        a, b = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ConfigError(f"{path}: {module}: lora_A {list(a.shape)} and lora_B {list(b.shape)} are not "
                              "(r, in) and (out, r)")
        rank = int(_pattern_value(settings.get("rank_pattern"), module, settings.get("r", 8)))
        alpha = float(_pattern_value(settings.get("alpha_pattern"), module, settings.get("lora_alpha", 8)))
        if rank != a.shape[0]:
            raise ConfigError(f"{path}: {module}: the config gives rank {rank}, the weights have {a.shape[0]}")
        out[module] = Adapter(a.astype(np.float32), b.astype(np.float32),
                              alpha / (math.sqrt(rank) if rslora else rank))
    return out


def adapters_for_model(path: str, config, modules=None) -> tuple[dict[str, Adapter], dict]:
    """A PEFT adapter directory as {our module: Adapter} for a model with `config` (HF names in any spelling
    the family accepts), and its adapter_config."""
    from ..families import get   # pylint: disable=import-outside-toplevel
    hf_adapters, settings = read_adapter(path)
    spelling = get(config.family).hf_layout.spelling(frozenset(m + ".weight" for m in hf_adapters))
    modules = list(modules) if modules is not None else config_linears(config)
    try:
        return hf_to_ours(config, hf_adapters, modules, spelling), settings
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
