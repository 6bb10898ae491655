"""The one exception type of the converters: a ValueError with a single message naming file/key/expected/found."""
from __future__ import annotations


class ConvertError(ValueError):
    """A checkpoint, config or output path is unusable. The message says what, where, expected vs found."""


def summarize(items, limit: int = 20) -> str:
    """'a, b, c' with at most `limit` items shown and the rest counted (long key lists stay readable)."""
    items = list(items)
    shown = ", ".join(str(x) for x in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
