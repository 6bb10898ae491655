"""Stop strings: where a generated answer ends besides the eos id (Aquila2's `###`, `[UNK]`, `</s>`, ...).

Stop strings are looked for in the generated text *with special tokens written out*, because several of them
are special tokens themselves (`</s>`, `[UNK]`, `<_end>`) that decode(skip_special_tokens=True) would
hide. The answer returned is the text before the first stop string, special tokens removed — FlagAI's
predict() does the same (decode, cut at `[UNK]` / `</s>`). Which strings apply is data: the built-in
template's `stop_strings` plus the family's (telechat_ms/families) plus the user's --stop.
"""
from __future__ import annotations

from typing import Iterable, Sequence


def stop_strings_for(template=None, *extra: Iterable[str]) -> list[str]:
    """The template's stop strings (a ChatTemplate or a built-in name) followed by `extra` lists, deduplicated
    in order; empty strings are dropped."""
    out: list[str] = []
    if template is not None:
        if isinstance(template, str):
            from .chat_template import resolve_template  # pylint: disable=import-outside-toplevel
            template = resolve_template(template)
        out += list(template.stop_strings)
    for strings in extra:
        out += list(strings or ())
    seen: set[str] = set()
    return [s for s in out if s and not (s in seen or seen.add(s))]


def find_stop(text: str, stop_strings: Sequence[str]) -> int:
    """Index of the earliest stop string in `text`, -1 if none."""
    hits = [i for i in (text.find(s) for s in stop_strings if s) if i >= 0]
    return min(hits) if hits else -1


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to (excluding) the first stop string."""
    cut = find_stop(text, stop_strings)
    return text if cut < 0 else text[:cut]


def _segments(tokenizer, ids: Sequence[int]) -> list[tuple[str, bool]]:
    """(text, is_special) runs: ordinary tokens decoded together, special tokens as their strings."""
    special = tokenizer.special_ids
    out: list[tuple[str, bool]] = []
    run: list[int] = []
    for tid in (int(t) for t in ids):
        if tid in special:
            if run:
                out.append((tokenizer.decode(run, skip_special_tokens=True), False))
                run = []
            out.append((tokenizer.id_to_token(tid), True))
        else:
            run.append(tid)
    if run:
        out.append((tokenizer.decode(run, skip_special_tokens=True), False))
    return out


def has_stop(tokenizer, ids: Sequence[int], stop_strings: Sequence[str]) -> bool:
    """Whether the generated ids already contain a stop string (for generation's stop check)."""
    if not stop_strings:
        return False
    return find_stop("".join(text for text, _ in _segments(tokenizer, ids)), stop_strings) >= 0


def answer_text(tokenizer, ids: Sequence[int], stop_strings: Sequence[str]) -> tuple[str, bool]:
    """(answer, stopped): the decoded answer cut before the first stop string, special tokens removed.
    Without a stop string it is exactly tokenizer.decode(ids, skip_special_tokens=True)."""
    if not stop_strings:
        return tokenizer.decode(ids, skip_special_tokens=True), False
    segments = _segments(tokenizer, ids)
    cut = find_stop("".join(text for text, _ in segments), stop_strings)
    if cut < 0:
        return tokenizer.decode(ids, skip_special_tokens=True), False
    out: list[str] = []
    pos = 0
    for text, special in segments:
        if pos >= cut:
            break
        if not special:
            out.append(text[:cut - pos])
        pos += len(text)
    return "".join(out), True
