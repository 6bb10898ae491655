"""The lm-evaluation-harness model `telechat_ms` against lm_eval's own `hf` model on the torch reference with
the same weights: a tiny local multiple-choice task (loglikelihood), a rolling-perplexity task
(loglikelihood_rolling) and a greedy generation task (generate_until), written in the test (no network).
Per-request loglikelihoods agree to 1e-4, accuracies and generations are equal. Skipped without the
`.[eval]` extra."""
import json
import os
import tempfile

import numpy as np
import pytest

for _var, _value in (("HF_DATASETS_OFFLINE", "1"), ("HF_HUB_OFFLINE", "1"),
                     ("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="telechat-eval-datasets-"))):
    os.environ.setdefault(_var, _value)

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is the optional extra .[eval] "
                                                "(pip install -e .[eval]); CI installs it with .[test]")
from lm_eval.tasks import TaskManager  # noqa: E402

from telechat_ms.eval.harness import TelechatLM  # noqa: E402

from .conftest import set_mode  # noqa: E402
from .eval_models import PAIRS  # noqa: E402

TOL = 1e-4
MC = [{"question": "The quick brown fox jumps over the", "choices": [" lazy dog", " cat", " tiny tokenizer"],
       "answer": 0},
      {"question": "Hello", "choices": [" world", " fox 12345", " 你好"], "answer": 0},
      {"question": "A chat between a curious human and", "choices": [" an assistant.",
                                                                    " the dog"], "answer": 1},
      {"question": "今天天气", "choices": [" 很好。", " 不好", " 67890"], "answer": 2},
      {"question": "The answer is", "choices": [" forty-two.", " 12345"], "answer": 0}]
ROLLING = [{"text": "The quick brown fox jumps over the lazy dog 12345 67890. " * 4},
           {"text": "你好，世界！今天天气很好，我们一起去公园散步吧。"}]
GEN = [{"question": "Hello world, this is", "answer": " a"}, {"question": "The quick brown", "answer": " fox"},
       {"question": "你好", "answer": "，"}]


def _write_tasks(root):
    def jsonl(name, rows):
        path = os.path.join(root, name)
        with open(path, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return path

    def task(name, data, body):
        with open(os.path.join(root, f"{name}.yaml"), "w", encoding="utf-8") as fh:
            fh.write(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
                     f"test_split: test\n{body}")
    task("tiny_mc", jsonl("mc.jsonl", MC), "output_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
         "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n"
         "  - metric: acc_norm\n")
    task("tiny_rolling", jsonl("rolling.jsonl", ROLLING), "output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
         "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    task("tiny_gen", jsonl("gen.jsonl", GEN), "output_type: generate_until\ndoc_to_text: '{{question}}'\n"
         "doc_to_target: '{{answer}}'\ngeneration_kwargs:\n  until: ['.']\n  max_gen_toks: 6\n  do_sample: false\n"
         "metric_list:\n  - metric: exact_match\n")
    return root


TASKS = ["tiny_mc", "tiny_rolling", "tiny_gen"]


def _evaluate(lm, tasks_dir, tasks=tuple(TASKS)):
    out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), log_samples=True, bootstrap_iters=0,
                                  task_manager=TaskManager(include_path=tasks_dir, include_defaults=False))
    return out["results"], out["samples"]


def _responses(samples, task):
    """Per request of each doc, in doc order: (loglikelihood, is_greedy), a rolling float or a generation."""
    return [[r[0] if isinstance(r, list) else r for r in s["resps"]]
            for s in sorted(samples[task], key=lambda s: s["doc_id"])]


@pytest.fixture(scope="module", params=list(PAIRS))
def runs(request, tmp_path_factory):
    from lm_eval.models.huggingface import HFLM
    set_mode("graph")
    pair = PAIRS[request.param](str(tmp_path_factory.mktemp(request.param)))
    tasks_dir = _write_tasks(str(tmp_path_factory.mktemp("tasks")))
    ours = TelechatLM(pair.ms_dir, batch_size=3, max_length=24)
    hf = HFLM(pretrained=pair.hf_model, tokenizer=pair.hf_tokenizer, batch_size=3, max_length=24, device="cpu")
    return pair, ours, _evaluate(ours, tasks_dir), _evaluate(hf, tasks_dir), tasks_dir


def test_same_token_ids_as_transformers(runs):
    pair, ours, *_ = runs
    for text in [d["question"] + c for d in MC for c in d["choices"]] + [r["text"] for r in ROLLING]:
        assert ours.tok_encode(text) == pair.hf_tokenizer.encode(text), text
    assert ours.prefix_token_id == (pair.hf_tokenizer.bos_token_id if pair.hf_tokenizer.bos_token_id is not None
                                    else pair.hf_tokenizer.eos_token_id)


def test_loglikelihoods_and_accuracy_equal_lm_eval_hf(runs):
    _, _, (res_ours, smp_ours), (res_hf, smp_hf), _ = runs
    ours, theirs = _responses(smp_ours, "tiny_mc"), _responses(smp_hf, "tiny_mc")
    assert len(ours) == len(MC)
    for doc_ours, doc_hf in zip(ours, theirs):
        for (ll, greedy), (ll_hf, greedy_hf) in zip(doc_ours, doc_hf):
            assert abs(ll - ll_hf) <= TOL * max(1.0, abs(ll_hf)), (ll, ll_hf)
            assert greedy == greedy_hf
    for metric in ("acc,none", "acc_norm,none"):
        assert res_ours["tiny_mc"][metric] == res_hf["tiny_mc"][metric]


def test_rolling_loglikelihood_equals_lm_eval_hf(runs):
    _, _, (res_ours, smp_ours), (res_hf, smp_hf), _ = runs
    ours, theirs = _responses(smp_ours, "tiny_rolling"), _responses(smp_hf, "tiny_rolling")
    for (ll,), (ll_hf,) in zip(ours, theirs):
        assert abs(ll - ll_hf) <= TOL * abs(ll_hf), (ll, ll_hf)
    assert np.isclose(res_ours["tiny_rolling"]["word_perplexity,none"],
                      res_hf["tiny_rolling"]["word_perplexity,none"], rtol=1e-3)


def test_greedy_generation_equals_lm_eval_hf(runs):
    """Batch 3 on our side: left padding counts as positions in our engine (the HF TeleChat rule); the prompts
    here have different lengths, so the HF side runs one prompt at a time and so must we for equality."""
    pair, _, _, (_, smp_hf), tasks_dir = runs
    ours = TelechatLM(pair.ms_dir, batch_size=1, max_length=24)
    _, smp_ours = _evaluate(ours, tasks_dir, ["tiny_gen"])
    got, want = _responses(smp_ours, "tiny_gen"), _responses(smp_hf, "tiny_gen")
    assert got == want and all(isinstance(g[0], str) for g in got)
    assert all("." not in g[0] for g in got)                       # cut at the `until` string


def test_bad_model_args_are_clear():
    from telechat_ms.config.base import ConfigError
    with pytest.raises(ConfigError, match="batch_size must be an integer.*automatic"):
        TelechatLM("unused-dir", batch_size="auto")
    from telechat_ms.eval.generation import generation_settings
    with pytest.raises(ConfigError, match="unsupported generation kwargs"):
        generation_settings({"until": ["x"], "num_beams": 4}, 16, [2])
    config, stops = generation_settings({"until": "\n\n", "max_new_tokens": 5, "temperature": 0.0}, 16, [2])
    assert stops == ["\n\n"] and config.max_new_tokens == 5 and not config.do_sample


@pytest.mark.parametrize("runs", ["telechat2"], indirect=True)      # the CLI path once (the model is not the point)
def test_eval_cli_runs_tasks(runs, tmp_path, capsys):
    """`telechat-ms eval --tasks` = lm_eval.simple_evaluate with this model: the same accuracy, a JSON report."""
    from telechat_ms.cli import main
    pair, _, (res_ours, _), _, tasks_dir = runs
    out = tmp_path / "results.json"
    assert main(["eval", "--model", pair.ms_dir, "--tasks", "tiny_mc", "--include-path", tasks_dir, "--batch-size",
                 "2", "--max-length", "24", "--output", str(out), "--no-progress"]) == 0
    results = json.loads(out.read_text(encoding="utf-8"))["results"]["tiny_mc"]
    assert results["acc,none"] == res_ours["tiny_mc"]["acc,none"]
    assert f"tiny_mc: acc,none {results['acc,none']:.4f}" in capsys.readouterr().out
    assert main(["eval", "--model", pair.ms_dir, "--tasks", "no_such_task", "--include-path", tasks_dir]) == 2
    assert "no_such_task" in capsys.readouterr().err


@pytest.mark.parametrize("runs", ["telechat2"], indirect=True)
def test_lm_eval_command_line_with_the_model_registered(runs, tmp_path):
    """`python -m telechat_ms.eval.harness` is lm_eval's own CLI with `--model telechat_ms` available."""
    import subprocess
    import sys
    pair, _, (res_ours, _), _, tasks_dir = runs
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "telechat_ms.eval.harness", "--model", "telechat_ms", "--model_args",
                          f"pretrained={pair.ms_dir},max_length=24", "--batch_size", "2", "--device", "cpu",
                          "--tasks", "tiny_mc", "--include_path", tasks_dir, "--output_path", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=600, cwd=str(tmp_path), env=env, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    row = next(line for line in out.stdout.splitlines() if line.startswith("|tiny_mc"))
    assert f"|acc     |↑  |{res_ours['tiny_mc']['acc,none']:5.1f}|" in row                # the same accuracy


def test_devices():
    from telechat_ms.config.base import ConfigError
    from telechat_ms.eval.harness import resolve_device
    assert resolve_device(None) == resolve_device("cuda:0") == resolve_device("cpu") == "CPU"
    assert resolve_device("npu:3") == "Ascend" and resolve_device("cuda", "Ascend") == "Ascend"
    with pytest.raises(ConfigError, match="not a MindSpore device"):
        resolve_device("mps")
