"""Batch generation on top of the KV-cache engine: left padding, stopping, streaming, timings."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..config.base import ConfigError

from ..config.generation import GenerationConfig
from .engine import KVCacheSession
from .sampling import TokenSelector


@dataclass
class GenerationResult:
    tokens: list[list[int]]                  # generated ids per prompt, without the stop token
    stop_reason: list[str]                   # "eos", "stop_string", or "length" per prompt
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    decode_steps: int = 0
    prompt_tokens: int = 0
    timings: dict = field(default_factory=dict)

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Generated tokens per second per sequence during decode (the usual 'tokens/s' of chat serving)."""
        return self.decode_steps / self.decode_seconds if self.decode_seconds else 0.0


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompts -> ids (B, L) left-padded with pad_id and attention mask (B, L), 1 = real token."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt must contain at least one token")
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return ids, mask


def generate(model, prompts: list[list[int]], config: GenerationConfig, pad_id: int | None = None,
             max_len: int | None = None, on_token: Callable[[int, int], None] | None = None,
             stop_check: Callable[[int, list[int]], bool] | None = None) -> GenerationResult:
    """Generate for a batch of prompt id lists.

    `on_token(row, token_id)` is called for each new token (streaming); `stop_check(row, tokens)` may end a
    row early (stop strings, checked on decoded text by the caller). Finished rows are fed pad tokens, as
    HF does. Positions count left pads (HF TeleChat semantics), so a batch equals each prompt padded alike.
    """
    pad_id = model.config.pad_token_id if pad_id is None else pad_id
    ids, mask = left_pad(prompts, pad_id)
    max_len = max_len or ids.shape[1] + config.max_new_tokens
    if ids.shape[1] >= max_len:
        raise ValueError(f"prompt of {ids.shape[1]} tokens leaves no room in max_len={max_len}")
    steps = min(config.max_new_tokens, max_len - ids.shape[1])
    session = KVCacheSession(model, ids.shape[0], max_len)
    selector = TokenSelector(config)
    start = time.perf_counter()
    logits = session.step(ids, mask)
    result = GenerationResult([[] for _ in prompts], ["length"] * len(prompts),
                              prefill_seconds=time.perf_counter() - start, prompt_tokens=int(mask.sum()))
    seen, done = ids, np.zeros(len(prompts), bool)
    decode_start = time.perf_counter()
    for step in range(steps):
        _check_finite(logits, step)
        next_ids = np.where(done, pad_id, selector(logits, seen)).astype(np.int32)
        seen = np.concatenate([seen, next_ids[:, None]], axis=1)
        for row in np.flatnonzero(~done):
            done[row] = _record(result, row, int(next_ids[row]), config, on_token, stop_check)
        if done.all() or step == steps - 1:
            break
        logits = session.step(next_ids[:, None])
        result.decode_steps += 1
    result.decode_seconds = time.perf_counter() - decode_start
    return result


def _check_finite(logits: np.ndarray, step: int) -> None:
    """NaN / Inf logits (corrupt weights, fp16 overflow) would decode as an arbitrary or empty answer."""
    if not np.isfinite(logits).all():
        rows = np.flatnonzero(~np.isfinite(logits).all(axis=-1)).tolist()
        raise ConfigError(f"the model produced non-finite logits (NaN/Inf) at generated token {step} for batch "
                         f"rows {rows}: the weights or the compute dtype are broken (telechat-ms verify DIR checks "
                         "the files; convert with hf2ms, which refuses non-finite weights)")


def _record(result, row, token, config, on_token, stop_check) -> bool:
    """Append one token to a row; True when the row is finished."""
    if token in config.eos_token_id:
        result.stop_reason[row] = "eos"
        return True
    result.tokens[row].append(token)
    if on_token is not None:
        on_token(row, token)
    if stop_check is not None and stop_check(row, result.tokens[row]):
        result.stop_reason[row] = "stop_string"
        return True
    return False
