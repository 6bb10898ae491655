"""Tokenizer, chat template and SFT data pipeline (docs/data.md). The tokenizer and template modules need
only sentencepiece; preprocess/dataset import MindSpore lazily, where they write or read MindRecord."""
from .chat_template import DEFAULT_SYSTEM_PROMPT, render_ids, render_pieces, render_text, render_training
from .tokenizer import TelechatTokenizer, TokenizerError

__all__ = ["DEFAULT_SYSTEM_PROMPT", "TelechatTokenizer", "TokenizerError", "render_ids", "render_pieces",
           "render_text", "render_training"]
