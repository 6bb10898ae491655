"""The HF <-> telechat_ms name tables of every family, and the in-memory conversions built on them.

Each family module (telechat_ms/families/<family>.py) declares its HF checkpoint layout: a name table from the
config (and the source's key spelling) whose entries name HF tensors, our tensors and a named layout helper
(families/hf_layout.py). One table per family serves both directions and both the streaming converters
(pipeline.py) and `hf_to_ms` / `ms_to_hf` here. Our parameter names follow the official MindSpore port (spec
§5.1) for every family: `model.layers.{i}.attention.wq / wk_v / wo`, `feed_forward.w1 / w3 / w2`, ...
The fused key_value keeps the per-head interleaved row layout [K_0; V_0; K_1; V_1; ...];
`split_key_value` / `merge_key_value` convert to/from separate K and V (reference models).
"""
from __future__ import annotations

import numpy as np

from ..families import get
from ..families.hf_layout import Entry, Table
from ..io.errors import ConvertError
from ..io.virtual import materialize
from .memory import ArraySource

def hf_layout(config):
    """The HF checkpoint layout of the config's family."""
    family = get(config.family)
    if family.hf_layout is None:
        raise ConvertError(f"family {family.name!r} has no HF checkpoint layout")
    return family.hf_layout


def table(config, spelling=None) -> Table:
    """The family's table for `config` with the HF key `spelling` (None: the family's canonical one)."""
    return hf_layout(config).table(config, spelling or {})


def name_table(config, spelling=None) -> list[Entry]:
    """Every weight of a model with this config, in model order (see families/hf_layout.Entry)."""
    return table(config, spelling).entries


def hf_to_ms(hf_state: dict[str, np.ndarray], config) -> dict[str, np.ndarray]:
    """HF-named arrays (in the family's own layout, any spelling it accepts) -> our arrays. In memory, for
    small models and tests; the CLI streams the same table tensor by tensor. Tensors the table does not name
    (buffers, a tied lm_head copy) are ignored; missing or wrong-shaped ones are a ConvertError."""
    from .views import hf_view   # pylint: disable=import-outside-toplevel  (views imports this module's users)
    source = ArraySource(hf_state)
    spelling = hf_layout(config).spelling(frozenset(hf_state))
    view, _ = hf_view(source, config, table(config, spelling), strict=False)
    return {key: materialize(tensor, source) for key, tensor in view.items()}


def ms_to_hf(ms_state: dict[str, np.ndarray], config, spelling=None) -> dict[str, np.ndarray]:
    """Inverse of hf_to_ms, in the family's canonical spelling unless `spelling` says otherwise."""
    from .views import hf_outputs, ms_view   # pylint: disable=import-outside-toplevel
    source = ArraySource(ms_state)
    names = table(config, spelling)
    view, _ = ms_view(source, config, names, strict=False)
    return {key: materialize(tensor, source) for key, tensor in hf_outputs(view, config, names)}


def split_key_value(kv: np.ndarray, num_kv_heads: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Fused per-head interleaved key_value (2*n_kv*hd, H) -> K (n_kv*hd, H), V (n_kv*hd, H)."""
    hidden = kv.shape[-1]
    per_head = kv.reshape(num_kv_heads, 2, head_dim, hidden)                         # (n_kv, k|v, hd, H)
    return (per_head[:, 0].reshape(num_kv_heads * head_dim, hidden),
            per_head[:, 1].reshape(num_kv_heads * head_dim, hidden))


def merge_key_value(k: np.ndarray, v: np.ndarray, num_kv_heads: int, head_dim: int) -> np.ndarray:
    """Inverse of split_key_value: K, V (n_kv*hd, H) -> (2*n_kv*hd, H) rows [K_0; V_0; K_1; V_1; ...]."""
    hidden = k.shape[-1]
    per_head = np.stack([k.reshape(num_kv_heads, head_dim, hidden),
                         v.reshape(num_kv_heads, head_dim, hidden)], axis=1)         # (n_kv, 2, hd, H)
    return per_head.reshape(2 * num_kv_heads * head_dim, hidden)
