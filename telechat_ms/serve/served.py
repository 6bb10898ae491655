"""What a server serves: the model, its family's tokenizer / chat template / stop strings, the generation
defaults — and how an OpenAI request becomes prompt ids.

Family data (telechat_ms/families): `tokenizer_kind`, `default_template` (used when the checkpoint has no
chat_template of its own), `stop_strings`. Chat answers stop at the template's + the family's + the request's
stop strings; raw completions at the family's + the request's.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from ..config.generation import GenerationConfig
from ..data.chat_template import ChatTemplate, TemplateError, render_text, resolve_template
from ..data.stops import stop_strings_for
from ..data.tokenizer_base import TOOL_TOKENS
from ..families import get as get_family
from .protocol import APIError, ChatRequest
from .tools import TOOL_OPEN


@dataclass
class ServedModel:
    name: str
    model: object
    tokenizer: object
    family: object
    directory: str
    defaults: GenerationConfig
    max_len: int

    templates: dict = dataclasses.field(default_factory=dict, repr=False)   # tools? -> ChatTemplate

    def template(self, tools: bool) -> ChatTemplate:
        """The checkpoint's chat template (its "tool_use" one for tools, if named), else the family default;
        read once."""
        if tools not in self.templates:
            self.templates[tools] = resolve_template(None, tokenizer_dir=self.directory,
                                                     default=self.family.default_template, tools=tools)
        return self.templates[tools]

    def chat_stops(self, template: ChatTemplate, extra: list[str]) -> list[str]:
        return stop_strings_for(template, self.family.stop_strings, self.defaults.stop_strings, extra)

    def completion_stops(self, extra: list[str]) -> list[str]:
        return stop_strings_for(None, self.family.stop_strings, self.defaults.stop_strings, extra)


def generation_defaults(directory: str, model_config) -> GenerationConfig:
    """generation_config.json of the model directory, else transformers' defaults with the model's eos."""
    path = os.path.join(directory, "generation_config.json")
    if os.path.isfile(path):
        return GenerationConfig.from_json(path)
    return GenerationConfig(eos_token_id=[model_config.eos_token_id])


def load_served(directory: str, name: str | None, max_len: int | None, device_target: str = "CPU",
                adapter: str | None = None):
    """Load model + tokenizer of a converted directory, float or GPTQ / AWQ quantized (quant.cells.load_model),
    with a PEFT LoRA `adapter` applied without merging (telechat_ms.lora); errors are ConfigError /
    ConvertError."""
    from ..data.tokenizer import load_tokenizer  # pylint: disable=import-outside-toplevel
    from ..infer.chat import check_tokenizer_fits  # pylint: disable=import-outside-toplevel
    from ..model import Kernels  # pylint: disable=import-outside-toplevel
    from ..quant.cells import load_model  # pylint: disable=import-outside-toplevel
    model = load_model(directory, Kernels.for_device(device_target))
    if adapter:
        from ..lora import load_adapter  # pylint: disable=import-outside-toplevel
        load_adapter(model, adapter)
    model.set_train(False)
    family = get_family(model.config.family)
    kind = None if family.tokenizer_kind == "auto" else family.tokenizer_kind
    tokenizer = load_tokenizer(directory, kind)
    check_tokenizer_fits(tokenizer, model.config)
    served_name = name or os.path.basename(os.path.normpath(directory))
    return ServedModel(served_name, model, tokenizer, family, directory,
                       generation_defaults(directory, model.config), max_len or model.config.seq_length)


# ---- chat requests -> messages -----------------------------------------------------------------------------
def _text_content(content, where: str) -> str | None:
    """OpenAI content: a string, None, or a list of {"type": "text", "text": ...} parts (joined)."""
    if content is None or isinstance(content, str):
        return content
    parts = []
    for i, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise APIError(400, f"{where}.content[{i}]: only text parts are supported, got type "
                                f"{part.get('type')!r}", param=f"{where}.content")
        parts.append(part["text"])
    return "".join(parts)


def _tool_calls(calls: list[dict], where: str) -> list[dict]:
    """Assistant tool_calls with their arguments as objects (the template serialises them with tojson)."""
    out = []
    for i, call in enumerate(calls):
        fn = call.get("function") if isinstance(call.get("function"), dict) else call
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise APIError(400, f"{where}.tool_calls[{i}].function.arguments is not valid JSON",
                               param=f"{where}.tool_calls") from None
        if not isinstance(fn.get("name"), str):
            raise APIError(400, f"{where}.tool_calls[{i}].function.name must be a string",
                           param=f"{where}.tool_calls")
        out.append({"type": "function", "function": {"name": fn["name"], "arguments": args}})
    return out


def chat_messages(request: ChatRequest) -> list[dict]:
    messages = []
    for i, msg in enumerate(request.messages):
        where = f"messages[{i}]"
        out = {"role": msg.role, "content": _text_content(msg.content, where)}
        if msg.tool_calls:
            out["tool_calls"] = _tool_calls(msg.tool_calls, where)
        if msg.role == "tool":
            out["tool_call_id"] = msg.tool_call_id
        if out["content"] is None and msg.role != "assistant":
            raise APIError(400, f"{where}.content is required for role {msg.role!r}", param=f"{where}.content")
        messages.append(out)
    return messages


def _functions(tools: list[dict]) -> list[str]:
    names = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type", "function") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise APIError(400, f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}",
                           param="tools")
        names.append(fn["name"])
    return names


def tool_setup(request: ChatRequest) -> tuple[list[dict] | None, str]:
    """(tools to render, forced answer prefix) from tools / tool_choice. "none" renders no tools; "required"
    starts the answer with `<tool_call>`; a named function renders only that tool and starts its call."""
    tools, choice = request.tools or None, request.tool_choice
    if tools is None:
        if choice not in (None, "none", "auto"):
            raise APIError(400, "tool_choice needs tools", param="tool_choice")
        return None, ""
    names = _functions(tools)
    if choice in (None, "auto"):
        return tools, ""
    if choice == "none":
        return None, ""
    if choice == "required":
        return tools, TOOL_OPEN + "\n"
    name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
    if name not in names:
        raise APIError(400, f"tool_choice names function {name!r}, which is not in tools ({', '.join(names)})",
                       param="tool_choice")
    picked = [t for t in tools if t["function"]["name"] == name]
    return picked, TOOL_OPEN + "\n" + '{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": '


def chat_prompt(served: ServedModel, request: ChatRequest) -> tuple[list[int], ChatTemplate, list[dict] | None, str]:
    """(prompt ids, template, rendered tools or None, forced prefix) of a chat request."""
    messages = chat_messages(request)
    tools, prefix = tool_setup(request)
    try:
        template = served.template(tools is not None)
        text = render_text(messages, template, tools, True, served.tokenizer)
        if tools is not None and text == render_text(messages, template, None, True, served.tokenizer):
            raise APIError(400, f"this model's chat template ({template.name}) does not render tools: "
                                "function calling needs a template that does (TeleChat2's)", param="tools")
        if getattr(served.tokenizer, "kind", None) == "telechat2" and not served.tokenizer.has_tool_tokens \
                and any(t in text + prefix for t in TOOL_TOKENS):
            raise APIError(400, "this conversation uses tool tokens but the model's vocab has none (115B "
                                "layout): function calling needs the 3B/7B/35B vocab", param="tools")
    except TemplateError as exc:
        raise APIError(400, str(exc), param="messages") from None
    return served.tokenizer.encode(text + prefix, add_special_tokens=False), template, tools, prefix


def completion_prompt(served: ServedModel, request) -> list[int]:
    prompt = request.prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        if len(prompt) != 1:
            raise APIError(400, "prompt: one prompt per request (n=1); send a list of prompts as separate "
                                "requests", param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise APIError(400, "prompt must not be empty", param="prompt")
        return served.tokenizer.encode(prompt, add_special_tokens=True)
    limit = min(served.model.config.vocab_size, served.tokenizer.vocab_size)
    if not prompt or any(not 0 <= t < limit for t in prompt):
        raise APIError(400, f"prompt: token ids must be in [0, {limit})", param="prompt")
    return list(prompt)

