"""Built-in chat templates (jinja, rendered like transformers' apply_chat_template), one per published format.

Each template renders `messages` ([{role, content}], roles system/user/assistant; `bot` is accepted as
assistant by the TeleChat ones), `add_generation_prompt`, `tools` and the tokenizer's `bos_token` /
`eos_token`. They are used when a checkpoint's tokenizer_config.json carries no `chat_template`.
Sources (docs/data.md, spec families.md / telechat2.md):
  telechat2              TeleChat2 3B/7B/35B tokenizer template (spec telechat2.md §6.2(a)), tools included
  telechat2-mindformers  MindFormers SFT layout: <_start> + <_user>q<_bot>a<_end> per turn (spec §7.1)
  telechat1              TeleChat v1 7B/12B build_inputs_for_chat: <_user>q<_bot>a<_end> (families §1)
  telechat52b            TeleChat-52B / FLM text tags: <_user>q<_bot>a<_end>, the last answer ends with </s>
                         (families §2: chat() history uses <_end>, SFT ends the final answer with </s>)
  aquila-chat / aquila / aquila-legacy / aquila-v1 / aquila-v2
                         FlagAI conversation.py (FastChat separator styles); the generation prompt ends with
                         one extra space, as FlagAI's predict() appends it before encoding (families §4)
  firefly                <s>user</s>assistant</s>... (Firefly SFTDataset, families §5)
  llama2                 Meta's Llama-2 chat format: <s>[INST] <<SYS>>\\nS\\n<</SYS>>\\n\\nq [/INST] a </s>
"""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SYSTEM_PROMPT = ("你是中国电信星辰语义大模型，英文名是TeleChat，你是由中电信人工智能科技有限公司和"
                         "中国电信人工智能研究院（TeleAI）研发的人工智能助手。")
TOOLS_HEADER = ("\n\n# 可用工具\n你可以调用<tools></tools>标签中包含的一个或多个工具来辅助你回答问题,"
                "以下是可用工具详情：\n<tools>\n")
TOOLS_FOOTER = ("</tools>\n\n# 调用方法\n你需要遵循工具的要求，使用json格式返回工具名称及参数，并用"
                "<tool_call></tool_call>包含。下方是一个调用模板：\n<tool_call>\n"
                "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>\n\n")
AQUILA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")


def jinja_str(text: str) -> str:
    """`text` as a single-quoted jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


@dataclass(frozen=True)
class BuiltinTemplate:
    name: str
    source: str                                   # the jinja template
    description: str
    stop_strings: tuple[str, ...] = ()            # strings that end an answer besides the eos id
    roles: tuple[str, ...] = ("system", "user", "assistant")


_TELECHAT2 = (
    "{%- if messages and messages[0]['role'] == 'system' -%}{%- set system = messages[0]['content'] or '' -%}"
    "{%- else -%}{%- set system = " + jinja_str(DEFAULT_SYSTEM_PROMPT) + " -%}{%- endif -%}"
    "{%- if tools -%}{{- '<_system>' + system + " + jinja_str(TOOLS_HEADER) + " -}}"
    "{%- for tool in tools -%}{{- (tool | tojson) + '\\n' -}}{%- endfor -%}"
    "{{- " + jinja_str(TOOLS_FOOTER) + " -}}"
    "{%- else -%}{{- '<_system>' + system + '\\n' -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- '<_user>' + message['content'] -}}"
    "{%- elif message['role'] in ('assistant', 'bot') -%}{{- '<_bot>' + (message['content'] or '') -}}"
    "{%- for call in message['tool_calls'] or [] -%}"
    "{%- set fn = call['function'] if call['function'] is defined else call -%}"
    "{{- ('' if loop.first else '\\n') + '<tool_call>\\n{\"name\": \"' + fn['name'] + '\", \"arguments\": '"
    " + (fn['arguments'] | tojson) + '}\\n</tool_call>' -}}"
    "{%- endfor -%}{{- '<_end>\\n' -}}"
    "{%- elif message['role'] == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}{{- '<_user><tool_response>\\n' -}}"
    "{%- else -%}{{- '\\n<tool_response>\\n' -}}{%- endif -%}"
    "{{- message['content'] + '\\n</tool_response>' -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<_bot>' -}}{%- endif -%}")

_TELECHAT2_MINDFORMERS = (
    "{%- if tools -%}{{- raise_exception('tools are not supported by the mindformers style; use the chat "
    "style') -}}{%- endif -%}{{- '<_start>' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- '<_user>' + message['content'] -}}"
    "{%- elif message['role'] in ('assistant', 'bot') -%}{{- '<_bot>' + message['content'] + '<_end>' -}}"
    "{%- else -%}{{- raise_exception('messages[' ~ loop.index0 ~ ']: role ' ~ message['role'] ~ ' is not "
    "supported by the mindformers style (user/assistant turns only; use the chat style)') -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<_bot>' -}}{%- endif -%}")

# TeleChat v1 and TeleChat-52B: a system message is plain text in front (their vLLM jinja trims it)
_TELECHAT_TAGS = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- message['content'] | trim -}}"
    "{%- elif message['role'] == 'user' -%}{{- '<_user>' + message['content'] -}}"
    "{%- elif message['role'] in ('assistant', 'bot') -%}{{- '<_bot>' + message['content'] + END -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<_bot>' -}}{%- endif -%}")
_TELECHAT1 = _TELECHAT_TAGS.replace("END", "'<_end>'")
_TELECHAT52B = _TELECHAT_TAGS.replace("END", "('</s>' if loop.last else '<_end>')")


def _fastchat(system: str, system_sep: str, user: str, user_sep: str, bot: str, bot_sep: str, prompt: str) -> str:
    """FlagAI/FastChat Conversation.get_prompt as jinja: system + sep, Σ role + message + sep, then the open
    role. A system message replaces the default system text."""
    return (
        "{%- if messages and messages[0]['role'] == 'system' -%}{{- messages[0]['content'] -}}"
        "{%- else -%}{{- " + jinja_str(system) + " -}}{%- endif -%}{{- " + jinja_str(system_sep) + " -}}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}{{- " + jinja_str(user) + " + message['content'] + "
        + jinja_str(user_sep) + " -}}"
        "{%- elif message['role'] in ('assistant', 'bot') -%}{{- " + jinja_str(bot) + " + message['content'] + "
        + jinja_str(bot_sep) + " -}}"
        "{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- " + jinja_str(prompt) + " -}}{%- endif -%}")


_FIREFLY = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- raise_exception('the firefly template has no system prompt') -}}"
    "{%- else -%}{{- message['content'] + eos_token -}}{%- endif -%}"
    "{%- endfor -%}")

_LLAMA2 = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = none -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}{%- endif -%}"
    "{%- set content = message['content'] -%}"
    "{%- if loop.first and system is not none -%}"
    "{%- set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + content -%}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{- bos_token + '[INST] ' + (content | trim) + ' [/INST]' -}}"
    "{%- else -%}{{- ' ' + (content | trim) + ' ' + eos_token -}}{%- endif -%}"
    "{%- endfor -%}")

_AQUILA_STOPS = ("</s>", "[UNK]")   # FlagAI predict() cuts every answer at these


def _builtins() -> dict[str, BuiltinTemplate]:
    legacy_system = AQUILA_SYSTEM + "\n\n"
    items = [
        BuiltinTemplate("telechat2", _TELECHAT2, "TeleChat2 official chat template (system block, tools)",
                        roles=("system", "user", "assistant", "bot", "tool")),
        BuiltinTemplate("telechat2-mindformers", _TELECHAT2_MINDFORMERS,
                        "MindFormers SFT layout <_start><_user>q<_bot>a<_end>",
                        roles=("system", "user", "assistant", "bot", "tool")),
        BuiltinTemplate("telechat1", _TELECHAT1, "TeleChat v1 <_user>q<_bot>a<_end>", ("<_end>",),
                        roles=("system", "user", "assistant", "bot")),
        BuiltinTemplate("telechat52b", _TELECHAT52B, "TeleChat-52B / FLM text tags, last answer ends with </s>",
                        ("</s>", "<_end>"), roles=("system", "user", "assistant", "bot")),
        BuiltinTemplate("aquila-chat", _fastchat(AQUILA_SYSTEM, "###", "Human: ", "###", "Assistant: ", "###",
                                                 "Assistant: "),
                        "Aquila default (FastChat ADD_COLON_SINGLE, sep ###)", ("###",) + _AQUILA_STOPS),
        BuiltinTemplate("aquila", _fastchat(AQUILA_SYSTEM, "###", "Human: ", "###", "Assistant: ", "</s>",
                                            "Assistant: "),
                        "AquilaChat2 16K (FastChat ADD_COLON_TWO, seps ### and </s>)", _AQUILA_STOPS),
        BuiltinTemplate("aquila-legacy", _fastchat(legacy_system, "", "### Human: ", "\n", "### Assistant: ", "</s>",
                                                   "### Assistant:  "),
                        "AquilaChat2-34B (FastChat NO_COLON_TWO, ### Human: / ### Assistant: )", _AQUILA_STOPS),
        BuiltinTemplate("aquila-v1", _fastchat("", "", "<|startofpiece|>", "", "<|endofpiece|>", "</s>",
                                               "<|endofpiece|> "),
                        "AquilaChat2-7B <|startofpiece|>q<|endofpiece|>a</s>", ("<|endoftext|>",) + _AQUILA_STOPS),
        # spec: "same system + <|startofpiece|>{q}<|endofpiece|>"; separators as aquila-v1 (inferred)
        BuiltinTemplate("aquila-v2", _fastchat(legacy_system, "", "<|startofpiece|>", "", "<|endofpiece|>", "</s>",
                                               "<|endofpiece|> "),
                        "AquilaChat2-70B-Expr: system text + aquila-v1 turns", ("<|endoftext|>",) + _AQUILA_STOPS),
        BuiltinTemplate("firefly", _FIREFLY, "Firefly-LLaMA2 <s>user</s>assistant</s>", ("</s>",)),
        BuiltinTemplate("llama2", _LLAMA2, "Llama-2 chat [INST] format", ("</s>",)),
    ]
    return {t.name: t for t in items}


BUILTIN_TEMPLATES = _builtins()
# the preprocess / chat --template styles of earlier versions
STYLE_ALIASES = {"chat": "telechat2", "mindformers": "telechat2-mindformers"}
