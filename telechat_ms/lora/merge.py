"""Merge a LoRA adapter into base weights: W' = W + scaling * B A (in float64, rounded once to W's dtype).

`merge_lora(base, adapter, dst)` streams a converted model directory (convert/hf2ms.py output or a training step)
tensor by tensor into a new directory of the same format: peak memory is one weight (plus the small adapter);
the output is staged (io/output.staged_output: complete or absent, checksums.sha256) and loads with
`from_pretrained` or converts with ms2hf like its base. `merged_state` does the same in memory (tests).
"""
from __future__ import annotations

import os
import shutil
from functools import partial

import numpy as np

from ..config.base import ConfigError
from ..io.checkpoint import HF_CONFIG, META, MODEL_CONFIG, read_config
from ..io.dtypes import BY_NAME, cast, parse_size
from ..io.output import TOKENIZER_FILES, check_destination, staged_output
from ..io.sources import open_ms
from ..io.virtual import Virtual, materialize
from ..io.writer import DEFAULT_CHUNK_BYTES, write_safetensors
from .inject import Adapter
from .peft_format import adapters_for_model

# files of the base directory that describe the model (not weights, not training state) and are kept
KEPT_FILES = (MODEL_CONFIG, HF_CONFIG, META, "hf_config.json") + TOKENIZER_FILES


def _check_mergeable(config, adapters: dict[str, Adapter], where: str) -> None:
    if getattr(config, "quantization", None) is not None:
        raise ConfigError(f"{where}: the base is weight-only quantized; merging needs float weights (convert the "
                          "source with hf2ms --dequantize, or apply the adapter at chat time with --adapter)")
    if config.tie_word_embeddings and "lm_head" in adapters:
        raise ConfigError(f"{where}: the adapter changes the tied lm_head, whose weight is also the embedding "
                          "table: it cannot be merged exactly; apply it at chat time with --adapter")


def merged_state(state: dict[str, np.ndarray], config, adapters: dict[str, Adapter]) -> dict[str, np.ndarray]:
    """Our float32 weights {name: array} with the adapters merged."""
    _check_mergeable(config, adapters, "merge")
    out = dict(state)
    for module, adapter in adapters.items():
        key = module + ".weight"
        out[key] = (state[key].astype(np.float64) + adapter.delta()).astype(state[key].dtype)
    return out


def _merged(info, adapter: Adapter, source) -> np.ndarray:
    """One base weight + its adapter delta, in the weight's storage dtype (bfloat16 as raw uint16)."""
    weight = materialize(Virtual.whole(info), source, "float32").astype(np.float64)
    return cast((weight + adapter.delta()).astype(np.float32), "float32", info.dtype)


def merge_lora(base: str, adapter: str, dst: str, overwrite: bool = False, max_shard_size="4GB",
               progress: bool = False) -> list[str]:
    """Stream base + adapter into `dst`; returns the merged weight names."""
    from tqdm import tqdm   # pylint: disable=import-outside-toplevel
    check_destination(dst, overwrite, sources=[base, adapter])
    config = read_config(base)
    adapters, _ = adapters_for_model(adapter, config)
    _check_mergeable(config, adapters, adapter)
    with open_ms(base) as source:
        items, merged = _items(source, adapters, base, adapter)
        total = sum(t.numel * BY_NAME[t.dtype].itemsize for _, t in items)
        with staged_output(dst, overwrite) as out, \
                tqdm(total=total, unit="B", unit_scale=True, disable=not progress, desc="merge-lora") as bar:
            write_safetensors(out, items, source, None, parse_size(max_shard_size), {"format": "ms"},
                              DEFAULT_CHUNK_BYTES, bar)
            for name in KEPT_FILES:
                if os.path.isfile(os.path.join(base, name)):
                    shutil.copy2(os.path.join(base, name), os.path.join(out, name))
    return merged


def _items(source, adapters: dict[str, Adapter], base: str, adapter: str):
    """(name, Virtual) of every base tensor in order, merged ones computed; and the merged names."""
    items, merged = [], []
    for key, info in source.infos.items():
        module = key[:-len(".weight")] if key.endswith(".weight") else None
        if module in adapters:
            want = (adapters[module].b.shape[0], adapters[module].a.shape[1])
            if tuple(info.shape) != want:
                raise ConfigError(f"{adapter}: {module}: the adapter is for a {list(want)} weight, the base "
                                  f"has {list(info.shape)}")
            items.append((key, Virtual.computed(partial(_merged, info, adapters[module]), info.shape, info.dtype,
                                                keys=(key,))))
            merged.append(key)
        else:
            items.append((key, Virtual.whole(info)))
    missing = sorted(set(adapters) - {k[:-len(".weight")] for k in merged})
    if missing:
        raise ConfigError(f"{base}: no weight for the adapter's {', '.join(missing[:3])}")
    return items, merged
