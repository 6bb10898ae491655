"""Chat on top of generate(): chat template (any built-in, checkpoint or file template), multi-turn history,
stop strings (the template's plus the generation config's), streaming text."""
from __future__ import annotations

import dataclasses
import json
from typing import Callable

from ..config.base import ConfigError
from ..config.generation import GenerationConfig
from ..data.chat_template import render_ids, resolve_template
from ..data.stops import answer_text, has_stop, stop_strings_for
from .generate import GenerationResult, generate


class InferenceError(ConfigError):
    """Bad inference input (prompt too long, tokenizer/model mismatch, ...): one clear message."""


def check_tokenizer_fits(tokenizer, model_config) -> None:
    """Every id the tokenizer can produce must index the model's embedding."""
    if tokenizer.vocab_size > model_config.vocab_size:
        raise InferenceError(f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} pieces but the model's "
                             f"vocab_size is {model_config.vocab_size}: wrong tokenizer for this checkpoint")
    for name in ("eos_token_id", "pad_token_id"):
        if getattr(model_config, name) >= tokenizer.vocab_size:
            raise InferenceError(f"model {name}={getattr(model_config, name)} is outside the tokenizer's "
                                 f"{tokenizer.vocab_size} pieces")


class ChatSession:
    """Keeps the conversation; `ask()` renders it with the chat template and generates the answer.

    `template`: a ChatTemplate, a built-in name or a jinja file (telechat_ms.data.resolve_template); `style`
    (chat / mindformers) is the older spelling of the two TeleChat2 templates and is used when template is None.
    A system message is added only when `system` is given (the TeleChat2 template adds its default itself).
    `tools` (OpenAI tool descriptions) are rendered by the template; the answer's `<tool_call>` blocks are then
    parsed (telechat_ms/serve/tools.py) into `last_tool_calls` and kept in the history as tool_calls.
    """

    def __init__(self, model, tokenizer, config: GenerationConfig, system: str | None = None,
                 style: str = "chat", max_length: int | None = None, template=None, tools: list | None = None):
        check_tokenizer_fits(tokenizer, model.config)
        self.model, self.tokenizer, self.config, self.tools = model, tokenizer, config, tools
        self.template = resolve_template(template if template is not None else style)
        self.stop_strings = stop_strings_for(self.template, config.stop_strings)
        self.max_length = max_length or model.config.seq_length
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.last_tool_calls: list = []
        self.last_tool_error: str | None = None

    def prompt_ids(self, question: str, role: str = "user") -> list[int]:
        messages = self.messages + [{"role": role, "content": question}]
        return render_ids(self.tokenizer, messages, self.template, self.tools, add_generation_prompt=True)

    def ask(self, question: str, on_text: Callable[[str], None] | None = None,
            role: str = "user") -> tuple[str, GenerationResult]:
        """Answer a user message (or, role="tool", a tool result); with tools the answer is the text outside
        the tool-call blocks (stream it only without tools: the blocks would be streamed as text)."""
        ids = self.prompt_ids(question, role)
        answer, result = complete(self.model, self.tokenizer, [ids], self.config, self.max_length, on_text,
                                  stop_strings=self.stop_strings)
        reply = {"role": "assistant", "content": answer[0]}
        if self.tools:
            from ..serve.tools import generated_text, parse_tool_calls  # pylint: disable=import-outside-toplevel
            content, self.last_tool_calls, self.last_tool_error = parse_tool_calls(
                generated_text(self.tokenizer, result.tokens[0], self.stop_strings)[0])
            reply = {"role": "assistant", "content": content, "tool_calls": [
                {"type": "function", "function": {"name": c.name, "arguments": json.loads(c.arguments)}}
                for c in self.last_tool_calls]}
        self.messages += [{"role": role, "content": question}, reply]
        return reply["content"], result


def complete(model, tokenizer, prompts: list[list[int]], config: GenerationConfig, max_length: int,
             on_text: Callable[[str], None] | None = None,
             stop_strings: list[str] | None = None) -> tuple[list[str], GenerationResult]:
    """Generate for id prompts; returns decoded answers (cut at stop strings, telechat_ms.data.stops) and the
    raw result. `stop_strings` defaults to config.stop_strings."""
    stops = list(config.stop_strings if stop_strings is None else stop_strings)
    longest = max(len(p) for p in prompts)
    if longest >= max_length:
        raise InferenceError(f"prompt of {longest} tokens does not fit max_length={max_length} "
                             f"(the KV cache size); shorten the history or raise --max-length")
    config = dataclasses.replace(config, max_new_tokens=min(config.max_new_tokens, max_length - longest))
    streamed: list[int] = []            # tokens of the first conversation, streamed as whole characters
    printed = ""

    def on_token(row: int, token: int) -> None:
        nonlocal printed
        if on_text is None or row != 0:
            return
        streamed.append(token)
        text = answer_text(tokenizer, streamed, stops)[0]
        if text.startswith(printed) and not text.endswith("\ufffd"):       # wait for complete characters
            on_text(text[len(printed):])
            printed = text

    def stop_check(row: int, tokens: list[int]) -> bool:
        return has_stop(tokenizer, tokens, stops)

    result = generate(model, prompts, config, max_len=max_length, on_token=on_token,
                      stop_check=stop_check if stops else None)
    answers = [answer_text(tokenizer, t, stops)[0] for t in result.tokens]
    if on_text is not None and len(answers[0]) > len(printed) and answers[0].startswith(printed):
        on_text(answers[0][len(printed):])
    return answers, result
