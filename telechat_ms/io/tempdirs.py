"""Hidden temporary directories that a later run can clean up after a kill -9.

A tool that stages its output in a temp directory beside the destination (converters: `.DST.partial-*`,
preprocess: `.X.mindrecord.tmp-*`) loses it to kill -9 / SIGKILL / power loss: nothing in the dying process
runs. So the directory records its owner when it is created: the name holds the pid (for people), and an
owner file inside holds host, pid and the process start time (for programs: a recycled pid, common in
containers where every run has the same small pid, must not keep a dead run's directory alive forever).

A later run into the same parent calls `remove_stale_tempdirs`: directories whose owner is a dead process of
this host are removed (and said so on stderr); a live process's directory is never touched; directories it
cannot judge (owned on another host of a shared file system, or without an owner file: written by an older
version, or a run killed in the instant between creating the directory and writing the file) are only
reported.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import sys
import tempfile

OWNER_FILE = ".owner.json"


def _start_time(pid: int) -> str | None:
    """Start time of `pid` in clock ticks since boot (/proc/PID/stat field 22); None without /proc or process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: fields 3.. start after the last ')'
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def owner_record() -> dict:
    """Who this process is, as stored in OWNER_FILE."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def make_owned_tempdir(parent: str, prefix: str) -> str:
    """mkdtemp in `parent` named `<prefix><pid>-<random>`, with OWNER_FILE inside. The caller writes its files
    next to OWNER_FILE (or in a subdirectory) and moves them out when done, then removes the directory."""
    os.makedirs(parent, exist_ok=True)
    path = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent)
    try:
        with open(os.path.join(path, OWNER_FILE), "w", encoding="utf-8") as fh:
            json.dump(owner_record(), fh)
    except BaseException:                   # e.g. a full disk: leave nothing unowned behind
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def read_owner(path: str) -> dict | None:
    """The owner record of a temp directory, or None when it has none (or it is unreadable)."""
    try:
        with open(os.path.join(path, OWNER_FILE), encoding="utf-8") as fh:
            owner = json.load(fh)
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def owner_alive(owner: dict) -> bool | None:
    """True/False whether the owning process still runs; None when it cannot be known (another host)."""
    if owner.get("host") != socket.gethostname():
        return None
    pid = owner["pid"]
    if os.path.isdir("/proc/self"):
        if not os.path.exists(f"/proc/{pid}"):
            return False
        recorded, now = owner.get("start"), _start_time(pid)
        return recorded is None or now is None or recorded == now     # another start time: the pid was reused
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # exists, owned by another user
        return True
    return True


def remove_stale_tempdirs(parent: str, pattern: str, what: str = "partial output", stream=None) -> list[str]:
    """Remove the directories in `parent` matching the glob `pattern` (e.g. ".*.partial-*") whose owner
    process on this host is dead; say so on `stream` (stderr) for each, and report the ones that cannot be
    judged. Never touches a live process's directory. Returns the removed paths."""
    stream = sys.stderr if stream is None else stream
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(parent), pattern))):
        if os.path.islink(path) or not os.path.isdir(path):
            continue
        owner = read_owner(path)
        if owner is None:
            print(f"note: {path}: {what} of an earlier run with no owner record (an older version, or a run "
                  "killed as it started): not removed; delete it if no run is writing to it", file=stream)
            continue
        alive = owner_alive(owner)
        if alive is None:
            print(f"note: {path}: {what} of pid {owner['pid']} on host {owner.get('host')} (not this machine): "
                  "not removed; delete it if that run is gone", file=stream)
        elif not alive:
            shutil.rmtree(path, ignore_errors=True)
            if not os.path.lexists(path):
                print(f"removed stale {what} {path} from a killed run (pid {owner['pid']})", file=stream)
                removed.append(path)
            else:
                print(f"note: {path}: stale {what} from a killed run (pid {owner['pid']}) could not be "
                      "removed; delete it by hand", file=stream)
    return removed
