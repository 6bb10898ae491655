"""Validated, lazy views of a source as our MindSpore tensors, and of those as HF tensors.

A `Virtual` tensor (io/virtual.py) is a shape plus ordered parts of source tensors: element ranges, or
transposed column blocks. The family's name table (families/hf_layout.py) says which HF tensors make which of
ours and through which named layout helper; this module applies it in either direction without reading data.
MindSpore sources may also be the official port's variants: its (1, E, 1, H) expert bias (reshape), and its
fused w_qkv / w_gate_hidden (row slices, re-interleaved per kv head).
Validation collects every problem (missing, unexpected, wrong shape, non-float dtype) before one ConvertError.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..io.dtypes import FLOAT_DTYPES
from ..io.errors import ConvertError, summarize
from ..families.hf_layout import Table
from ..io.sources import Source
from ..io.tensorfile import TensorInfo
from ..io.virtual import Virtual


@dataclass
class Problems:
    """Everything wrong with a source, reported at once."""
    source: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)

    def check(self, info: TensorInfo, shape: tuple[int, ...], accepted=()) -> bool:
        """True if `info` has `shape` (or one of `accepted`) and a float dtype; records the problem otherwise."""
        ok = True
        if info.shape != tuple(shape) and info.shape not in accepted:
            self.other.append(f"'{info.key}' in {info.path}: expected shape {list(shape)}, found {list(info.shape)}")
            ok = False
        if info.dtype not in FLOAT_DTYPES:
            self.other.append(f"'{info.key}' in {info.path}: dtype {info.dtype} cannot be cast to a float weight "
                              f"(expected one of {', '.join(FLOAT_DTYPES)})")
            ok = False
        return ok

    def raise_if_any(self, config) -> None:
        if not (self.missing or self.unexpected or self.other):
            return
        lines = [f"invalid checkpoint {self.source} for config (layers={config.num_layers}, "
                 f"hidden={config.hidden_size}, heads={config.num_heads}/{config.num_kv_heads}, "
                 f"ffn={config.ffn_hidden_size}, vocab={config.vocab_size}, experts={config.num_experts}):"]
        if self.missing:
            lines.append(f"  missing tensors ({len(self.missing)}): {summarize(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected tensors ({len(self.unexpected)}): {summarize(self.unexpected)}")
        lines += [f"  {msg}" for msg in self.other[:20]]
        if len(self.other) > 20:
            lines.append(f"  ... ({len(self.other) - 20} more problems)")
        raise ConvertError("\n".join(lines))


def hf_view(source: Source, config, table: Table, strict: bool = True) -> tuple[dict[str, Virtual], dict]:
    """Our MS tensors from an HF source laid out as `table` says, and the source's buffers {key: info}.

    strict=False (in-memory conversions) ignores tensors the table does not name."""
    problems, used, view = Problems(source.description), set(), {}
    for entry in table.entries:
        parts = []
        for key, shape in zip(entry.hf_keys, entry.hf_shapes):
            info = source.infos.get(key)
            if info is None:
                problems.missing.append(key)
                continue
            used.add(key)
            if problems.check(info, shape):
                parts.append(Virtual.whole(info, shape))
        if len(parts) == len(entry.hf_keys):
            view.update(_apply(entry, entry.layout.to_ms(parts, entry, config), entry.ms_keys, entry.ms_shapes))
    buffer_keys = table.buffer_keys()
    buffers = {k: info for k, info in source.infos.items() if k in buffer_keys}
    used.update(buffers)
    if strict:
        problems.unexpected = [k for k in source.infos if k not in used]
    problems.raise_if_any(config)
    return view, buffers


def _apply(entry, tensors: list[Virtual], keys, shapes) -> dict[str, Virtual]:
    """{key: tensor} of a layout's output, checked against the shapes the table promises."""
    got = [t.shape for t in tensors]
    if got != list(shapes):
        raise ConvertError(f"internal error: layout {entry.layout.name} of {entry.hf_keys} made shapes {got}, "
                           f"the table says {list(shapes)}")
    return dict(zip(keys, tensors))


# Entries of training checkpoints that are not model weights (optimizer state, counters, loss scale).
_STATE_PREFIXES = ("adam_m.", "adam_v.", "moment1.", "moment2.", "moments.", "exp_avg.", "exp_avg_sq.",
                   "accu_grads.", "accumulate_grads.", "grad_accum.", "lamb_m.", "lamb_v.", "max_exp_avg_sq.")
_STATE_NAMES = re.compile(r"(^|\.)(global_step|learning_rate|lr|epoch_num|step_num|loss_scale|scale_sense|"
                          r"current_iterator_step|last_overflow_iterator_step|beta1_power|beta2_power|"
                          r"total_step|consumed_samples|global_batch_size)$")
_WRAPPER_PREFIXES = ("network.", "_backbone.", "backbone.")


def is_training_state(key: str) -> bool:
    return key.startswith(_STATE_PREFIXES) or bool(_STATE_NAMES.search(key))


def _model_names(source: Source, expected) -> tuple[dict[str, TensorInfo], list[str]]:
    """{model name: info} (wrapper prefixes stripped) and the dropped training-state keys."""
    named, dropped = {}, []
    for key, info in source.infos.items():
        if is_training_state(key):
            dropped.append(key)
            continue
        name = key
        while name.startswith(_WRAPPER_PREFIXES) and name not in expected:
            name = name.split(".", 1)[1]
        named[name] = info
    return named, dropped


def ms_view(source: Source, config, table: Table, strict: bool = True) -> tuple[dict[str, Virtual], list[str]]:
    """Our MS tensors from a MindSpore source (ours, a training run's or the official port's); dropped keys.

    strict=False (in-memory conversions) ignores tensors the table does not name."""
    expected = {k: s for e in table.entries for k, s in zip(e.ms_keys, e.ms_shapes)}
    named, dropped = _model_names(source, expected)
    problems, used, view = Problems(source.description), set(), {}
    for key, shape in expected.items():
        found = _ms_tensor(key, shape, named, config, problems, used)
        if found is not None:
            view[key] = found
    if strict:
        problems.unexpected = [named[k].key for k in named if k not in used]
    problems.raise_if_any(config)
    return view, dropped


def _ms_tensor(key: str, shape, named, config, problems: Problems, used: set) -> Virtual | None:
    info = named.get(key)
    if info is not None:
        used.add(key)
        # official port: stacked expert bias is (1, E, 1, H); same bytes as our (E, H)
        accepted = ((1, shape[0], 1, shape[1]),) if key.endswith("ffn.w2.bias") else ()
        return Virtual.whole(info, shape) if problems.check(info, shape, accepted) else None
    fused = _defused(key, named, config, problems, used)
    if fused is False:
        problems.missing.append(key)
        return None
    return fused


# the official port's fused variants (qkv_concat): our leaf name -> the fused tensor it is a row range of
_FUSED = {"attention.wq.weight": "attention.w_qkv.weight", "attention.wk_v.weight": "attention.w_qkv.weight",
          "feed_forward.w1.weight": "feed_forward.w_gate_hidden.weight",
          "feed_forward.w3.weight": "feed_forward.w_gate_hidden.weight"}


def _defused(ms_key: str, named, config, problems: Problems, used: set):
    """wq / wk_v from w_qkv (rows [Q; K_all; V_all]), w1 / w3 from w_gate_hidden (rows [gate; up]).

    False when there is no fused tensor either (the key is missing), None when it is there but invalid.
    """
    match = re.fullmatch(r"(model\.layers\.\d+)\.(.+)", ms_key)
    if not match or match.group(2) not in _FUSED or f"{match.group(1)}.{_FUSED[match.group(2)]}" not in named:
        return False
    key, leaf = f"{match.group(1)}.{_FUSED[match.group(2)]}", match.group(2)
    used.add(key)
    q_rows, kv_rows, ffn = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim, \
        config.ffn_hidden_size
    rows = q_rows + 2 * kv_rows if leaf.startswith("attention.") else 2 * ffn
    if not problems.check(named[key], (rows, config.hidden_size)):
        return None
    fused = Virtual.whole(named[key])
    if leaf == "attention.wq.weight":
        return fused.rows(0, q_rows)
    if leaf == "attention.wk_v.weight":
        hd = config.head_dim
        parts = []
        for h in range(config.num_kv_heads):       # back to per-head [K_h; V_h] rows
            parts += [fused.rows(q_rows + h * hd, q_rows + (h + 1) * hd),
                      fused.rows(q_rows + kv_rows + h * hd, q_rows + kv_rows + (h + 1) * hd)]
        return Virtual.concat(parts, (2 * kv_rows, config.hidden_size))
    return fused.rows(0, ffn) if leaf == "feed_forward.w1.weight" else fused.rows(ffn, 2 * ffn)


def hf_outputs(view: dict[str, Virtual], config, table: Table,
               buffers: dict[str, Virtual] | None = None) -> list[tuple[str, Virtual]]:
    """(HF key, tensor) in model order, laid out as `table` says; then the buffers to re-create."""
    out = []
    for entry in table.entries:
        tensors = entry.layout.to_hf([view[k] for k in entry.ms_keys], entry, config)
        out += list(_apply(entry, tensors, entry.hf_keys, entry.hf_shapes).items())
    return out + list((buffers or {}).items())


def ms_outputs(view: dict[str, Virtual], table: Table) -> list[tuple[str, Virtual]]:
    return [(key, view[key]) for entry in table.entries for key in entry.ms_keys]
