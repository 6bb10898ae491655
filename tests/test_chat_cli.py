"""The chat CLI under bad input and interruption (issue 14): --output never overwrites silently, a cut answer
is reported, Ctrl-C stops an answer but keeps the conversation, and Ctrl-C / EOF at the prompt exit cleanly."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import telechat_ms.infer.chat as chat_module
from telechat_ms.infer.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """tiny HF checkpoint (seq_length 64) -> hf2ms, as a user would."""
    root = tmp_path_factory.mktemp("chat_cli")
    for cmd in ([sys.executable, f"{REPO}/scripts/make_tiny_hf_checkpoint.py", str(root / "hf"), "--seq-length", "64"],
                [sys.executable, f"{REPO}/convert/hf2ms.py", "--src", str(root / "hf"), "--dst", str(root / "ms")]):
        subprocess.run(cmd, check=True, capture_output=True, cwd=root)
    return str(root / "ms")


def _chat(model, *args):
    try:
        return main(["--model", str(model), "--mode", "pynative", *args])
    except KeyboardInterrupt:                   # would otherwise abort the whole pytest session
        pytest.fail("KeyboardInterrupt escaped the chat CLI")


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ----------------------------------------------------------------------------- flags refused before loading
@pytest.mark.parametrize("flags,named", [
    (["--max-length", "0"], "--max-length must be >= 1, got 0"),        # was: silently the model's seq_length
    (["--max-length", "-4"], "--max-length must be >= 1, got -4"),
    (["--tp", "0"], "--tp must be >= 1, got 0"),
    (["--output", "answers.jsonl"], "--output is for --input"),         # was: silently ignored with --prompt
])
def test_bad_flags_are_one_error_line_before_loading(flags, named, tmp_path, capsys):
    # the model directory does not exist: the flags are judged before anything is loaded
    assert _chat(tmp_path / "no_model", "--prompt", "hi", *flags) == 2
    assert named in _one_error_line(capsys.readouterr().err)


def test_output_is_never_overwritten_silently(tmp_path, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"prompt": "你好"}\n', encoding="utf-8")
    out.write_text("earlier answers\n", encoding="utf-8")
    assert _chat(tmp_path / "no_model", "--input", str(src), "--output", str(out)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(out) in line and "--overwrite" in line
    assert out.read_text(encoding="utf-8") == "earlier answers\n"
    assert _chat(tmp_path / "no_model", "--input", str(src), "--output", str(tmp_path / "nodir" / "o.jsonl")) == 2
    assert "nodir" in _one_error_line(capsys.readouterr().err)


def test_overwrite_flag_replaces_the_output_atomically(converted, tmp_path, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"prompt": "你好"}\n', encoding="utf-8")
    out.write_text("earlier answers\n", encoding="utf-8")
    assert _chat(converted, "--input", str(src), "--output", str(out), "--overwrite", "--max-new-tokens", "2") == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1 and "answer" in rows[0]
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "out.jsonl"]    # no temp file left


def test_unwritable_output_is_one_error_line(converted, tmp_path, capsys):
    """Root ignores chmod: a path under /proc really refuses new files."""
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "你好"}\n', encoding="utf-8")
    assert _chat(converted, "--input", str(src), "--output", "/proc/answers.jsonl", "--max-new-tokens", "2") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "/proc/answers.jsonl" in line and not os.path.exists("/proc/answers.jsonl")


# ----------------------------------------------------------------------------- answers cut by the KV cache
def _prompt_len(model_dir, text):
    from telechat_ms.data.chat_template import DEFAULT_SYSTEM_PROMPT, render_ids
    from telechat_ms.data.tokenizer import TelechatTokenizer
    messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": text}]
    return len(render_ids(TelechatTokenizer(model_dir), messages, style="chat", add_generation_prompt=True))


def test_answer_cut_by_max_length_is_reported(converted, capsys, monkeypatch):
    # the tiny model never emits <_end> here: only the KV cache (--max-length) can end the answer early
    monkeypatch.setattr(chat_module, "generate", _never_eos(chat_module.generate))
    room = _prompt_len(converted, "你好") + 8
    assert _chat(converted, "--prompt", "你好", "--max-new-tokens", "30", "--max-length", str(room)) == 0
    err = capsys.readouterr().err
    assert "warning: answer cut at 8 of --max-new-tokens 30" in err and f"--max-length {room}" in err
    assert _chat(converted, "--prompt", "你好", "--max-new-tokens", "8", "--max-length", str(room)) == 0
    assert "warning" not in capsys.readouterr().err                     # exactly filled: not cut


def test_batch_answer_cut_names_the_line(converted, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(chat_module, "generate", _never_eos(chat_module.generate))
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"prompt": "你好"}\n\n{"prompt": "你好你好你好你好你好你好你好你好"}\n', encoding="utf-8")
    room = _prompt_len(converted, "你好你好你好你好你好你好你好你好") + 4
    assert _chat(converted, "--input", str(src), "--output", str(out), "--max-new-tokens", "6",
                 "--max-length", str(room)) == 0
    err = capsys.readouterr().err
    # left padding: every row of the batch has the room left by the longest prompt, so both are cut
    for lineno in (1, 3):
        assert f"warning: {src}:{lineno}: answer cut at 4 of --max-new-tokens 6 tokens: the batch's longest " \
               f"prompt ({room - 4} tokens)" in err
    assert len([json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]) == 2


def _never_eos(real_generate):
    def generate(model, prompts, config, **kwargs):
        import dataclasses
        return real_generate(model, prompts, dataclasses.replace(config, eos_token_id=[-1]), **kwargs)
    return generate


# ----------------------------------------------------------------------------- Ctrl-C
def _scripted_input(monkeypatch, lines):
    """input() answering from `lines`; an exception instance in the list is raised (Ctrl-C, EOF)."""
    pending = list(lines)

    def fake_input(prompt=""):
        print(prompt, end="")
        item = pending.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item
    monkeypatch.setattr("builtins.input", fake_input)


def test_ctrl_c_during_an_answer_keeps_the_conversation(converted, capsys, monkeypatch):
    """Ctrl-C while the second answer streams: that answer stops, the prompt returns, and the third question
    is asked with the first exchange in the history but not the interrupted one."""
    real, prompts = chat_module.generate, []

    def interrupted_second_time(model, ids, config, **kwargs):
        prompts.append(ids[0])
        if len(prompts) == 2:
            kwargs["on_token"](0, 100)                  # part of the answer has been streamed
            raise KeyboardInterrupt
        return real(model, ids, config, **kwargs)
    monkeypatch.setattr(chat_module, "generate", interrupted_second_time)
    _scripted_input(monkeypatch, ["第一个问题", "第二个问题", "第三个问题", KeyboardInterrupt()])
    assert _chat(converted, "--interactive", "--max-new-tokens", "2") == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "interrupted" in captured.err
    assert captured.out.count("user> ") == 4
    from telechat_ms.data.tokenizer import TelechatTokenizer
    third = TelechatTokenizer(converted).decode(prompts[2])
    assert "第一个问题" in third and "第二个问题" not in third and "第三个问题" in third


@pytest.mark.parametrize("end", [KeyboardInterrupt(), EOFError()])
def test_ctrl_c_or_eof_at_the_prompt_exits_cleanly(converted, capsys, monkeypatch, end):
    _scripted_input(monkeypatch, [end])
    assert _chat(converted, "--interactive") == 0
    assert "Traceback" not in capsys.readouterr().err


def test_ctrl_c_with_prompt_is_one_line_exit_130(converted, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(chat_module, "generate", interrupted)
    assert _chat(converted, "--prompt", "你好") == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def _read_until(proc, marker: bytes, timeout: float = 120.0) -> bytes:
    seen, deadline = b"", time.monotonic() + timeout
    while marker not in seen:
        assert time.monotonic() < deadline and proc.poll() is None, seen
        seen += os.read(proc.stdout.fileno(), 4096)
    return seen


def _start_chat(model_dir, cwd, *flags):
    """`telechat-ms chat --interactive` in graph mode (the default: MindSpore's runtime then owns SIGINT)."""
    cmd = [sys.executable, "-m", "telechat_ms.cli", "chat", "--model", str(model_dir), "--interactive", *flags]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=cwd, env={**os.environ, "PYTHONPATH": REPO})


def _send(proc, text: str) -> None:
    proc.stdin.write(text.encode())
    proc.stdin.flush()


def test_sigint_at_the_prompt_of_a_real_process(converted, tmp_path):
    """A real SIGINT (what the terminal sends on Ctrl-C), sent once the first answer is done and the prompt
    waits for the second question: exit 0, no traceback (was: killed by SIGTERM from MindSpore's handler)."""
    proc = _start_chat(converted, tmp_path, "--max-new-tokens", "2")
    try:
        _read_until(proc, b"user> ")
        _send(proc, "你好\n")
        _read_until(proc, b"user> ")                    # the answer was printed, the prompt is back
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err


def test_sigint_during_an_answer_of_a_real_process(converted, tmp_path):
    """SIGINT once the answer streams (thousands of tokens to go: <_end> disabled, a 2048-token cache): the
    answer stops, the prompt comes back, and /exit ends the chat with 0."""
    model = tmp_path / "model"
    shutil.copytree(converted, model)
    (model / "generation_config.json").write_text(json.dumps({"max_new_tokens": 2000, "eos_token_id": [-1]}))
    proc = _start_chat(model, tmp_path, "--max-length", "2048")
    try:
        _read_until(proc, b"user> ")
        _send(proc, "你好\n")
        streamed = b""
        while not streamed.strip():                     # wait for answer text: decoding is under way
            streamed += os.read(proc.stdout.fileno(), 4096)
        proc.send_signal(signal.SIGINT)
        _read_until(proc, b"user> ")
        _send(proc, "/exit\n")
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    assert b"answer interrupted" in err and b"Traceback" not in err
