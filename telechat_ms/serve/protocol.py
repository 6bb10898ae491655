"""OpenAI request bodies (pydantic), their checks, and errors in OpenAI's JSON shape.

Unknown fields are ignored (clients such as LangChain send extras); fields we cannot honour are refused with 400
naming the field (n > 1, logprobs, best_of > 1, non-zero presence / frequency penalties, logit_bias).
Sampling: a request's values override the model directory's generation_config.json; temperature 0 means greedy,
any other temperature samples; top_k <= 0 (vLLM's -1) disables top-k; no seed = a fresh random seed.
"""
from __future__ import annotations

import dataclasses
import json
import secrets
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config.generation import GenerationConfig


class APIError(Exception):
    """An error answered as {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = None
    repetition_penalty: float | None = Field(default=None, gt=0)
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: Any = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict | None = None
    best_of: int | None = None
    user: str | None = None


class ChatMessage(_Body):
    role: str
    content: Union[str, list[dict], None] = None
    name: str | None = None
    tool_calls: list[dict] | None = None
    tool_call_id: str | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[dict] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], dict, None] = None
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[int], list[str]]
    echo: bool = False
    suffix: str | None = None


def parse_body(raw: bytes, cls):
    """JSON body -> request model; bad JSON or a bad field is a 400 naming it."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        request = cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise APIError(400, f"{param}: {first['msg']} (got {_short(first.get('input'))})", param=param,
                       code="invalid_value") from None
    _refuse_unsupported(request)
    return request


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _refuse_unsupported(request) -> None:
    checks = [("n", request.n != 1, "only n=1 is supported"),
              ("logprobs", bool(request.logprobs), "logprobs are not supported"),
              ("best_of", request.best_of not in (None, 1), "best_of > 1 is not supported"),
              ("presence_penalty", request.presence_penalty not in (None, 0), "presence_penalty is not supported "
               "(use repetition_penalty)"),
              ("frequency_penalty", request.frequency_penalty not in (None, 0), "frequency_penalty is not "
               "supported (use repetition_penalty)"),
              ("logit_bias", bool(request.logit_bias), "logit_bias is not supported")]
    if isinstance(request, CompletionRequest):
        checks += [("suffix", bool(request.suffix), "suffix is not supported"),
                   ("echo", request.echo, "echo is not supported")]
    for param, bad, message in checks:
        if bad:
            raise APIError(400, f"{param}: {message}", param=param, code="unsupported_parameter")


def stop_list(request) -> list[str]:
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if any(not s for s in stops):
        raise APIError(400, "stop: stop strings must be non-empty", param="stop", code="invalid_value")
    return stops


def generation_config(request, defaults: GenerationConfig) -> GenerationConfig:
    """The request's sampling values over the model's defaults (a GenerationConfig validates them again)."""
    changes: dict[str, Any] = {}
    if request.temperature is not None:
        changes["do_sample"] = request.temperature > 0
        if request.temperature > 0:
            changes["temperature"] = float(request.temperature)
    if request.top_p is not None:
        changes["top_p"] = float(request.top_p)
    if request.top_k is not None:
        changes["top_k"] = max(int(request.top_k), 0)
    if request.repetition_penalty is not None:
        changes["repetition_penalty"] = float(request.repetition_penalty)
    # a request without a seed draws a fresh one (OpenAI semantics: unseeded sampling differs per request)
    changes["seed"] = int(request.seed) if request.seed is not None else secrets.randbits(63)
    return dataclasses.replace(defaults, **changes)


def max_tokens_of(request, prompt_len: int, max_len: int, default: int) -> int:
    """max_tokens (or max_completion_tokens) checked against the KV cache: prompt + answer <= max_len."""
    room = max_len - prompt_len
    if room < 1:
        raise APIError(400, f"the prompt has {prompt_len} tokens but this server's context (--max-len) is "
                            f"{max_len} tokens, with at least one for the answer: shorten the prompt",
                       param="messages" if isinstance(request, ChatRequest) else "prompt",
                       code="context_length_exceeded")
    asked = getattr(request, "max_completion_tokens", None) or request.max_tokens
    if asked is None:
        return min(default, room)
    if asked > room:
        raise APIError(400, f"max_tokens={asked} is too large: the prompt has {prompt_len} tokens and this "
                            f"server's context (--max-len) is {max_len}, so at most {room} tokens can be "
                            "generated", param="max_tokens", code="context_length_exceeded")
    return asked
