"""Output directories that appear complete or not at all, and whose leftovers a later run cleans up.

Everything is written into `<parent>/.DST.partial-<pid>-<random>/DST` (the hidden staging directory also holds
an owner record, io/tempdirs.py), then every file is hashed into DST/checksums.sha256 and fsynced with its
directories, and DST is renamed into place (an atomic swap when replacing with `overwrite`, so the old output is
deleted only after the new one is in place). On an error, Ctrl-C or SIGTERM (what `timeout`, Slurm and
Kubernetes send) the staging directory is removed; SIGTERM then exits 143. kill -9 cannot be caught: the next
staged output into the same parent removes staging directories whose process is dead and says so on stderr.
An OS error while staging (full or read-only disk) is one ConvertError naming the path and the error.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import signal
import sys
import threading

from .errors import ConvertError
from .integrity import fsync_path, fsync_tree, record_checksums
from .tempdirs import make_owned_tempdir, remove_stale_tempdirs

# copied beside converted weights and into every training checkpoint, so each is a complete model directory:
# SentencePiece, tokenizer.json, and the GPT-2 BPE pair + added tokens of Aquila2-style checkpoints
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json",
                   "tokenizer.json", "chat_template.jinja", "vocab.json", "merges.txt", "added_tokens.json")
STAGING_TAG = ".partial-"
STALE_PATTERN = ".*" + STAGING_TAG + "*"
KILL_ENV = "TELECHAT_MS_TEST_KILL_AT"     # tests: SIGKILL this process at a named point (as train/checkpoint.py)


class OutputError(ConvertError, OSError):
    """An OS error (full or read-only disk, permissions) while staging: a ConvertError for the CLIs (one error
    line, exit 2) that is still an OSError (with its errno) for callers that handle those."""


class Terminated(SystemExit):
    """SIGTERM while staging: unwinds like Ctrl-C (the partial output is removed), then exits 128 + SIGTERM."""

    def __init__(self):
        super().__init__(128 + signal.SIGTERM)


def _kill_point(name: str) -> None:
    """Deterministic crash for the kill -9 / SIGTERM tests (KILL_ENV=<name> or <name>:TERM); read only here."""
    value = os.environ.get(KILL_ENV)
    if value in (name, name + ":TERM"):
        os.kill(os.getpid(), signal.SIGKILL if value == name else signal.SIGTERM)


def check_destination(dst: str, overwrite: bool, sources=()) -> None:
    """Refuse an existing `dst` without overwrite, and a `dst` that is (or contains) a source."""
    real = os.path.realpath(dst)
    for src in sources:
        src_real = os.path.realpath(src)
        if real == src_real or src_real.startswith(real + os.sep):
            raise ConvertError(f"{dst}: the output directory must not be the source or contain it ({src})")
    if os.path.lexists(dst) and not overwrite:
        raise ConvertError(f"{dst}: already exists (pass --overwrite to replace it)")


class _SignalGuard:
    """SIGTERM raises Terminated inside the block; block() defers SIGINT/SIGTERM (for the renames), and the
    deferred signals reach the previous handlers only after they are restored on exit."""

    def __init__(self):
        self.active = threading.current_thread() is threading.main_thread()
        self.previous, self.mask = None, None

    def __enter__(self):
        if self.active:
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise Terminated()

    def block(self) -> None:
        if self.active and self.mask is None and hasattr(signal, "pthread_sigmask"):
            self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})

    def __exit__(self, *exc):
        if self.active:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self.previous is None else self.previous)
            if self.mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)
        return False


@contextlib.contextmanager
def staged_output(dst: str, overwrite: bool, checksums: bool = True):
    """Yield a directory to fill; on success it becomes `dst` (with checksums.sha256 unless checksums=False),
    on failure, Ctrl-C or SIGTERM it is removed."""
    parent, base = os.path.split(os.path.abspath(dst))
    with _SignalGuard() as guard:
        try:
            os.makedirs(parent, exist_ok=True)
            remove_stale_tempdirs(parent, STALE_PATTERN)
            staging = make_owned_tempdir(parent, f".{base}{STAGING_TAG}")
        except OSError as exc:
            raise _os_error(dst, exc) from None
        out = os.path.join(staging, base)
        try:
            os.mkdir(out)
            _kill_point("staged-output-created")
            yield out
            if checksums:
                record_checksums(out)
            else:
                fsync_tree(out)
            _kill_point("staged-output-commit")
            guard.block()
            _commit(staging, out, dst, overwrite)
        except BaseException as exc:
            guard.block()                        # a second Ctrl-C must not interrupt the cleanup
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, (KeyboardInterrupt, Terminated)):
                how = "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C"
                print(f"interrupted ({how}): removed the partial output {staging}", file=sys.stderr)
            if isinstance(exc, OSError) and not isinstance(exc, ConvertError):
                raise _os_error(dst, exc) from None
            raise
        shutil.rmtree(staging, ignore_errors=True)     # the owner record, and the old output when replaced


def _os_error(dst: str, exc: OSError) -> OutputError:
    name = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else type(exc).__name__
    where = f" ({exc.filename})" if exc.filename else ""
    error = OutputError(f"{dst}: output not written: {exc.strerror or exc} [{name}]{where}; "
                        "no partial output was left")
    error.errno = exc.errno
    return error


_AT_FDCWD, _RENAME_NOREPLACE, _RENAME_EXCHANGE = -100, 1, 2
_LIBC: dict = {}


def _renameat2(src: str, dst: str, flags: int) -> bool:
    """Linux renameat2(2); False when libc, kernel or file system lack it (the caller falls back)."""
    if "fn" not in _LIBC:
        _LIBC["fn"] = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    fn = _LIBC["fn"]
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), dst)


def _commit(staging: str, out: str, dst: str, overwrite: bool) -> None:
    """Rename the finished `out` to `dst`; an existing dst is swapped out into the staging directory."""
    parent = os.path.dirname(os.path.abspath(dst))
    if not os.path.lexists(dst):
        try:
            if not _renameat2(out, dst, _RENAME_NOREPLACE):
                os.rename(out, dst)
            fsync_path(parent)
            return
        except FileExistsError:
            pass                                 # appeared while we were converting
    if not overwrite:
        raise ConvertError(f"{dst}: already exists (pass --overwrite to replace it)")
    if not _renameat2(out, dst, _RENAME_EXCHANGE):   # atomic swap: dst is always a whole output
        os.rename(dst, os.path.join(staging, ".old"))    # fallback: keep the old output until the new is in place
        os.rename(out, dst)
    fsync_path(parent)


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
