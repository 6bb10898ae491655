"""Checkpoint I/O under crashes and bad disks (issue 14, items 5, 7, 8): kill -9 / SIGTERM leftovers are cleaned
by the next run, outputs are fsynced and checksummed (`telechat-ms verify`), a full or read-only disk is one
ConvertError, a truncated shard is one error at load time, and non-finite tensors are named."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from telechat_ms import cli
from telechat_ms.io import integrity, output, tempdirs
from telechat_ms.io.errors import ConvertError
from telechat_ms.io.integrity import CHECKSUMS, check_finite, record_checksums, verify_dir
from telechat_ms.io.output import KILL_ENV, staged_output
from telechat_ms.io.tempdirs import OWNER_FILE, make_owned_tempdir, remove_stale_tempdirs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a converter in miniature: stage two files (one in a subdirectory) into argv[1]; argv[2] == "term" sends
# itself SIGTERM half-way, as `timeout` / Slurm / Kubernetes would
STAGE_SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from telechat_ms.io.output import staged_output
    with staged_output(sys.argv[1], overwrite=False) as out:
        with open(os.path.join(out, "model.safetensors"), "wb") as fh:
            fh.write(b"x" * 4096)
        if sys.argv[2:] == ["term"]:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        os.mkdir(os.path.join(out, "sub"))
        with open(os.path.join(out, "sub", "b.json"), "w") as fh:
            fh.write("{}")
""")


def _stage_in_subprocess(dst, *args, env=None):
    return subprocess.run([sys.executable, "-c", STAGE_SCRIPT, str(dst), *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=60)


def _stage(dst, overwrite=False, **kwargs):
    with staged_output(str(dst), overwrite, **kwargs) as out:
        with open(os.path.join(out, "model.safetensors"), "wb") as fh:
            fh.write(b"new")
    return dst


# ----------------------------------------------------------------------------- item 8: stale staging dirs
@pytest.mark.parametrize("point", ["staged-output-created", "staged-output-commit"])
def test_kill9_leftover_is_removed_by_the_next_run_and_reported(tmp_path, capsys, point):
    run = _stage_in_subprocess(tmp_path / "ms", env={KILL_ENV: point})
    assert run.returncode == -signal.SIGKILL, run.stderr
    left = os.listdir(tmp_path)
    assert len(left) == 1 and left[0].startswith(".ms.partial-"), left     # what kill -9 leaves
    staging = tmp_path / left[0]
    with open(staging / OWNER_FILE, encoding="utf-8") as fh:
        pid = json.load(fh)["pid"]
    assert left[0].startswith(f".ms.partial-{pid}-")                        # the owner is visible in the name

    _stage(tmp_path / "other")                                              # a later run into the same parent
    err = capsys.readouterr().err
    assert f"removed stale partial output {staging} from a killed run (pid {pid})" in err
    assert sorted(os.listdir(tmp_path)) == ["other"]
    assert sorted(os.listdir(tmp_path / "other")) == sorted([CHECKSUMS, "model.safetensors"])


def test_a_live_process_staging_dir_is_never_touched(tmp_path, capsys):
    live = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from telechat_ms.io.tempdirs import make_owned_tempdir
        print(make_owned_tempdir(sys.argv[1], ".ms.partial-"), flush=True)
        time.sleep(60)
    """), str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        theirs = live.stdout.readline().strip()
        mine = make_owned_tempdir(str(tmp_path), ".x.partial-")            # this (live) process's own
        _stage(tmp_path / "out")
        assert os.path.isdir(theirs) and os.path.isdir(mine)
        assert "removed" not in capsys.readouterr().err
    finally:
        live.kill()
        live.wait()
    _stage(tmp_path / "out2")                                               # now its owner is dead
    assert not os.path.exists(theirs) and os.path.isdir(mine)
    assert f"from a killed run (pid {live.pid})" in capsys.readouterr().err


def test_recycled_pid_other_host_and_unowned_dirs(tmp_path, monkeypatch):
    parent = str(tmp_path)
    recycled = make_owned_tempdir(parent, ".a.partial-")                   # our pid, another start time:
    with open(os.path.join(recycled, OWNER_FILE), "w", encoding="utf-8") as fh:   # a container restart
        json.dump({**tempdirs.owner_record(), "start": "1"}, fh)
    remote = make_owned_tempdir(parent, ".b.partial-")
    with open(os.path.join(remote, OWNER_FILE), "w", encoding="utf-8") as fh:
        json.dump({**tempdirs.owner_record(), "host": "another-node"}, fh)
    legacy = tmp_path / ".c.partial-abc123"                                 # written by an older version
    legacy.mkdir()
    messages = []
    stream = type("S", (), {"write": lambda self, s: messages.append(s), "flush": lambda self: None})()
    assert remove_stale_tempdirs(parent, ".*.partial-*", stream=stream) == [recycled]
    text = "".join(messages)
    assert os.path.isdir(remote) and legacy.is_dir()
    assert f"{remote}: partial output of pid {os.getpid()} on host another-node" in text
    assert f"{legacy}: partial output of an earlier run with no owner record" in text


def test_sigterm_removes_the_partial_output_and_exits_nonzero(tmp_path):
    run = _stage_in_subprocess(tmp_path / "ms", "term")
    assert run.returncode == 128 + signal.SIGTERM, (run.returncode, run.stderr)
    assert "interrupted (SIGTERM): removed the partial output" in run.stderr
    assert "Traceback" not in run.stderr
    assert os.listdir(tmp_path) == []


def test_ctrl_c_removes_the_partial_output(tmp_path, capsys):
    with pytest.raises(KeyboardInterrupt):
        with staged_output(str(tmp_path / "ms"), False) as out:
            open(os.path.join(out, "a"), "wb").close()
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
    assert "interrupted (Ctrl-C)" in capsys.readouterr().err


def test_sigterm_handler_is_restored(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    _stage(tmp_path / "ms")
    assert signal.getsignal(signal.SIGTERM) is before


def test_every_file_and_directory_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_commit = os.fsync, output._commit

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def commit(staging, out, dst, overwrite):
        events.append(("commit", out))
        return real_commit(staging, out, dst, overwrite)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(output, "_commit", commit)
    with staged_output(str(tmp_path / "ms"), False) as out:
        os.mkdir(os.path.join(out, "sub"))
        for name in ("a.safetensors", "sub/b.json"):
            with open(os.path.join(out, name), "w", encoding="utf-8") as fh:
                fh.write(name)
    at = events.index(("commit", out))
    before = {path for kind, path in events[:at] if kind == "fsync"}
    wanted = {os.path.join(out, n) for n in ("a.safetensors", "sub/b.json", CHECKSUMS, "sub")} | {out}
    assert wanted <= before, wanted - before
    assert ("fsync", str(tmp_path)) in events[at:]                          # the rename itself is durable


def test_overwrite_swaps_in_the_new_output(tmp_path):
    (tmp_path / "ms").mkdir()
    (tmp_path / "ms" / "old.bin").write_bytes(b"old")
    _stage(tmp_path / "ms", overwrite=True)
    assert sorted(os.listdir(tmp_path / "ms")) == sorted([CHECKSUMS, "model.safetensors"])
    assert os.listdir(tmp_path) == ["ms"]                                   # the old output is gone too
    with pytest.raises(ConvertError, match="already exists"):
        _stage(tmp_path / "ms", overwrite=False)


def test_output_gets_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    _stage(tmp_path / "ms")                                                 # mkdtemp's 0700 stays on staging
    assert os.stat(tmp_path / "ms").st_mode & 0o777 == 0o777 & ~umask


# ----------------------------------------------------------------------------- item 5: full / read-only disk
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_disk_error_while_writing_is_one_convert_error(tmp_path, code):
    with pytest.raises(ConvertError) as info:
        with staged_output(str(tmp_path / "ms"), False) as out:
            open(os.path.join(out, "model-00001-of-00002.safetensors"), "wb").close()
            raise OSError(code, os.strerror(code))                         # what a write() on a full disk raises
    msg = str(info.value)
    assert isinstance(info.value, OSError) and info.value.errno == code   # still an OSError for callers
    assert msg.startswith(f"{tmp_path / 'ms'}: output not written: {os.strerror(code)} "
                          f"[{errno.errorcode[code]}]"), msg
    assert os.listdir(tmp_path) == []


def test_read_only_parent_is_one_convert_error(tmp_path, monkeypatch):
    def refuse(prefix, dir):   # pylint: disable=redefined-builtin
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.path.join(dir, prefix + "x"))
    monkeypatch.setattr(tempdirs.tempfile, "mkdtemp", refuse)
    with pytest.raises(ConvertError, match=r"output not written: Read-only file system \[EROFS\] \("):
        _stage(tmp_path / "ms")


def test_uncreatable_parent_names_the_path(tmp_path):
    with pytest.raises(ConvertError, match=r"/proc/telechat-no-such/ms: output not written: .*\[ENOENT\]"):
        _stage("/proc/telechat-no-such/ms")


def test_checksum_write_failure_is_one_convert_error(tmp_path, monkeypatch):
    def full(out_dir, files=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(out_dir, CHECKSUMS))
    monkeypatch.setattr(output, "record_checksums", full)
    with pytest.raises(ConvertError, match=r"No space left on device \[ENOSPC\] \(.*checksums.sha256\)"):
        _stage(tmp_path / "ms")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- item 7: checksums and verify
def _verify(path, capsys):
    code = cli.main(["verify", str(path)])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_checksums_are_recorded_and_verified(tmp_path, capsys):
    dst = tmp_path / "ms"
    with staged_output(str(dst), False) as out:
        os.mkdir(os.path.join(out, "sub"))
        for name, data in (("model-00001-of-00001.safetensors", b"w" * 1000), ("sub/t.json", b"{}")):
            with open(os.path.join(out, name), "wb") as fh:
                fh.write(data)
    lines = (dst / CHECKSUMS).read_text().splitlines()
    assert lines == [f"{hashlib.sha256(b'w' * 1000).hexdigest()}  model-00001-of-00001.safetensors",
                     f"{hashlib.sha256(b'{}').hexdigest()}  sub/t.json"]
    if shutil.which("sha256sum"):                                            # the coreutils format
        subprocess.run(["sha256sum", "--quiet", "-c", CHECKSUMS], cwd=dst, check=True)
    assert _verify(dst, capsys)[0] == 0

    with open(dst / "model-00001-of-00001.safetensors", "r+b") as fh:     # one flipped byte
        fh.seek(500)
        fh.write(b"X")
    (dst / "sub" / "t.json").unlink()
    code, text = _verify(dst, capsys)
    assert code == 1
    assert "checksum mismatch (1): model-00001-of-00001.safetensors" in text and "missing (1): sub/t.json" in text


@pytest.mark.parametrize("setup,match", [
    (None, "not a directory"),
    ("empty", "checksums.sha256: file not found"),
    ("malformed", "line 1 is not"),
    ("escape", "line 1 is not"),
])
def test_verify_invalid_input_exits_2(tmp_path, capsys, setup, match):
    target = tmp_path / "dir"
    if setup:
        target.mkdir()
    if setup == "malformed":
        (target / CHECKSUMS).write_text("abc  x\n")
    if setup == "escape":
        (target / CHECKSUMS).write_text(f"{'0' * 64}  ../etc/passwd\n")
    code, text = _verify(target, capsys)
    assert code == 2 and text.startswith("error: ") and match in text, text


def test_record_checksums_of_chosen_files(tmp_path):
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    sums = record_checksums(str(tmp_path), ["a"])
    assert sums == {"a": hashlib.sha256(b"a").hexdigest()}
    assert verify_dir(str(tmp_path)) == ([], [], ["b"])                      # b: not covered, not corrupt


@pytest.mark.parametrize("dtype,values,bad", [
    ("float32", np.array([1.0, np.nan, 2.0, np.inf], np.float32), 2),
    ("float16", np.array([0.5, -np.inf], np.float16), 1),
    ("bfloat16", np.array([0x3F80, 0x7FC0, 0xFF80, 0x7F7F], np.uint16), 2),   # 1.0, NaN, -Inf, max finite
])
def test_check_finite_names_the_tensor(dtype, values, bad):
    with pytest.raises(ConvertError) as info:
        check_finite(values, dtype, "model.layers.0.mlp.w1.weight", "hf/model-00002.safetensors", offset=100)
    assert str(info.value).startswith("hf/model-00002.safetensors: tensor 'model.layers.0.mlp.w1.weight' holds "
                                      f"{bad} non-finite values (NaN/Inf) among elements [100, {100 + values.size})")
    assert "first at flat index 101" in str(info.value)


def test_check_finite_passes_finite_and_integer_data():
    check_finite(np.array([0x3F80, 0x7F7F, 0xFF7F], np.uint16), "bfloat16", "k", "f")
    check_finite(np.array([np.finfo(np.float16).max], np.float16), "float16", "k", "f")
    check_finite(np.array([-1, 2**31 - 1], np.int32), "int32", "k", "f")


# ----------------------------------------------------------------------------- item 5: truncated shard at load
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A converted directory written by hand (model_config.yaml + safetensors + index): what load_pretrained
    reads, without depending on the converters."""
    import mindspore as ms
    from telechat_ms import TelechatConfig, TelechatForCausalLM
    from telechat_ms.io.checkpoint import MODEL_CONFIG
    root = tmp_path_factory.mktemp("io_rel") / "ms"
    root.mkdir()
    config = TelechatConfig.preset("tiny")
    net = TelechatForCausalLM(config)
    params = net.parameters_dict()
    ms.save_checkpoint([{"name": k, "data": p} for k, p in params.items()],
                       str(root / "model-00001-of-00001.safetensors"), format="safetensors")
    (root / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: "model-00001-of-00001.safetensors" for k in params}}))
    config.to_yaml(str(root / MODEL_CONFIG))
    return root


def _truncated_copy(model_dir, tmp_path):
    bad = tmp_path / "ms"
    shutil.copytree(model_dir, bad)
    shard = bad / "model-00001-of-00001.safetensors"
    with open(shard, "r+b") as fh:
        fh.truncate(os.path.getsize(shard) // 2)
    return bad, shard


def test_from_pretrained_of_a_truncated_shard_is_one_convert_error(model_dir, tmp_path):
    from telechat_ms import TelechatForCausalLM
    TelechatForCausalLM.from_pretrained(str(model_dir))                     # the intact one loads
    bad, shard = _truncated_copy(model_dir, tmp_path)
    with pytest.raises(ConvertError, match=rf"^{shard}: truncated: tensor '.*' ends at byte \d+ but the file has"):
        TelechatForCausalLM.from_pretrained(str(bad))


def test_chat_on_a_truncated_shard_is_one_error_line(model_dir, tmp_path, capsys):
    from telechat_ms.infer.cli import main
    bad, shard = _truncated_copy(model_dir, tmp_path)
    code = main(["--model", str(bad), "--mode", "pynative", "--prompt", "hi"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {shard}: truncated"), err


def test_mindspore_read_errors_name_the_file(model_dir, tmp_path, monkeypatch):
    import mindspore as ms
    from telechat_ms import TelechatForCausalLM

    def broken(path, **kwargs):
        raise RuntimeError("For 'load_checkpoint', the checkpoint file is corrupted.\n----\nC++ stack")
    monkeypatch.setattr(ms, "load_checkpoint", broken)
    with pytest.raises(ConvertError, match=r"model-00001-of-00001.safetensors: MindSpore cannot read this "
                                           r"safetensors file \(For 'load_checkpoint', the checkpoint file is "
                                           r"corrupted.\)$"):
        TelechatForCausalLM.from_pretrained(str(model_dir))


def test_integrity_module_stays_free_of_mindspore():
    run = subprocess.run([sys.executable, "-c", "import sys, telechat_ms.io.output, telechat_ms.io.integrity; "
                          "print(any(m.startswith(('mindspore', 'torch')) for m in sys.modules))"],
                         capture_output=True, text=True, cwd=REPO, check=True)
    assert run.stdout.strip() == "False"
    assert integrity.CHECKSUMS == "checksums.sha256"


# ----------------------------------------------------------------------------- the real converters
@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from telechat_ms import TelechatConfig
    from tests.hf_checkpoint import write_hf_checkpoint
    root = tmp_path_factory.mktemp("io_rel_hf") / "hf"
    write_hf_checkpoint(str(root), TelechatConfig.preset("tiny"), "sharded")
    return root


def _hf2ms(src, dst, env=None):
    return subprocess.run([sys.executable, f"{REPO}/convert/hf2ms.py", "--src", str(src), "--dst", str(dst),
                           "--no-progress"], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_hf2ms_killed_then_rerun_cleans_up_and_verifies(hf_dir, tmp_path):
    killed = _hf2ms(hf_dir, tmp_path / "ms", {KILL_ENV: "staged-output-commit"})   # all written, not renamed
    assert killed.returncode == -signal.SIGKILL
    assert [n.startswith(".ms.partial-") for n in os.listdir(tmp_path)] == [True]
    rerun = _hf2ms(hf_dir, tmp_path / "ms")
    assert rerun.returncode == 0, rerun.stderr
    assert "removed stale partial output" in rerun.stderr and "from a killed run (pid " in rerun.stderr
    assert os.listdir(tmp_path) == ["ms"]
    ok = subprocess.run([sys.executable, "-m", "telechat_ms.cli", "verify", str(tmp_path / "ms")],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    meta = (tmp_path / "ms" / CHECKSUMS).read_text()
    assert "convert_meta.json" in meta and "model_config.yaml" in meta and ".safetensors" in meta


def test_hf2ms_sigterm_exits_143_without_leftovers(hf_dir, tmp_path):
    run = _hf2ms(hf_dir, tmp_path / "ms", {KILL_ENV: "staged-output-created:TERM"})
    assert run.returncode == 128 + signal.SIGTERM, run.stderr
    assert "interrupted (SIGTERM): removed the partial output" in run.stderr and "Traceback" not in run.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_hf2ms_disk_error_is_one_error_line_exit_2(hf_dir, tmp_path, capsys, monkeypatch, code):
    from telechat_ms.convert.cli import hf2ms_main
    from telechat_ms.io import writer

    def failing(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(writer, "_write_tensor", failing)
    assert hf2ms_main(["--src", str(hf_dir), "--dst", str(tmp_path / "ms"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'ms'}: output not written: "
                                               f"{os.strerror(code)} [{errno.errorcode[code]}]"), err
    assert os.listdir(tmp_path) == []
