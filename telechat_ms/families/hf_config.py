"""HF config.json reading shared by every family: bookkeeping keys, strict math keys, all problems at once.

Every standard `transformers.PretrainedConfig` attribute (4.x-5.x) is bookkeeping unless a family maps it:
accepted and dropped. A key that would change the math and is not supported (an unknown `rope_scaling` type,
q/k/v biases, another activation, a quantized checkpoint) is an error naming the key, never a silently
different model. Unknown keys are listed together in one error.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

from ..config.base import ConfigError, load_json

# PretrainedConfig attributes and save_pretrained / to_dict(use_diff=False) output that do not describe the
# architecture (generation defaults, task heads, serialisation, attention backend selection).
BOOKKEEPING = frozenset({
    "architectures", "model_type", "auto_map", "transformers_version", "torch_dtype", "dtype", "_name_or_path",
    "_commit_hash", "_attn_implementation", "_attn_implementation_autoset", "_attn_implementation_internal",
    "attn_implementation", "return_dict", "output_hidden_states", "output_attentions", "torchscript",
    "use_bfloat16", "tf_legacy_loss", "pruned_heads", "chunk_size_feed_forward", "is_encoder_decoder",
    "is_decoder", "cross_attention_hidden_size", "add_cross_attention", "tie_encoder_decoder", "finetuning_task",
    "id2label", "label2id", "num_labels", "tokenizer_class", "prefix", "sep_token_id", "decoder_start_token_id",
    "task_specific_params", "problem_type", "max_length", "min_length", "do_sample", "early_stopping",
    "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "use_cache", "gradient_checkpointing", "output_router_logits", "use_return_dict",
    "pretraining_tp",          # HF Llama slices matmuls when > 1: the same sums, another order
    "base_model_tp_plan", "base_model_pp_plan", "tp_plan", "pp_plan", "keys_to_ignore_at_inference",
})


def read_hf_json(path_or_dict: str | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """(config dict, source description) from a dict, a config.json path or a directory holding one."""
    if isinstance(path_or_dict, Mapping):
        return dict(path_or_dict), "config.json"
    path = path_or_dict
    if os.path.isdir(path) or not path.endswith(".json"):
        path = os.path.join(path, "config.json")
    data = load_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data, path


@dataclasses.dataclass
class HFMapping:
    """How one family's config.json names become TelechatConfig fields.

    aliases: HF name -> field; ignored: family-specific keys the modeling never reads; handlers: keys whose
    value needs a check or a conversion (return {field: value}, raise ConfigError to refuse).
    """
    aliases: Mapping[str, str]
    ignored: frozenset = frozenset()
    handlers: Mapping[str, Callable[[Any, Mapping[str, Any]], dict]] = dataclasses.field(default_factory=dict)

    def fields(self, data: Mapping[str, Any], source: str, known_fields) -> dict[str, Any]:
        """Our field values from `data`; all unknown keys and refused values reported in one ConfigError."""
        out: dict[str, Any] = {}
        origin: dict[str, str] = {}
        unknown, problems = [], []
        for key, value in data.items():
            if key in self.handlers:
                try:
                    mapped = self.handlers[key](value, data)
                except ConfigError as exc:
                    problems.append(f"'{key}': {exc}")
                    continue
            elif key in self.ignored or key in BOOKKEEPING:
                continue
            else:
                name = self.aliases.get(key, key)
                if name not in known_fields:
                    unknown.append(key)
                    continue
                mapped = {name: value}
            for name, val in mapped.items():
                if name in out and out[name] != val:
                    problems.append(f"'{key}' and '{origin[name]}' both set field '{name}' to different values "
                                    f"({val!r} vs {out[name]!r})")
                out[name], origin[name] = val, key
        if unknown:
            problems.insert(0, f"unknown config keys {', '.join(repr(k) for k in unknown)} (not a "
                               "PretrainedConfig attribute nor a key of this family)")
        if problems:
            raise ConfigError(f"{source}: " + "; ".join(problems))
        return out


def refuse_if_true(why: str) -> Callable[[Any, Mapping], dict]:
    def handler(value, _data):
        if value:
            raise ConfigError(f"{value!r} is not supported: {why}")
        return {}
    return handler


def require_value(allowed: tuple, why: str) -> Callable[[Any, Mapping], dict]:
    def handler(value, _data):
        if value not in allowed:
            raise ConfigError(f"{value!r} is not supported ({why}; supported: {', '.join(map(repr, allowed))})")
        return {}
    return handler


def no_quantization(value, _data) -> dict:
    if value:
        method = value.get("quant_method", "?") if isinstance(value, Mapping) else value
        raise ConfigError(f"quantized checkpoint (quant_method {method!r}): convert it with convert/hf2ms.py, "
                          "which reads the quantized weights (kept quantized, or --dequantize); see "
                          "docs/quantization.md")
    return {}


def first_id(field: str) -> Callable[[Any, Mapping], dict]:
    """Token ids: an int, null (keep our default) or a list (the first is the canonical one)."""
    def handler(value, _data):
        if value is None:
            return {}
        if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            return {field: value[0]}
        if isinstance(value, int) and not isinstance(value, bool):
            return {field: value}
        raise ConfigError(f"expected a token id, got {value!r}")
    return handler


def rope_scaling(value, _data) -> dict:
    """HF Llama `rope_scaling`: null, linear or dynamic (others change the math we do not implement)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"expected an object or null, got {value!r}")
    kind = value.get("rope_type", value.get("type"))
    if kind == "default":
        return {}
    if kind not in ("linear", "dynamic"):
        raise ConfigError(f"type {kind!r} is not supported (supported: linear, dynamic)")
    extra = sorted(set(value) - {"type", "rope_type", "factor"})
    if extra:
        raise ConfigError(f"keys {extra} are not supported for {kind} scaling")
    return {"rope_scaling": kind, "rope_scaling_factor": float(value.get("factor", 1.0))}


def build_config(family: str, mapping: HFMapping, data: Mapping[str, Any], source: str,
                 defaults: Mapping[str, Any], post: Callable[[dict], None] | None = None):
    """TelechatConfig of `family` from config.json `data`: family defaults, then the file's values."""
    from ..config.model import TelechatConfig   # pylint: disable=import-outside-toplevel
    known = {f.name for f in dataclasses.fields(TelechatConfig)} | {"head_dim"}
    values = {**defaults, **mapping.fields(data, source, known), "family": family}
    if "head_dim" in values:
        values["head_dim_override"] = values.pop("head_dim")
    if post is not None:
        post(values)
    try:
        return TelechatConfig(**values)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
