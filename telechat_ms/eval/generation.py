"""generate_until of the lm-evaluation-harness adapter (telechat_ms/eval/harness.py) on our KV-cache engine.

Requests are grouped by their generation kwargs (a batch shares one GenerationConfig), sorted longest prompt
first and generated in batches of the adapter's batch size with left padding (telechat_ms/infer/generate.py).
lm_eval kwargs: until (str or list), max_gen_toks (or max_new_tokens / max_tokens), do_sample, temperature,
top_k, top_p, repetition_penalty; others are refused by name (silently ignoring one would change the task).
"""
from __future__ import annotations

import json

from tqdm import tqdm

from ..config.base import ConfigError
from ..config.generation import GenerationConfig

_LENGTH_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")
_SAMPLING_KEYS = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty")


def generation_settings(kwargs: dict, default_max: int, eos_ids: list[int]) -> tuple[GenerationConfig, list[str]]:
    """(GenerationConfig, stop strings) of one lm_eval gen_kwargs dict."""
    kwargs = dict(kwargs or {})
    until = kwargs.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    lengths = [kwargs.pop(k) for k in _LENGTH_KEYS if k in kwargs]
    max_new = int(lengths[0]) if lengths else default_max
    sampling = {k: kwargs.pop(k) for k in _SAMPLING_KEYS if k in kwargs}
    temperature = float(sampling.get("temperature", 0.0) or 0.0)
    do_sample = bool(sampling.get("do_sample", temperature > 0))
    kwargs.pop("seed", None)
    if kwargs:
        raise ConfigError(f"generate_until: unsupported generation kwargs {sorted(kwargs)}")
    fields = dict(max_new_tokens=max_new, do_sample=do_sample, eos_token_id=list(eos_ids),
                  stop_strings=[s for s in until if s])
    if do_sample:
        fields["temperature"] = temperature if temperature > 0 else 1.0
        if "top_k" in sampling:
            fields["top_k"] = int(sampling["top_k"])
        if "top_p" in sampling:
            fields["top_p"] = float(sampling["top_p"])
    if "repetition_penalty" in sampling:
        fields["repetition_penalty"] = float(sampling["repetition_penalty"])
    if not do_sample:
        fields["top_k"] = 0
    return GenerationConfig(**fields), fields["stop_strings"]


def cut_at_stops(text: str, stops: list[str]) -> str:
    """Text before the earliest stop string (lm_eval's postprocess splits at each, which is the same)."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[:min(hits)] if hits else text


def generate_batches(lm, requests: list[tuple[str, dict]], disable_progress: bool = False) -> list[str]:
    """Answers to (context, gen_kwargs) requests, in request order."""
    from ..infer.generate import generate   # pylint: disable=import-outside-toplevel
    groups: dict[str, list[int]] = {}
    for i, (_, kwargs) in enumerate(requests):
        groups.setdefault(json.dumps(kwargs, sort_keys=True, default=str), []).append(i)
    out: list[str | None] = [None] * len(requests)
    eos = [lm.eot_token_id]
    with tqdm(total=len(requests), desc="generate_until", disable=disable_progress) as bar:
        for indices in groups.values():
            config, stops = generation_settings(requests[indices[0]][1], lm.max_gen_toks, eos)
            room = lm.max_length - config.max_new_tokens
            if room < 1:
                raise ConfigError(f"generate_until: max_gen_toks {config.max_new_tokens} leaves no room for the "
                                  f"prompt in max_length {lm.max_length}")
            prompts = {i: lm.tok_encode(requests[i][0], left_truncate_len=room) for i in indices}
            order = sorted(indices, key=lambda i: -len(prompts[i]))
            for start in range(0, len(order), lm.batch_size_per_device):
                chunk = order[start:start + lm.batch_size_per_device]
                batch = [prompts[i] for i in chunk]

                def stop_check(row, tokens, _stops=stops):
                    return bool(_stops) and any(s in lm.tok_decode(tokens) for s in _stops)
                result = generate(lm.model, batch, config, pad_id=lm.scorer.pad_id,
                                  max_len=max(map(len, batch)) + config.max_new_tokens, stop_check=stop_check)
                for i, tokens in zip(chunk, result.tokens):
                    out[i] = cut_at_stops(lm.tok_decode(tokens), stops)
                    lm.cache_hook.add_partial("generate_until", requests[i], out[i])
                bar.update(len(chunk))
    return out   # type: ignore[return-value]
