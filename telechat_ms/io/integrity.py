"""Durability and integrity of written outputs: fsync, sha256 checksums, `telechat-ms verify`, finite checks.

Every staged output (io/output.py) gets a `checksums.sha256` file listing each file's sha256, in the format
of coreutils `sha256sum` (so `sha256sum -c checksums.sha256` works too). The hashes are taken from the files
as written, after they were fsynced, just before the directory is renamed into place; `verify_dir` re-hashes
them later to detect corruption (a bad disk, a truncated copy, an interrupted rsync).
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

from .errors import ConvertError, summarize

CHECKSUMS = "checksums.sha256"
_BLOCK = 2**20                      # read size for hashing: small next to the converters' chunk budget


def fsync_path(path: str) -> None:
    """fsync a file or a directory (a directory's fsync makes its entries - new names, renames - durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: str, fsync: bool = False) -> str:
    """sha256 of a file as stored; with fsync, the file is also fsynced (one open, one pass)."""
    digest, buf = hashlib.sha256(), bytearray(_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while got := fh.readinto(buf):
            digest.update(view[:got])
        if fsync:
            os.fsync(fh.fileno())
    return digest.hexdigest()


def _files(root: str) -> list[str]:
    """Relative paths ('/'-separated) of the regular files under root, sorted; symlinks are not followed."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full) and not os.path.islink(full):
                out.append(os.path.relpath(full, root).replace(os.sep, "/"))
    return sorted(out)


def fsync_tree(root: str) -> None:
    """fsync every file and directory under root (directories after their entries)."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            if not os.path.islink(os.path.join(dirpath, name)):
                fsync_path(os.path.join(dirpath, name))
        fsync_path(dirpath)


def record_checksums(out_dir: str, files=None) -> dict[str, str]:
    """Hash (and fsync) `files` (paths relative to out_dir; default every file under it) into
    out_dir/checksums.sha256, fsynced with its directory. Returns {relative path: sha256}."""
    names = sorted(_files(out_dir) if files is None else {f.replace(os.sep, "/") for f in files})
    names = [n for n in names if n != CHECKSUMS]
    sums = {name: _sha256(os.path.join(out_dir, name), fsync=True) for name in names}
    path = os.path.join(out_dir, CHECKSUMS)
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(f"{digest}  {name}\n" for name, digest in sums.items())
        fh.flush()
        os.fsync(fh.fileno())
    fsync_tree(out_dir)                       # directories (and anything not hashed)
    return sums


def read_checksums(out_dir: str) -> dict[str, str]:
    """{relative path: sha256} of out_dir/checksums.sha256; ConvertError when missing or malformed."""
    path = os.path.join(out_dir, CHECKSUMS)
    if not os.path.isdir(out_dir):
        raise ConvertError(f"{out_dir}: not a directory")
    if not os.path.isfile(path):
        raise ConvertError(f"{path}: file not found (directories written by telechat-ms convert since checksums "
                           "were added have one; nothing to verify)")
    sums = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            digest, sep, name = line.rstrip("\n").partition(" ")
            name = name[1:] if name[:1] in (" ", "*") else name          # sha256sum text / binary mode marker
            if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()) \
                    or not name or os.path.isabs(name) or ".." in name.split("/"):
                raise ConvertError(f"{path}: line {number} is not '<sha256>  <relative file name>': {line.strip()!r}")
            sums[name] = digest.lower()
    return sums


def verify_dir(out_dir: str) -> tuple[list[str], list[str], list[str]]:
    """Re-hash the files listed in out_dir/checksums.sha256: (mismatched, missing, not listed)."""
    sums = read_checksums(out_dir)
    mismatched, missing = [], []
    for name, digest in sums.items():
        path = os.path.join(out_dir, name)
        if not os.path.isfile(path):
            missing.append(name)
            continue
        try:
            actual = _sha256(path)
        except OSError as exc:                   # an I/O error of a bad disk is corruption too
            mismatched.append(f"{name} (unreadable: {exc.strerror or exc})")
            continue
        if actual != digest:
            mismatched.append(name)
    extra = [n for n in _files(out_dir) if n != CHECKSUMS and n not in sums]
    return mismatched, missing, extra


def check_finite(chunk: np.ndarray, dtype: str, key: str, where: str, offset: int = 0) -> None:
    """ConvertError naming `where` (file or source) and tensor `key` when the storage-dtype `chunk` (elements
    offset.. of the flattened tensor; bfloat16 as raw uint16 bits) holds NaN or Inf. Non-float dtypes pass."""
    if dtype == "bfloat16":
        bits = np.asarray(chunk).view(np.uint16)
        bad = (bits & 0x7F80) == 0x7F80            # exponent all ones: Inf or NaN
    elif dtype in ("float16", "float32", "float64"):
        data = np.asarray(chunk)
        if np.isfinite(data).all():                # fast path without keeping a mask
            return
        bad = ~np.isfinite(data)
    else:
        return
    if not bad.any():
        return
    flat = bad.reshape(-1)
    index = np.flatnonzero(flat)
    raise ConvertError(f"{where}: tensor '{key}' holds {index.size} non-finite values (NaN/Inf) among elements "
                       f"[{offset}, {offset + flat.size}), first at flat index {offset + int(index[0])}: the "
                       "checkpoint is corrupt or was saved from a diverged run")


def describe_problems(out_dir: str, mismatched: list[str], missing: list[str]) -> str:
    """One line naming the corrupt files of a verify."""
    parts = [f"checksum mismatch ({len(mismatched)}): {summarize(mismatched)}" if mismatched else "",
             f"missing ({len(missing)}): {summarize(missing)}" if missing else ""]
    return f"{out_dir}: " + "; ".join(p for p in parts if p)
