"""Tokenizers, chat templates and the SFT data pipeline (docs/data.md). The tokenizer and template modules need
only sentencepiece / tokenizers / jinja2; preprocess/dataset import MindSpore lazily, where they write or read
MindRecord."""
from .chat_template import (DEFAULT_SYSTEM_PROMPT, ChatTemplate, TemplateError, render_ids, render_text,
                            render_training, resolve_template)
from .stops import answer_text, cut_at_stop, find_stop, has_stop, stop_strings_for
from .tokenizer import TelechatTokenizer, TokenizerError, detect_kind, load_tokenizer

__all__ = ["DEFAULT_SYSTEM_PROMPT", "ChatTemplate", "TelechatTokenizer", "TemplateError", "TokenizerError",
           "answer_text", "cut_at_stop", "detect_kind", "find_stop", "has_stop", "load_tokenizer", "render_ids",
           "render_text", "render_training", "resolve_template", "stop_strings_for"]
