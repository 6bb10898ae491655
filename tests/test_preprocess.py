"""jsonl -> MindRecord: golden rows for both formats, packing boundaries, accounting, bad lines, atomic output."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from telechat_ms.data.chat_template import DEFAULT_SYSTEM_PROMPT as S
from telechat_ms.data.dataset import create_dataset, read_rows
from telechat_ms.data.packing import Packer, actual_seq_len, document_attention_mask
from telechat_ms.data.preprocess import main
from telechat_ms.data.tiny_tokenizer import REPO_DATA, train_tiny_tokenizer
from telechat_ms.data.tokenizer import TelechatTokenizer

TINY = str(REPO_DATA / "tiny_tokenizer.model")
X = -100
START, END, PAD, USER, BOT, SYS = 1, 2, 3, 4, 5, 6


@pytest.fixture(scope="module")
def tok():
    return TelechatTokenizer(TINY)


def sp(tok, text):
    return list(tok.sp.EncodeAsIds(text))


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in records), encoding="utf-8")
    return str(path)


def run(tmp_path, inputs, *extra, out="out.mindrecord"):
    output = os.path.join(str(tmp_path), out)
    argv = ["--input", *inputs, "--output", output, "--tokenizer", TINY, "--no-progress", *extra]
    return main(argv), output


def rows_of(output):
    return read_rows(output)


def check_row(row_ids, row_labels, want_ids, want_labels, pad_to):
    pad = pad_to - len(want_ids)
    assert row_ids.tolist() == want_ids + [PAD] * pad
    assert row_labels.tolist() == want_labels + [X] * pad


def official(q, a, system=""):
    return {"system": system, "dialog": [{"role": "user", "content": q}, {"role": "bot", "content": a}],
            "tool": False, "multiturn": False}


def test_golden_mindformers_format(tmp_path, tok):
    src = write_jsonl(tmp_path / "mf.jsonl", [{"input": "你好", "output": "您好！"},
                                              {"input": "<_user>q1<_bot>a1<_user>q2", "output": "a2"}])
    rc, out = run(tmp_path, [src], "--seq-length", "63", "--no-pack")
    assert rc == 0
    rows = rows_of(out)
    q, a = sp(tok, "你好"), sp(tok, "您好！")
    check_row(rows["input_ids"][0], rows["labels"][0], [START, USER] + q + [BOT] + a + [END],
              [X, X] + [X] * len(q) + [X] + a + [END], 64)
    ids = [START, USER] + sp(tok, "q1") + [BOT] + sp(tok, "a1") + [END, USER] + sp(tok, "q2") + [BOT] \
        + sp(tok, "a2") + [END]
    labels = [X, X] + [X] * len(sp(tok, "q1")) + [X] + sp(tok, "a1") + [END, X] + [X] * len(sp(tok, "q2")) \
        + [X] + sp(tok, "a2") + [END]
    check_row(rows["input_ids"][1], rows["labels"][1], ids, labels, 64)


def test_golden_official_format(tmp_path, tok):
    src = write_jsonl(tmp_path / "off.jsonl", [official("q", "a"), official("hi", "yo", system="Be brief.")])
    rc, out = run(tmp_path, [src], "--seq-length", "127", "--no-pack")
    assert rc == 0
    rows = rows_of(out)
    head = [SYS] + sp(tok, S + "\n")
    check_row(rows["input_ids"][0], rows["labels"][0],
              head + [USER] + sp(tok, "q") + [BOT] + sp(tok, "a") + [END] + sp(tok, "\n"),
              [X] * len(head) + [X] * (len(sp(tok, "q")) + 2) + sp(tok, "a") + [END, X, X], 128)
    head = [SYS] + sp(tok, "Be brief.\n")
    check_row(rows["input_ids"][1], rows["labels"][1],
              head + [USER] + sp(tok, "hi") + [BOT] + sp(tok, "yo") + [END] + sp(tok, "\n"),
              [X] * len(head) + [X] * (len(sp(tok, "hi")) + 2) + sp(tok, "yo") + [END, X, X], 128)
    # official DeepSpeed loss mask: <_user> and <_bot> trained as well
    rc, out = run(tmp_path, [src], "--seq-length", "127", "--no-pack", "--train-turn-tokens", out="turn.mindrecord")
    labels = rows_of(out)["labels"][1]
    assert labels[len(head)] == USER and labels[len(head) + 1 + len(sp(tok, "hi"))] == BOT


def test_packing_boundaries(tmp_path, tok):
    """Each sample keeps its own system block; boundaries in document_ids/position_ids; last row kept."""
    records = [official(f"question {i}", "answer " * (i % 4 + 1)) for i in range(9)]
    src = write_jsonl(tmp_path / "p.jsonl", records)
    rc, out = run(tmp_path, [src], "--seq-length", "160")
    assert rc == 0
    rows = rows_of(out)
    docs_seen = []
    for ids, labels, pos, doc in zip(rows["input_ids"], rows["labels"], rows["position_ids"], rows["document_ids"]):
        n_docs = doc.max()
        assert doc.tolist() == sorted(doc.tolist(), key=lambda d: d == 0)     # 1..n then padding (0)
        for d in range(1, n_docs + 1):
            span = np.flatnonzero(doc == d)
            assert span.tolist() == list(range(span[0], span[-1] + 1))
            assert ids[span[0]] == SYS and labels[span[0]] == X                  # own system block, untrained
            assert pos[span].tolist() == list(range(len(span)))
            docs_seen.append(ids[span].tolist())
        assert (ids[doc == 0] == PAD).all() and (labels[doc == 0] == X).all()
    tok_docs = [[SYS] + sp(tok, S + "\n") + [USER] + sp(tok, r["dialog"][0]["content"]) + [BOT]
                + sp(tok, r["dialog"][1]["content"]) + [END] + sp(tok, "\n") for r in records]
    assert docs_seen == tok_docs                                               # nothing lost, order kept
    assert len(rows["input_ids"]) > 1 and (rows["document_ids"][-1] == 0).any()  # partial last row written


def test_packer_and_masks():
    packer = Packer(row_length=8, pad_id=PAD)
    assert packer.add([1, 7, 7], [X, 7, 7]) == []
    assert packer.add([1, 8, 8, 8], [X, X, 8, 8]) == []
    (row,) = packer.add([1, 9], [X, 9])                  # 3 + 4 + 2 > 8: first row closed
    assert row.input_ids.tolist() == [1, 7, 7, 1, 8, 8, 8, PAD]
    assert row.document_ids.tolist() == [1, 1, 1, 2, 2, 2, 2, 0]
    assert row.position_ids.tolist() == [0, 1, 2, 0, 1, 2, 3, 0]
    (last,) = packer.flush()
    assert last.input_ids.tolist() == [1, 9] + [PAD] * 6 and last.num_docs == 1
    assert packer.flush() == []
    with pytest.raises(ValueError, match="first token"):
        packer.add([5, 6], [5, 6])
    mask = document_attention_mask(row.document_ids)
    assert mask[4].tolist() == [False, False, False, True, True, False, False, False]
    assert not mask[2, 3] and mask[2, 0] and not mask[0, 1]
    assert actual_seq_len(row.document_ids).tolist() == [3, 7, 8]
    assert actual_seq_len(row.document_ids, width=5).tolist() == [3, 7, 8, 8, 8]
    unpacked = Packer(row_length=8, pad_id=PAD, pack=False)
    assert unpacked.add([1, 7], [X, 7]) == [] and len(unpacked.add([1, 8], [X, 8])) == 1


def test_bundled_samples_no_sample_lost(tmp_path, capsys):
    for name, count in (("sample_sft.jsonl", 30), ("sample_sft_mindformers.jsonl", 27)):
        rc, out = run(tmp_path, [str(REPO_DATA / name)], "--seq-length", "256", out=f"{name}.mindrecord")
        assert rc == 0
        rows = rows_of(out)
        assert int(rows["document_ids"].max(axis=1).sum()) == count
        text = capsys.readouterr().out
        assert f"{count} samples" in text and f"written {count} samples in {len(rows['input_ids'])} packs" in text
        assert "fill rate" in text
    assert {9, 10, 11, 12} <= set(rows_of(str(tmp_path / "sample_sft.jsonl.mindrecord"))["input_ids"].ravel())


def test_overflow_options_are_counted(tmp_path, capsys):
    long_answer = "word " * 200
    records = [official("q1", "a1"), official("q2", long_answer), official("x" * 300, "a3"), official("q4", "a4")]
    src = write_jsonl(tmp_path / "long.jsonl", records)
    rc, out = run(tmp_path, [src], "--seq-length", "100", "--overflow", "truncate", out="t.mindrecord")
    assert rc == 0
    text = capsys.readouterr()
    assert "1 truncated, 0 skipped, 1 skipped (nothing left" in text.out and "long.jsonl:2: truncated" in text.err
    rows = rows_of(out)
    assert int(rows["document_ids"].max(axis=1).sum()) == 3 and (rows["input_ids"][:, -1] != PAD).any()
    rc, out = run(tmp_path, [src], "--seq-length", "100", "--overflow", "skip", out="s.mindrecord")
    assert rc == 0 and "0 truncated, 2 skipped" in capsys.readouterr().out
    assert int(rows_of(out)["document_ids"].max(axis=1).sum()) == 2
    rc, out = run(tmp_path, [src], "--seq-length", "100", "--overflow", "error", out="e.mindrecord")
    assert rc == 2 and "long.jsonl:2: sample has" in capsys.readouterr().err and not os.path.exists(out)


BAD_LINES = [
    ('{"input": "q", "output": ', "invalid JSON"),
    ('{"input": "q"}', "field 'output' must be a string, got missing"),
    ('{"dialog": []}', "field 'input' must be a string"),          # the format is fixed by the first record
    ('{"input": "q", "output": 5}', "field 'output' must be a string"),
    ('{"input": "<_user>q<_user>q2", "output": "a"}', "field 'input': turn 2 starts with <_user>"),
]


@pytest.mark.parametrize("line,message", BAD_LINES)
def test_bad_line_fails_with_file_and_line(tmp_path, capsys, line, message):
    src = write_jsonl(tmp_path / "bad.jsonl", [{"input": "q", "output": "a"}, "", line])
    rc, out = run(tmp_path, [src], "--seq-length", "64")
    err = capsys.readouterr().err
    assert rc == 2 and f"bad.jsonl:3: {message}" in err, err
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl"]            # no output, no temp directory


@pytest.mark.parametrize("record,message", [
    ({"dialog": [{"role": "user", "content": "q"}]}, "must end with a bot turn"),
    ({"dialog": [{"role": "human", "content": "q"}]}, "dialog[0].role"),
    ({"dialog": [], "system": ""}, "non-empty list"),
    ({"dialog": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}], "tool": "yes"}, "'tool'"),
])
def test_bad_official_records(tmp_path, capsys, record, message):
    src = write_jsonl(tmp_path / "bad.jsonl", [official("q", "a"), record])
    rc, _ = run(tmp_path, [src], "--seq-length", "128")
    assert rc == 2 and "bad.jsonl:2:" in (err := capsys.readouterr().err) and message in err, err


def test_skip_bad_counts_and_non_utf8(tmp_path, capsys):
    path = tmp_path / "mixed.jsonl"
    good = json.dumps({"input": "q", "output": "a"}).encode()
    path.write_bytes(b"\n".join([good, b"{oops", b"\xff\xfe", good, b"", good]) + b"\n")
    rc, out = run(tmp_path, [str(path)], "--seq-length", "64")
    assert rc == 2 and "mixed.jsonl:2: invalid JSON" in capsys.readouterr().err
    rc, out = run(tmp_path, [str(path)], "--seq-length", "64", "--skip-bad")
    captured = capsys.readouterr()
    assert rc == 0 and "5 lines, 3 samples (2 bad lines skipped)" in captured.out
    assert "mixed.jsonl:3: skipped: not UTF-8" in captured.err
    assert int(rows_of(out)["document_ids"].max(axis=1).sum()) == 3


def test_atomic_output_and_overwrite(tmp_path, capsys):
    src = write_jsonl(tmp_path / "a.jsonl", [{"input": f"q{i}", "output": "a"} for i in range(5)])
    rc, out = run(tmp_path, [src], "--seq-length", "32")
    assert rc == 0
    before = open(out, "rb").read()
    rc, _ = run(tmp_path, [src], "--seq-length", "32", "--no-pack")
    assert rc == 2 and "--overwrite" in capsys.readouterr().err and open(out, "rb").read() == before
    # a failure after rows were written (bad last line) leaves the old output untouched and no temp files
    bad = write_jsonl(tmp_path / "b.jsonl", [{"input": f"q{i}", "output": "a" * 30} for i in range(50)] + ["{"])
    rc, _ = run(tmp_path, [bad], "--seq-length", "32", "--overwrite")
    assert rc == 2 and open(out, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "b.jsonl", "out.mindrecord", "out.mindrecord.db"]
    rc, _ = run(tmp_path, [src], "--seq-length", "32", "--no-pack", "--overwrite")
    assert rc == 0 and len(rows_of(out)["input_ids"]) == 5


def test_tool_sample_needs_tool_tokens(tmp_path, capsys):
    tok115 = train_tiny_tokenizer(str(tmp_path / "t115.model"), "115b")
    src = str(REPO_DATA / "sample_sft.jsonl")
    rc = main(["--input", src, "--output", str(tmp_path / "o.mindrecord"), "--tokenizer", tok115,
               "--seq-length", "256", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "sample_sft.jsonl:30:" in err and "no tool tokens" in err
    assert not os.path.exists(tmp_path / "o.mindrecord")


def test_dataset_reader(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [official(f"q{i}", "a" * i) for i in range(6)])
    rc, out = run(tmp_path, [src], "--seq-length", "95", out="ds/")    # a directory, as MindFormers allows
    assert rc == 0 and sorted(os.listdir(out)) == ["dataset.mindrecord", "dataset.mindrecord.db"]
    columns = ("input_ids", "labels", "position_ids", "document_ids", "loss_mask", "attention_mask",
               "actual_seq_len")
    data = create_dataset(out, batch_size=1, seq_length=95, columns=columns, shuffle=False,
                          actual_seq_len_width=8)
    batch = next(data.create_dict_iterator(output_numpy=True, num_epochs=1))
    assert list(batch) == list(columns)
    assert batch["input_ids"].shape == (1, 96) and batch["actual_seq_len"].shape == (1, 8)
    assert (batch["loss_mask"] == (batch["labels"] != X)).all()
    assert (batch["attention_mask"] == (batch["document_ids"] != 0)).all()
    assert batch["actual_seq_len"][0].tolist() == actual_seq_len(batch["document_ids"][0], 8).tolist()
    with pytest.raises(Exception, match="seq_length 95"):
        create_dataset(out, batch_size=1, seq_length=64)


def test_script_entry_point(tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", [{"input": "q", "output": "a"}])
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "preprocess.py")
    proc = subprocess.run([sys.executable, script, "--input", src, "--output", str(tmp_path / "s.mindrecord"),
                           "--tokenizer", TINY, "--seq-length", "16"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "written 1 samples in 1 packs (rows of 17 tokens" in proc.stdout
    proc = subprocess.run([sys.executable, script, "--input", str(tmp_path / "missing.jsonl"), "--output",
                           str(tmp_path / "m.mindrecord"), "--tokenizer", TINY], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "missing.jsonl: input file not found" in proc.stderr


def test_unknown_format_and_bad_options(tmp_path, capsys):
    src = write_jsonl(tmp_path / "u.jsonl", [{"text": "pretraining text"}])
    rc, _ = run(tmp_path, [src], "--seq-length", "64")
    assert rc == 2 and "u.jsonl:1: cannot tell the format" in capsys.readouterr().err
    rc, _ = run(tmp_path, [src], "--seq-length", "1")
    assert rc == 2 and "seq_length must be an integer >= 2" in capsys.readouterr().err
    rc, _ = run(tmp_path, [src], "--format", "mindformers", "--template", "chat", "--seq-length", "64")
    assert rc == 2 and "u.jsonl:1: field 'input' must be a string" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["u.jsonl"]


def test_shuffle_is_seeded_and_loses_nothing(tmp_path):
    src = write_jsonl(tmp_path / "sh.jsonl", [{"input": f"q{i}", "output": f"a{i}"} for i in range(12)])
    outs = []
    runs = (("plain", []), ("s1", ["--shuffle"]), ("s2", ["--shuffle"]), ("s3", ["--shuffle", "--seed", "7"]))
    for name, extra in runs:
        rc, out = run(tmp_path, [src], "--seq-length", "31", "--no-pack", *extra, out=f"{name}.mindrecord")
        assert rc == 0
        outs.append([tuple(r) for r in rows_of(out)["input_ids"].tolist()])
    assert outs[1] == outs[2] != outs[0] and outs[3] != outs[1]
    assert all(sorted(o) == sorted(outs[0]) for o in outs)


# ---- other families: any tokenizer kind, any chat template ------------------------------------------------
@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """A Llama-2 style SentencePiece checkpoint and an Aquila2 style BPE one (tests/tiny_tokenizers.py)."""
    from tests import tiny_tokenizers as tt
    root = tmp_path_factory.mktemp("families")
    llama = root / "llama"
    tt.train_sp(str(llama / "tokenizer.model"))
    tt.write_json(str(llama / "tokenizer_config.json"), {
        "tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": True, "bos_token": "<s>",
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None})
    return {"llama": str(llama), "aquila": tt.aquila_dir(str(root))}


def _answers(tok, ids, labels):
    runs, current = [], []
    for tid, label in zip(ids, labels):
        if label != X:
            current.append(tid)
        elif current:
            runs.append(tok.decode(current, skip_special_tokens=False).strip())
            current = []
    return runs


@pytest.mark.parametrize("family,template,kind,want", [
    ("llama", "llama2", "auto", ["a1 </s>", "a2 </s>"]),
    ("llama", "firefly", "sentencepiece", ["a1</s>", "a2</s>"]),
    ("aquila", "aquila-chat", "hf", ["a1###", "a2###"]),
    ("aquila", "aquila-v1", "auto", ["a1</s>", "a2</s>"]),
])
def test_other_families_preprocess(tmp_path, family_dirs, family, template, kind, want):
    from telechat_ms.data.chat_template import render_ids
    from telechat_ms.data.tokenizer import load_tokenizer
    tokenizer = family_dirs[family]
    dialog = [{"role": "user", "content": "q1"}, {"role": "bot", "content": "a1"},
              {"role": "user", "content": "q2"}, {"role": "bot", "content": "a2"}]
    off = write_jsonl(tmp_path / "off.jsonl", [{"dialog": dialog}])
    mf = write_jsonl(tmp_path / "mf.jsonl", [{"input": "<_user>q1<_bot>a1<_user>q2", "output": "a2"}])
    output = str(tmp_path / "f.mindrecord")
    rc = main(["--input", off, mf, "--output", output, "--tokenizer", tokenizer, "--tokenizer-kind", kind,
               "--chat-template", template, "--seq-length", "127", "--no-pack", "--no-progress"])
    assert rc == 0
    tok = load_tokenizer(tokenizer)
    rows = rows_of(output)
    messages = [dict(m, role="assistant" if m["role"] == "bot" else "user") for m in dialog]
    ids = render_ids(tok, messages, template)
    pad = {"llama": tok.unk_id, "aquila": tok.pad_id}[family]          # Llama-2 has no pad token: unk pads
    for row in range(2):                    # both input formats give the same conversation
        got, labels = rows["input_ids"][row].tolist(), rows["labels"][row].tolist()
        assert got == ids + [pad] * (128 - len(ids))
        assert _answers(tok, got, labels) == want


def test_template_choice_errors_and_checkpoint_template(tmp_path, family_dirs, capsys):
    import shutil
    src = write_jsonl(tmp_path / "c.jsonl", [official("q", "a")])
    llama = tmp_path / "llama"
    shutil.copytree(family_dirs["llama"], llama)
    base = ["--input", src, "--tokenizer", str(llama), "--seq-length", "63", "--no-progress"]
    assert main(base + ["--output", str(tmp_path / "a.mindrecord")]) == 2          # auto: no template known
    assert "no chat template: the checkpoint has none" in capsys.readouterr().err
    assert main(base + ["--output", str(tmp_path / "b.mindrecord"), "--chat-template", "vicuna"]) == 2
    assert "neither a built-in template (telechat2, " in capsys.readouterr().err
    config = json.loads((llama / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = "{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}"
    (llama / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    for flags in ([], ["--chat-template", "checkpoint"]):
        out = str(tmp_path / f"c{len(flags)}.mindrecord")
        assert main(base + ["--output", out] + flags) == 0
        row = rows_of(out)
        from telechat_ms.data.tokenizer import load_tokenizer
        tok = load_tokenizer(str(llama))
        assert _answers(tok, row["input_ids"][0].tolist(), row["labels"][0].tolist()) == ["a</s>"]
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".mindrecord")) == ["c0.mindrecord",
                                                                                    "c2.mindrecord"]
