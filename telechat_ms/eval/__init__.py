"""Evaluation (docs/evaluation.md): perplexity (`telechat-ms eval --data`), batched token scoring, and the
lm-evaluation-harness model `telechat_ms` (telechat_ms/eval/harness.py, optional extra `.[eval]`).
MindSpore is imported lazily (scoring runs a compiled cell); lm_eval only by harness.py."""
from .perplexity import PerplexityReport, Window, perplexity, read_documents, sliding_windows
from .scoring import Scored, TokenScorer

__all__ = ["PerplexityReport", "Scored", "TokenScorer", "Window", "perplexity", "read_documents",
           "sliding_windows"]
