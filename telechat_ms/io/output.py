"""Output directories that appear complete or not at all.

Everything is written into a hidden temp directory beside the destination and renamed into place at the end;
on any error (or Ctrl-C) the temp directory is removed. An existing destination is refused unless
`overwrite`, and even then it is only deleted after the new directory is complete and renamed in.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

from .errors import ConvertError

TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json",
                   "tokenizer.json", "chat_template.jinja")


def check_destination(dst: str, overwrite: bool, sources=()) -> None:
    """Refuse an existing `dst` without overwrite, and a `dst` that is (or contains) a source."""
    real = os.path.realpath(dst)
    for src in sources:
        src_real = os.path.realpath(src)
        if real == src_real or src_real.startswith(real + os.sep):
            raise ConvertError(f"{dst}: the output directory must not be the source or contain it ({src})")
    if os.path.lexists(dst) and not overwrite:
        raise ConvertError(f"{dst}: already exists (pass --overwrite to replace it)")


@contextlib.contextmanager
def staged_output(dst: str, overwrite: bool):
    """Yield a temp directory beside `dst`; on success it becomes `dst`, on failure it is removed."""
    parent = os.path.dirname(os.path.abspath(dst))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(dst))}.partial-", dir=parent)
    try:
        yield staging
        _commit(staging, dst, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _commit(staging: str, dst: str, overwrite: bool) -> None:
    if not os.path.lexists(dst):
        os.rename(staging, dst)
        return
    if not overwrite:            # appeared while we were converting
        raise ConvertError(f"{dst}: already exists (pass --overwrite to replace it)")
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(dst))}.old-", dir=os.path.dirname(staging))
    os.rmdir(old)
    os.rename(dst, old)          # keep the old output until the new one is in place
    os.rename(staging, dst)
    if os.path.isdir(old) and not os.path.islink(old):
        shutil.rmtree(old)
    else:
        os.remove(old)


def copy_side_files(directories, out_dir: str, names=TOKENIZER_FILES) -> list[str]:
    """Copy tokenizer / generation files found in the first directory that has each one."""
    copied = []
    for name in names:
        for directory in directories:
            path = os.path.join(directory, name) if directory else ""
            if path and os.path.isfile(path):
                shutil.copy2(path, os.path.join(out_dir, name))
                copied.append(name)
                break
    return copied


def write_json(path: str, data) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
