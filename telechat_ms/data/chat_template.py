"""Chat templates rendered with jinja2 exactly as transformers' `apply_chat_template` (4.57) renders them, and
SFT labels derived from the rendering for any template.

Rendering: an ImmutableSandboxedEnvironment with trim_blocks / lstrip_blocks, the loopcontrols extension and
the `{% generation %}` tag, HF's `tojson` filter (ensure_ascii=False), `raise_exception` and `strftime_now`;
variables `messages`, `tools`, `documents`, `add_generation_prompt`, the tokenizer's special tokens
(`bos_token`, `eos_token`, ...) and any extra keyword. Ids = tokenizer.encode(text, add_special_tokens=False),
which is what apply_chat_template(tokenize=True) does.

Labels (render_training, telechat_ms/data/loss_mask.py): a token is trained when its text overlaps an assistant
span. The spans come from the rendering itself, not from per-template rules: `{% generation %}` blocks when the
template has them (HF's assistant mask), otherwise, for each assistant message i, the text between the
rendering of messages[:i] with the generation prompt and the rendering of messages[:i+1], without trailing
whitespace. So the answer and its end marker (`<_end>`, `</s>`, `###`) are trained; the system prompt, the
questions, the role headers and the separators are not.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Sequence

from ..config.base import ConfigError
from .templates import (BUILTIN_TEMPLATES, DEFAULT_SYSTEM_PROMPT, STYLE_ALIASES, TOOLS_FOOTER,  # noqa: F401
                        TOOLS_HEADER)
from .loss_mask import ASSISTANT_ROLES, IGNORE_INDEX, label_conversation  # noqa: F401  (re-exported)
from .tokenizer_base import TOOL_TOKENS
from .tokenizer_files import read_settings

STYLES = tuple(STYLE_ALIASES)


class TemplateError(ConfigError):
    """A conversation cannot be rendered (bad role/field, template error, tools without tool tokens)."""


# ---- the jinja environment (transformers.utils.chat_template_utils._compile_jinja_template) ---------------
def _environment():
    # pylint: disable=import-outside-toplevel
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class AssistantTracker(Extension):
        """`{% generation %}...{% endgeneration %}`: records the character span of the block's output."""
        tags = {"generation"}

        def __init__(self, environment):
            super().__init__(environment)
            environment.extend(tracked=None)

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_generation", []), [], [], body).set_lineno(lineno)

        def _generation(self, caller):
            out = caller()
            blocks, spans = self.environment.tracked or (None, None)
            if blocks is not None:
                start = sum(len(b) for b in blocks)
                spans.append((start, start + len(out)))
            return out

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[AssistantTracker, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


@lru_cache(maxsize=64)
def _compile(source: str, name: str):
    import jinja2  # pylint: disable=import-outside-toplevel
    env = _environment()
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"chat template {name}: jinja syntax error at line {exc.lineno}: {exc.message}") from None


@dataclass(frozen=True)
class ChatTemplate:
    """A jinja chat template. `name`: built-in name, file path or `<checkpoint file>`; `roles`: the roles a
    built-in template accepts (checked before rendering; None = the template decides)."""

    name: str
    source: str
    stop_strings: tuple[str, ...] = ()
    roles: tuple[str, ...] | None = None

    @property
    def has_generation_blocks(self) -> bool:
        return "generation" in self.source and "endgeneration" in self.source

    def render(self, messages: Sequence[dict], tools: Sequence | None = None, add_generation_prompt: bool = False,
               special_tokens: dict | None = None, track: bool = False, **kwargs):
        """The text (and, with track=True, the `{% generation %}` spans) of one conversation."""
        import jinja2  # pylint: disable=import-outside-toplevel
        self.check(messages, tools)
        template = _compile(self.source, self.name)
        variables = {**(special_tokens or {}), **kwargs}
        variables.update(messages=list(messages), tools=list(tools) if tools is not None else None,
                         documents=variables.get("documents"), add_generation_prompt=add_generation_prompt)
        blocks: list[str] = []
        spans: list[tuple[int, int]] = []
        try:
            if not track:
                return template.render(**variables)
            template.environment.tracked = (blocks, spans)
            for block in template.generate(**variables):
                blocks.append(block)
            return "".join(blocks), spans
        except jinja2.TemplateError as exc:
            raise TemplateError(f"chat template {self.name}: {exc}") from None
        except (TypeError, ValueError, KeyError, AttributeError) as exc:   # e.g. '<_user>' + None
            raise TemplateError(f"chat template {self.name}: cannot render this conversation "
                                f"({type(exc).__name__}: {exc})") from None
        finally:
            template.environment.tracked = None

    def check(self, messages: Sequence[dict], tools: Sequence | None = None) -> None:
        """Structure (and, for built-ins, roles and content types); an empty list is allowed here because
        loss masks render prefixes of a conversation — the public render_* functions refuse it."""
        if not isinstance(messages, (list, tuple)):
            raise TemplateError("messages must be a non-empty list of {role, content} objects")
        if tools is not None and not isinstance(tools, (list, tuple)):
            raise TemplateError("tools must be a list of tool descriptions")
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                raise TemplateError(f"messages[{i}] must be an object, got {type(msg).__name__}")
            role = msg.get("role")
            if not isinstance(role, str) or (self.roles is not None and role not in self.roles):
                allowed = ", ".join(self.roles) if self.roles is not None else "a string"
                raise TemplateError(f"messages[{i}].role must be one of {allowed} (template {self.name}), "
                                    f"got {role!r}")
            if self.roles is not None:
                content = msg.get("content")
                if content is not None and not isinstance(content, str):
                    raise TemplateError(f"messages[{i}].content must be a string, got {type(content).__name__}")
                if role == "system" and i != 0:
                    raise TemplateError(f"messages[{i}]: a system message is only allowed first")


# ---- which template ---------------------------------------------------------------------------------------
def builtin_template(name: str) -> ChatTemplate:
    spec = BUILTIN_TEMPLATES.get(STYLE_ALIASES.get(name, name))
    if spec is None:
        raise TemplateError(f"unknown chat template {name!r} (built-in: {', '.join(BUILTIN_TEMPLATES)})")
    return ChatTemplate(spec.name, spec.source, spec.stop_strings, spec.roles)


def checkpoint_template(tokenizer_dir: str, tools: bool = False) -> ChatTemplate | None:
    """The checkpoint's own template (chat_template.jinja or tokenizer_config.json), None if it has none."""
    directory = tokenizer_dir if os.path.isdir(tokenizer_dir) else os.path.dirname(tokenizer_dir)
    settings = read_settings(directory)
    source = settings.chat_template
    if isinstance(source, dict):          # named templates: HF picks "tool_use" for tools, else "default"
        key = "tool_use" if tools and "tool_use" in source else "default"
        if key not in source:
            raise TemplateError(f"{settings.chat_template_source}: named chat templates {sorted(source)} have no "
                                "'default'; pass --chat-template NAME|FILE")
        source = source[key]
    if source is None:
        return None
    return ChatTemplate(f"<{settings.chat_template_source}>", source)


def resolve_template(name_or_file=None, tokenizer_dir: str | None = None, default: str | None = None,
                     tools: bool = False) -> ChatTemplate:
    """A ChatTemplate from: a ChatTemplate (returned as is); a built-in name (or style alias chat /
    mindformers); a path to a jinja file; or None -> the checkpoint's chat_template if `tokenizer_dir` has one,
    else `default` (the family's default template name or file)."""
    if isinstance(name_or_file, ChatTemplate):
        return name_or_file
    if name_or_file is None:
        found = checkpoint_template(tokenizer_dir, tools) if tokenizer_dir else None
        if found is not None:
            return found
        if default is None:
            raise TemplateError("no chat template: the checkpoint has none and no default was given "
                                "(pass --chat-template NAME|FILE)")
        return resolve_template(default)
    if not isinstance(name_or_file, str):
        raise TemplateError(f"chat template must be a name or a file, got {type(name_or_file).__name__}")
    if STYLE_ALIASES.get(name_or_file, name_or_file) in BUILTIN_TEMPLATES:
        return builtin_template(name_or_file)
    if os.path.isfile(name_or_file):
        try:
            with open(name_or_file, encoding="utf-8") as fh:
                source = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"{name_or_file}: cannot read chat template: {exc}") from None
        _compile(source, name_or_file)                      # syntax errors now, naming the file
        return ChatTemplate(name_or_file, source)
    raise TemplateError(f"chat template {name_or_file!r} is neither a built-in template "
                        f"({', '.join(BUILTIN_TEMPLATES)}) nor a file")


def _template_of(template, style, messages) -> ChatTemplate:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TemplateError("messages must be a non-empty list of {role, content} objects")
    if template is not None and style is not None:
        raise TemplateError("pass either template or style, not both")
    return resolve_template(template if template is not None else (style or "telechat2"))


# ---- text, ids, labels -----------------------------------------------------------------------------------
def render_text(messages: Sequence[dict], template=None, tools: Sequence | None = None,
                add_generation_prompt: bool = False, tokenizer=None, style: str | None = None, **kwargs) -> str:
    """The prompt string (HF apply_chat_template(tokenize=False)); template: ChatTemplate, built-in name or
    file (default telechat2); `tokenizer` supplies bos_token / eos_token."""
    specials = tokenizer.special_tokens_map if tokenizer is not None else None
    return _template_of(template, style, messages).render(messages, tools, add_generation_prompt, specials, **kwargs)


def _check_tool_tokens(tokenizer, text: str) -> None:
    """A TeleChat2 115B-layout vocab has no tool tokens: their strings would silently become plain text."""
    if getattr(tokenizer, "kind", None) == "telechat2" and not tokenizer.has_tool_tokens \
            and any(t in text for t in TOOL_TOKENS):
        raise TemplateError("this conversation uses tool tokens (<tool_call>/<tool_response>) but the tokenizer's "
                            "vocab has none (115B layout); render it without tools or use a 3B/7B tokenizer")


def render_ids(tokenizer, messages: Sequence[dict], template=None, tools: Sequence | None = None,
               add_generation_prompt: bool = False, style: str | None = None, **kwargs) -> list[int]:
    """Token ids of the rendered conversation (HF apply_chat_template(tokenize=True))."""
    text = render_text(messages, template, tools, add_generation_prompt, tokenizer, style, **kwargs)
    _check_tool_tokens(tokenizer, text)
    return tokenizer.encode(text, add_special_tokens=False)


def render_training(tokenizer, messages: Sequence[dict], template=None, tools: Sequence | None = None,
                    train_turn_tokens: bool = False, style: str | None = None,
                    **kwargs) -> tuple[list[int], list[int]]:
    """(input_ids, labels): labels = id on the tokens of assistant answers (and their end marker),
    IGNORE_INDEX elsewhere; derived from the rendering (telechat_ms/data/loss_mask.py). `train_turn_tokens`
    also trains the special token that opens each user/tool/assistant turn (TeleChat2: <_user>, <_bot> — the
    official DeepSpeed loss mask)."""
    chat = _template_of(template, style, messages)
    ids, labels, full = label_conversation(tokenizer, chat, messages, tools, train_turn_tokens, **kwargs)
    _check_tool_tokens(tokenizer, full)
    return ids, labels


def template_info() -> list[tuple[str, str]]:
    """(name, description) of every built-in template, for --help texts and docs."""
    return [(t.name, t.description) for t in BUILTIN_TEMPLATES.values()]

