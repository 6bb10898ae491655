"""preprocess under crashes and bad disks (issue 14 items 5 and 8): a killed run's temp directory is removed
by the next run into the same output (never a live run's), SIGTERM and a full disk leave nothing behind."""
import errno
import json
import os
import signal

from telechat_ms.data import preprocess as pre
from telechat_ms.data.tiny_tokenizer import REPO_DATA

TINY = str(REPO_DATA / "tiny_tokenizer.model")
SAMPLE = str(REPO_DATA / "sample_sft.jsonl")
WRITER = next(v for v in vars(pre).values() if isinstance(v, type) and hasattr(v, "_drain"))   # the MindRecord output


def _argv(out):
    return ["--input", SAMPLE, "--output", str(out), "--tokenizer", TINY, "--seq-length", "256", "--no-progress"]


def _dead_pid() -> int:
    pid = 4_000_000
    while os.path.exists(f"/proc/{pid}"):
        pid += 1
    return pid


def test_a_killed_runs_temp_dir_is_removed_by_the_next_run(tmp_path, capsys):
    stale = tmp_path / f".out.mindrecord.tmp-{_dead_pid()}-abc"          # what kill -9 mid-write leaves
    stale.mkdir()
    (stale / ".owner.json").write_text(json.dumps({"host": os.uname().nodename, "pid": _dead_pid(),
                                                   "start": "1"}))
    (stale / "out.mindrecord").write_bytes(b"\0" * 1024)
    live = tmp_path / f".out.mindrecord.tmp-{os.getpid()}-xyz"            # a running writer's: untouched
    live.mkdir()
    (live / ".owner.json").write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid(),
                                                  "start": None}))
    assert pre.main(_argv(tmp_path / "out.mindrecord")) == 0
    assert not stale.exists() and live.exists()
    assert f"removed stale partial preprocess output {stale}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == \
        ["out.mindrecord", "out.mindrecord.db"]


def test_sigterm_cleans_up_like_ctrl_c(tmp_path, monkeypatch, capsys):
    original = WRITER.write

    def write_then_term(self, row):
        original(self, row)
        os.kill(os.getpid(), signal.SIGTERM)          # what timeout / Slurm / Kubernetes send
    monkeypatch.setattr(WRITER, "write", write_then_term)
    assert pre.main(_argv(tmp_path / "out.mindrecord")) == 130
    assert "interrupted: nothing was written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is not None


def test_full_disk_is_one_error_and_nothing_written(tmp_path, monkeypatch, capsys):
    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(WRITER, "_drain", full)
    assert pre.main(_argv(tmp_path / "out.mindrecord")) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "No space left on device" in err and "nothing was written" in err
    assert list(tmp_path.iterdir()) == []
