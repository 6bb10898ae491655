"""`telechat-ms eval --data`: perplexity equals exp(mean NLL) of the torch reference on the same checkpoint and
text (<= 1e-4 relative) for a TeleChat2 and a Llama-family model; the sliding windows are the HF recipe's."""
import json
import os

import numpy as np
import pytest

from telechat_ms.cli import main as cli_main
from telechat_ms.config.base import ConfigError
from telechat_ms.eval import TokenScorer, perplexity, read_documents, sliding_windows
from telechat_ms.eval.cli import load_for_eval, main

from .conftest import set_mode
from .eval_models import PAIRS, TEXTS

REL_TOL = 1e-4


def hf_recipe_windows(n_tokens, max_length, stride):
    """The loop of the transformers perplexity recipe, literally: (begin, end, label mask of the window)."""
    out, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        trg_len = end - prev_end
        labels = np.arange(begin, end)
        labels[:-trg_len] = -100
        out.append((begin, end, labels[1:] != -100))       # the model shifts labels left by one
        prev_end = end
        if end == n_tokens:
            break
    return out


@pytest.mark.parametrize("n,max_length,stride", [(1, 4, 4), (2, 4, 4), (10, 4, 4), (10, 4, 1), (10, 4, 3),
                                                  (57, 16, 5), (57, 16, 16), (16, 16, 7), (17, 16, 8), (3, 8, 2)])
def test_windows_are_the_hf_recipe(n, max_length, stride):
    ours = sliding_windows(n, max_length, stride)
    theirs = [(b, e, m) for b, e, m in hf_recipe_windows(n, max_length, stride) if m.any()]
    assert [(w.begin, w.end) for w in ours] == [(b, e) for b, e, _ in theirs]
    for w, (_, _, mask) in zip(ours, theirs):
        assert mask[-w.n_scored:].all() and not mask[:-w.n_scored].any()     # the scored tokens are the last ones
    scored = [w.end - k for w in ours for k in range(w.n_scored, 0, -1)]
    if stride < max_length:             # overlapping windows: every token but the first, once
        assert scored == list(range(1, n))
    else:                               # disjoint windows: each window's first token has no context
        assert scored == [t for t in range(1, n) if t % max_length]


def test_window_arguments_are_checked():
    with pytest.raises(ConfigError, match="stride must be in"):
        sliding_windows(10, 4, 5)
    with pytest.raises(ConfigError, match="max_length must be >= 2"):
        sliding_windows(10, 1)


def reference_nll(pair, documents, max_length, stride):
    """Sum of the NLL of every scored token from the torch reference, windows by the HF recipe; each window's
    logits from a forward over its context tokens (the input minus the last token, which no logit reads)."""
    total, count = 0.0, 0
    for ids in documents:
        for begin, end, mask in hf_recipe_windows(len(ids), max_length, stride):
            window = np.array(ids[begin:end], np.int64)
            if len(window) < 2 or not mask.any():
                continue
            logits = pair.logits(window[None, :-1])[0].astype(np.float64)              # (L-1, V)
            logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
            nll = logz - logits[np.arange(len(window) - 1), window[1:]]
            total += float(nll[mask].sum())
            count += int(mask.sum())
    return total / count, count


@pytest.fixture(scope="module", params=list(PAIRS))
def loaded(request, tmp_path_factory):
    set_mode("graph")
    pair = PAIRS[request.param](str(tmp_path_factory.mktemp(request.param)))
    model, tokenizer = load_for_eval(pair.ms_dir)
    return pair, model, tokenizer


# telechat2 at 32: every window within training_seqlen; at 48: NTK alpha and mscale on, rows padded only where
# the rotary regime allows it (31 -> 64 for llama, 31 -> 32 for telechat2, never past 32)
@pytest.mark.parametrize("max_length,stride,batch", [(32, 32, 2), (32, 11, 3), (48, 16, 4)])
def test_perplexity_equals_torch_reference(loaded, max_length, stride, batch):
    pair, model, tokenizer = loaded
    documents = [tokenizer.encode(t) for t in TEXTS]
    assert documents == [pair.hf_tokenizer.encode(t) for t in TEXTS]      # same ids as transformers' tokenizer
    assert max(map(len, documents)) > 2 * max_length                       # several windows per long document
    report = perplexity(TokenScorer(model, batch_size=batch, pad_multiple=64), documents, max_length, stride,
                        progress=False)
    nll, count = reference_nll(pair, documents, max_length, stride)
    assert report.tokens_scored == count
    if stride < max_length:
        assert count == sum(len(d) - 1 for d in documents)
    assert abs(report.nll_mean - nll) <= REL_TOL * nll, (report.nll_mean, nll)
    assert abs(report.perplexity - np.exp(nll)) <= REL_TOL * np.exp(nll), (report.perplexity, np.exp(nll))
    assert abs(nll - np.log(pair.config.vocab_size)) > 0.1                 # far from a uniform model's NLL


def test_windows_that_cross_the_ntk_threshold_are_not_padded(loaded):
    pair, model, _ = loaded
    scorer = TokenScorer(model, batch_size=1, pad_multiple=64)
    if pair.name == "telechat2":
        # up to training_seqlen 32 the rotary does not depend on the length; past it every length is its own
        assert scorer.padded_length(31) == 32 and scorer.padded_length(3) == 32 and scorer.padded_length(47) == 47
        assert TokenScorer(model, batch_size=4).batches([47, 20, 46, 3, 31]) == [[0], [2], [4, 1, 3]]
    else:
        assert scorer.padded_length(31) == 64 and scorer.padded_length(47) == 64


def test_cli_writes_the_json_report(loaded, tmp_path, capsys):
    pair, _, tokenizer = loaded
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TEXTS), encoding="utf-8")
    out = tmp_path / "ppl.json"
    argv = ["--model", pair.ms_dir, "--data", str(data), "--max-length", "32", "--stride", "16", "--batch-size",
            "2", "--output", str(out), "--no-progress"]
    assert cli_main(["eval"] + argv) == 0                     # through `telechat-ms eval`
    report = json.loads(out.read_text(encoding="utf-8"))
    nll, count = reference_nll(pair, [tokenizer.encode(t) for t in TEXTS], 32, 16)
    assert report["tokens_scored"] == count and report["documents"] == 3 and report["stride"] == 16
    assert abs(report["perplexity"] - np.exp(nll)) <= REL_TOL * np.exp(nll)
    assert [d["tokens_scored"] for d in report["per_document"]] == [len(tokenizer.encode(t)) - 1 for t in TEXTS]
    assert capsys.readouterr().out.startswith(f"perplexity {report['perplexity']:.4f}")
    assert main(argv) == 2                                                     # exists: refused, untouched
    assert "already exists" in capsys.readouterr().err
    assert json.loads(out.read_text(encoding="utf-8")) == report


def test_text_file_and_chat_rows(loaded, tmp_path, capsys):
    pair, _, tokenizer = loaded
    text = tmp_path / "one.txt"
    text.write_text(TEXTS[0], encoding="utf-8")
    assert main(["--model", pair.ms_dir, "--data", str(text), "--max-length", "32", "--stride", "8",
                 "--no-progress"]) == 0
    assert f"over {len(tokenizer.encode(TEXTS[0])) - 1} tokens, 1 documents" in capsys.readouterr().out
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"input": "你好", "output": "你好！"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert main(["--model", pair.ms_dir, "--data", str(chat), "--max-length", "32", "--no-progress",
                 "--chat-template", "llama2" if pair.name == "llama2" else "telechat2"]) == 0
    assert "1 documents" in capsys.readouterr().out


def test_bad_input_is_one_error_line(loaded, tmp_path, capsys):
    pair, _, tokenizer = loaded
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"nope": 1}\n', encoding="utf-8")
    cases = [(["--data", str(bad)], f"{bad}:2: expected a 'text' string field"),
             (["--data", str(tmp_path / "missing.txt")], "no such file"),
             (["--data", str(bad), "--stride", "0"], "--stride must be >= 1"),
             (["--data", str(bad), "--max-length", "8", "--stride", "9"], "must not exceed --max-length 8"),
             (["--data", str(bad), "--output", str(tmp_path / "no" / "x.json")], "does not exist")]
    for extra, message in cases:
        assert main(["--model", pair.ms_dir, "--no-progress"] + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
    with pytest.raises(ConfigError, match="fewer than 2 tokens"):
        perplexity(TokenScorer(load_for_eval(pair.ms_dir)[0]), [[1]], 8, progress=False)
    with pytest.raises(ConfigError, match="empty"):
        (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
        read_documents(str(tmp_path / "empty.txt"), tokenizer)


def test_answers_only_counts_the_sft_label_tokens(loaded, tmp_path):
    """--answers-only: the NLL of exactly the tokens render_training labels, each with the whole conversation
    before it as context (one window here), equal to the reference."""
    from telechat_ms.data.chat_template import render_training
    pair, model, tokenizer = loaded
    template = "llama2" if pair.name == "llama2" else "telechat2"
    rows = [{"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！我是助手。"},
                          {"role": "user", "content": "The quick brown fox?"},
                          {"role": "assistant", "content": "jumps over the lazy dog."}]},
            {"input": "Hello world", "output": "this is a tiny tokenizer."}]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    docs, masks = read_documents(str(data), tokenizer, template=template, answers_only=True)
    total, count = 0.0, 0
    for ids, mask, messages in zip(docs, masks, [rows[0]["messages"], None]):
        if messages is not None:
            labels = render_training(tokenizer, messages, template)[1]
            assert list(mask) == [lab != -100 for lab in labels]
        assert 0 < mask.sum() < len(ids) and not mask[0]
        window = np.array(ids, np.int64)
        logits = pair.logits(window[None, :-1])[0].astype(np.float64)
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        nll = logz - logits[np.arange(len(window) - 1), window[1:]]
        total, count = total + float(nll[mask[1:]].sum()), count + int(mask.sum())
    longest = max(map(len, docs))                                           # one window per conversation
    report = perplexity(TokenScorer(model, batch_size=2), docs, longest, masks=masks, progress=False)
    assert report.tokens_scored == count
    assert abs(report.nll_mean - total / count) <= REL_TOL * total / count
    with pytest.raises(ConfigError, match="needs chat rows"):
        (tmp_path / "t.jsonl").write_text('{"text": "a"}\n', encoding="utf-8")
        read_documents(str(tmp_path / "t.jsonl"), tokenizer, answers_only=True)


def test_quantized_directory_equals_its_dequantized_float(tmp_path, capsys):
    """A GPTQ int4 directory kept quantized (the quantized linear cells) is evaluated like any converted
    directory, and its perplexity is the one of the same weights dequantized to fp32."""
    from telechat_ms import TelechatConfig
    from telechat_ms.convert.pipeline import convert_hf_to_ms

    from . import quant_packer as qp
    set_mode("graph")
    config = TelechatConfig.preset("tiny_llama2_gqa")
    qp.make_llama(str(tmp_path / "hf"), config, "gptq", 4, 32, True, False,
                  tokenizer=os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "tiny_tokenizer.model"))
    convert_hf_to_ms(str(tmp_path / "hf"), str(tmp_path / "q"))
    convert_hf_to_ms(str(tmp_path / "hf"), str(tmp_path / "deq"), dequantize=True, dtype="float32")
    data = tmp_path / "one.txt"
    data.write_text(TEXTS[0], encoding="utf-8")
    reports = {}
    for name in ("q", "deq"):
        out = tmp_path / f"{name}.json"
        assert main(["--model", str(tmp_path / name), "--data", str(data), "--max-length", "32", "--stride", "16",
                     "--batch-size", "2", "--output", str(out), "--no-progress"]) == 0
        reports[name] = json.loads(out.read_text(encoding="utf-8"))
    capsys.readouterr()
    assert reports["q"]["tokens_scored"] == reports["deq"]["tokens_scored"] > 100
    assert abs(reports["q"]["nll_mean"] - reports["deq"]["nll_mean"]) <= REL_TOL * reports["deq"]["nll_mean"]
