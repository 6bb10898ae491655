"""Issue 13: `telechat-ms train --engine mindformers` (MindFormers 1.9.0's Trainer) proven on CPU.

Same yaml, same packed data (1-4 documents per row), same seed, O0 fp32, gradient accumulation 2 and clipping
(max_grad_norm 0.5, below every step's norm): the native loop and the MindFormers engine give the same loss at
every one of 24 steps, starting from a directory written by convert/hf2ms.py. A document's loss does not depend
on its neighbours in a row on the MindFormers path. A resume through MindFormers (fp16 O2, moving dynamic loss
scale, shuffled epochs, mid-epoch) repeats the uninterrupted run. Its checkpoints reach HF through the merge step
and convert/ms2hf.py (one rank; two data-parallel msrun workers). MindFormers runs in subprocesses (importing it
changes global state); the runs are module fixtures shared by the tests.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
FINETUNE_YAML = os.path.join(REPO, "yaml_configs", "tiny", "finetune_tiny.yaml")
TRAIN_YAML = os.path.join(REPO, "yaml_configs", "tiny", "train_tiny.yaml")
COLUMNS = ("input_ids", "labels", "position_ids", "document_ids")
ENV = {"GLOG_v": "3"}


def write_rows(path: str, rows: list[dict]) -> str:
    from mindspore.mindrecord import FileWriter
    writer = FileWriter(path, 1)
    writer.add_schema({c: {"type": "int32", "shape": [len(rows[0]["input_ids"])]} for c in COLUMNS}, "packed")
    writer.write_raw_data([{c: np.asarray(r[c], np.int32) for c in COLUMNS} for r in rows])
    writer.commit()
    return path


def packed_row(docs: list[np.ndarray], trained: list[np.ndarray], length: int = 33) -> dict:
    """One row of the preprocess contract: documents back to back, then padding (pad id 3, label -100,
    document 0, positions counting on); `trained[d]` marks document d's labelled tokens (its first never is)."""
    ids = np.full(length, 3, np.int32)
    labels = np.full(length, -100, np.int32)
    positions, documents = np.zeros(length, np.int32), np.zeros(length, np.int32)
    start = 0
    for d, (doc, mask) in enumerate(zip(docs, trained)):
        end = start + len(doc)
        ids[start:end], positions[start:end], documents[start:end] = doc, np.arange(len(doc)), d + 1
        labels[start:end] = np.where(mask, doc, -100)
        labels[start] = -100
        start = end
    positions[start:] = np.arange(length - start)
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "document_ids": documents}


def random_packed(rows: int = 24, length: int = 33, seed: int = 0) -> list[dict]:
    """Rows with 1-4 documents of random lengths, a prompt part without loss, 0-4 pad tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(rows):
        used = length - int(rng.integers(0, 5))
        cuts = sorted(rng.choice(np.arange(4, used - 3), r % 4, replace=False).tolist())
        bounds = [0] + cuts + [used]
        docs = [rng.integers(13, 512, b - a) for a, b in zip(bounds, bounds[1:])]
        trained = [np.arange(len(d)) >= int(rng.integers(1, max(2, len(d) // 2))) for d in docs]
        out.append(packed_row(docs, trained, length))
    return out


def write_yaml(path, base: str, **changes) -> str:
    data = yaml.safe_load(open(base, encoding="utf-8"))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = data
        for name in parents:
            node = node[name]
        node[leaf] = value
    data["train_dataset_task"]["dataset_config"] = data["train_dataset"]
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(data, fh, sort_keys=False)
    return str(path)


def train(args, cwd, engine="mindformers", ok=True):
    proc = subprocess.run([PY, os.path.join(REPO, "scripts", "train.py"), "--engine", engine, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, **ENV))
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def log_of(out_dir) -> list[dict]:
    with open(os.path.join(out_dir, "train_log.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


# ----- shared runs -----
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("mf_engine")


@pytest.fixture(scope="module")
def converted(work):
    """A tiny TeleChat2 written by convert/hf2ms.py (the starting point of a finetune)."""
    hf, ms_dir = work / "hf", work / "ms"
    subprocess.run([PY, os.path.join(REPO, "scripts", "make_tiny_hf_checkpoint.py"), str(hf), "--seq-length", "32"],
                   check=True, capture_output=True)
    subprocess.run([PY, os.path.join(REPO, "convert", "hf2ms.py"), "--src", str(hf), "--dst", str(ms_dir),
                    "--no-progress"], check=True, capture_output=True)
    return str(ms_dir)


@pytest.fixture(scope="module")
def packed(work):
    return write_rows(str(work / "packed.mindrecord"), random_packed())


@pytest.fixture(scope="module")
def eq_yaml(work):
    """24 steps = 4 epochs x 6 of 2 rows x 2 micro batches, file order, clipping at 0.5, save every 10 steps."""
    path = write_yaml(work / "eq.yaml", FINETUNE_YAML, train_dataset__data_loader__shuffle=False,
                      runner_config__epochs=4, runner_config__batch_size=2,
                      runner_config__gradient_accumulation_steps=2, runner_wrapper__max_grad_norm=0.5,
                      lr_schedule__total_steps=-1)
    data = yaml.safe_load(open(path, encoding="utf-8"))
    data["callbacks"][1]["save_checkpoint_steps"] = 10     # keep_checkpoint_max 2: steps 20 and 24 stay
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(data, fh, sort_keys=False)
    return path


@pytest.fixture(scope="module")
def mf_run(work, eq_yaml, converted, packed):
    out = work / "mf"
    proc = train(["--config", eq_yaml, "--load_checkpoint", converted, "--train_dataset", packed,
                  "--output_dir", str(out)], cwd=work)
    return str(out), proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def native_run(work, eq_yaml, converted, packed):
    from telechat_ms.train.trainer import Trainer, load_run
    config, model_overrides, parallel = load_run(eq_yaml)
    out = work / "native"
    config = config.replace(load_checkpoint=converted, dataset_dir=packed, output_dir=str(out))
    Trainer(config, model_overrides, parallel, printer=lambda line: None).train()
    return str(out)


# ----- equal to the native loop -----
def test_native_and_mindformers_give_the_same_loss_every_step(mf_run, native_run):
    mf, native = log_of(mf_run[0]), log_of(native_run)
    assert [r["step"] for r in mf] == [r["step"] for r in native] == list(range(1, 25))
    diff = np.abs(np.array([r["loss"] for r in mf]) - np.array([r["loss"] for r in native]))
    assert diff.max() <= 1e-5, diff                        # measured: <= 4.8e-7
    np.testing.assert_allclose([r["lr"] for r in mf], [r["lr"] for r in native], rtol=1e-6, atol=1e-12)
    norms = np.array([r["grad_norm"] for r in native])
    np.testing.assert_allclose([r["grad_norm"] for r in mf], norms, rtol=1e-5)
    assert (norms > 0.5).all()                             # clipping at 0.5 acts on every step
    assert "2 micro batches of 2 rows per step" in mf_run[1]   # accumulation runs in the wrapper


def test_finetune_from_converted_directory_starts_from_its_weights(mf_run, converted, packed):
    """First step = the converted model's loss on the first global batch (mean of its two micro batches), which a
    randomly initialised model does not give."""
    import mindspore as ms
    from telechat_ms import TelechatConfig, TelechatForCausalLM
    from telechat_ms.data.dataset import read_rows
    rows = {k: ms.Tensor(v[:4]) for k, v in read_rows(packed).items()}

    def loss(net):
        return np.mean([float(net(rows["input_ids"][i:i + 2], rows["labels"][i:i + 2], None, None,
                                  rows["position_ids"][i:i + 2], rows["document_ids"][i:i + 2]).asnumpy())
                        for i in (0, 2)])
    first = log_of(mf_run[0])[0]["loss"]
    assert abs(first - loss(TelechatForCausalLM.from_pretrained(converted, seq_length=32))) <= 1e-5
    ms.set_seed(0)
    assert abs(first - loss(TelechatForCausalLM(TelechatConfig.preset("tiny")))) > 1e-3


def test_document_loss_does_not_depend_on_its_neighbours(work):
    """Document A trained, its neighbours untrained: [A|B1], [A|B2], [B3|A], [A|pad] give one loss through
    MindFormers (lr 1e-20: the weights do not move). Without position_ids / document_ids (the bug issue 13
    fixed) the same rows give different losses."""
    import mindspore as ms
    from telechat_ms import TelechatConfig, TelechatForCausalLM
    rng = np.random.default_rng(1)
    a = rng.integers(13, 512, 14)
    others = [rng.integers(13, 512, n) for n in (19, 19, 19)]
    on = lambda d: np.ones(len(d), bool)          # noqa: E731
    off = lambda d: np.zeros(len(d), bool)        # noqa: E731
    rows = [packed_row([a, others[0]], [on(a), off(others[0])]), packed_row([a, others[1]], [on(a), off(others[1])]),
            packed_row([others[2], a], [off(others[2]), on(a)]), packed_row([a], [on(a)])]
    data = write_rows(str(work / "neighbours.mindrecord"), rows)
    config = write_yaml(work / "neighbours.yaml", TRAIN_YAML, train_dataset__data_loader__shuffle=False,
                        runner_config__batch_size=1, lr_schedule__learning_rate=1.0e-20,
                        lr_schedule__lr_end=0.0, lr_schedule__warmup_ratio=0.0)
    train(["--config", config, "--train_dataset", data, "--output_dir", str(work / "neighbours")], cwd=work)
    losses = [r["loss"] for r in log_of(work / "neighbours")]
    assert len(losses) == 4 and max(losses) - min(losses) <= 1e-5, losses
    # control: the model itself, with and without the document columns
    ms.set_seed(0)
    net = TelechatForCausalLM(TelechatConfig.preset("tiny"))
    t = {c: ms.Tensor(np.stack([r[c] for r in rows])) for c in COLUMNS}
    plain = [float(net(t["input_ids"][i:i + 1], t["labels"][i:i + 1]).asnumpy()) for i in range(4)]
    masked = [float(net(t["input_ids"][i:i + 1], t["labels"][i:i + 1], None, None, t["position_ids"][i:i + 1],
                        t["document_ids"][i:i + 1]).asnumpy()) for i in range(4)]
    assert max(masked) - min(masked) <= 1e-5 and max(plain) - min(plain) > 1e-3


# ----- resume through MindFormers -----
def test_resume_reproduces_the_uninterrupted_run(work, converted, packed):
    """fp16 O2 with a dynamic loss scale that moves (window 3), shuffled epochs: a job stopped after step 14
    (mid-epoch; MindFormers saves at the stop) and resumed equals the uninterrupted run: losses, scales, lr.
    Step 14 is two clean steps after an overflow, so the scale's clean-step counter decides when it grows next:
    MindFormers saves that counter but does not restore it; the engine does (ScaleCounter)."""
    config = write_yaml(work / "fp16.yaml", FINETUNE_YAML, amp_level="O2", runner_config__epochs=4,
                        runner_config__batch_size=2, runner_config__gradient_accumulation_steps=2,
                        runner_wrapper__scale_sense__loss_scale_value=2 ** 18,
                        runner_wrapper__scale_sense__scale_window=3,
                        lr_schedule__total_steps=-1)
    common = ["--config", config, "--train_dataset", packed]
    train(common + ["--load_checkpoint", converted, "--output_dir", str(work / "full")], cwd=work)
    train(common + ["--load_checkpoint", converted, "--output_dir", str(work / "cut"), "--stop_step", "14"], cwd=work)
    again = train(common + ["--output_dir", str(work / "cut"), "--resume_training"], cwd=work)
    assert "resume (MindFormers):" in again.stdout and "at step 14" in again.stdout
    full, cut = log_of(work / "full"), log_of(work / "cut")
    assert [r["step"] for r in cut] == list(range(1, 25))
    assert sum(r["overflow"] for r in full) >= 3 and len({r["scale"] for r in full}) > 1
    for key in ("loss", "scale", "lr"):
        assert [r[key] for r in cut] == [r[key] for r in full], key


def test_resume_point_resolution(tmp_path):
    """--resume_training true takes the file rank_0/meta.json names (MindFormers' choice), a file name picks
    that file; the global step is read from the checkpoint (file names carry epoch and step in the epoch)."""
    import mindspore as ms
    from telechat_ms.config.base import ConfigError
    from telechat_ms.config.train import TrainConfig
    from telechat_ms.integrations.mf_checkpoints import resolve_resume
    rank0 = tmp_path / "out" / "checkpoint" / "rank_0"
    rank0.mkdir(parents=True)
    for name, step in (("t_rank_0-2_3.ckpt", 9), ("t_rank_0-4_2.ckpt", 20), ("t_rank_0-4_6.ckpt", 24)):
        ms.save_checkpoint([{"name": "step_num", "data": ms.Tensor(step, ms.int64)}], str(rank0 / name))
    (rank0 / "meta.json").write_text(json.dumps({"last_ckpt_file": "t_rank_0-4_2.ckpt"}), encoding="utf-8")
    (tmp_path / "out" / "model_config.yaml").write_text("vocab_size: 512\n", encoding="utf-8")
    config = TrainConfig(output_dir=str(tmp_path / "out"), resume_training=True)
    point = resolve_resume(config)
    assert point.file.endswith("t_rank_0-4_2.ckpt") and point.step == 20 and point.model_dir == str(tmp_path / "out")
    point = resolve_resume(config.replace(resume_training="t_rank_0-2_3.ckpt"))
    assert point.file.endswith("t_rank_0-2_3.ckpt") and point.step == 9 and "at step 9" in point.announcement()
    with pytest.raises(ConfigError, match="t_rank_0-9_9.ckpt is not in"):
        resolve_resume(config.replace(resume_training="t_rank_0-9_9.ckpt"))
    with pytest.raises(ConfigError, match="no MindFormers checkpoint"):
        resolve_resume(config.replace(output_dir=str(tmp_path / "empty")))


# ----- MindFormers checkpoints to HF -----
def _export_and_check(work, run_dir, name):
    """merge step -> model directory -> convert/ms2hf.py -> HF; back through hf2ms: the checkpoint's weights."""
    import mindspore as ms
    model_dir, hf, back = work / f"{name}_model", work / f"{name}_hf", work / f"{name}_back"
    subprocess.run([PY, "-m", "telechat_ms.integrations.mf_export", "--src", run_dir, "--dst", str(model_dir)],
                   check=True, capture_output=True, cwd=work, env=dict(os.environ, **ENV))
    for tool, src, dst in (("ms2hf", model_dir, hf), ("hf2ms", hf, back)):
        subprocess.run([PY, os.path.join(REPO, "convert", f"{tool}.py"), "--src", str(src), "--dst", str(dst),
                        "--no-progress"], check=True, capture_output=True)
    assert os.path.isfile(hf / "config.json")
    assert os.path.isfile(hf / "tokenizer.model") == os.path.isfile(run_dir / "tokenizer.model")
    rank0 = sorted((run_dir / "checkpoint" / "rank_0").glob("*.ckpt"))[-1]
    saved = ms.load_checkpoint(str(rank0))
    from telechat_ms.io.checkpoint import weight_files
    files, _ = weight_files(str(back))
    restored = {}
    for file in files:
        restored.update(ms.load_checkpoint(file, format="safetensors"))
    assert restored and all(np.array_equal(restored[k].asnumpy(), saved[k].asnumpy()) for k in restored)
    return saved


def test_single_rank_checkpoint_reaches_hf(work, mf_run):
    _export_and_check(work, work / "mf", "single")


def test_two_data_parallel_workers_checkpoints_reach_hf(work, packed):
    """One short msrun: 2 CPU workers, data parallel, 3 steps; both ranks' files hold the same weights; the merge
    step takes rank 0 and the weights reach HF."""
    import mindspore as ms
    out = work / "dp"
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "msrun_train.sh"), "--config", TRAIN_YAML,
                           "--workers", "2", "--engine", "mindformers", "--master_port", "8471",
                           "--log_dir", str(work / "dp_log"), "--", "--train_dataset", _rows33(work),
                           "--output_dir", str(out), "--batch_size", "1", "--stop_step", "3"],
                          cwd=work, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, DEVICE_TARGET="CPU", PYTHON=PY, **ENV))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    files = [sorted((out / "checkpoint" / f"rank_{r}").glob("*.ckpt"))[-1] for r in (0, 1)]
    a, b = (ms.load_checkpoint(str(f)) for f in files)
    assert all(np.array_equal(a[k].asnumpy(), b[k].asnumpy()) for k in a if k.startswith(("model.", "lm_head")))
    assert len(log_of(out)) == 3
    _export_and_check(work, out, "dp")


def _rows33(work) -> str:
    path = work / "rows33.mindrecord"
    if not path.exists():
        write_rows(str(path), random_packed(rows=12, seed=3))
    return str(path)


# ----- every yaml key honoured, refused with one line, or inert -----
def _merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for key, value in patch.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


NATIVE, BOTH = ("native",), ("native", "mindformers")
REFUSALS = [   # (yaml patch, engines that refuse it, what the one error line says): one case per class
    ({"runner_config": {"sink_mode": True}}, NATIVE, "honoured only by --engine mindformers, not by the native "
                                                     "loop: runner_config.sink_mode: True"),          # mf_only key
    ({"callbacks": [{"type": "MFLossMonitor"}, {"type": "SummaryMonitor"}]}, NATIVE,
     "callbacks.SummaryMonitor"),                                                                     # mf_only callback
    ({"use_parallel": True, "parallel": {"parallel_mode": 1}}, NATIVE, "parallel.parallel_mode: 1: semi-auto"),
    ({"do_eval": True}, BOTH, "do_eval: True is not supported"),                                      # refused key
    ({"train_dataset": {"eod_reset": True}}, BOTH, "eod_reset: True is not supported"),
    ({"model": {"model_config": {"fine_grain_interleave": 2}}}, BOTH, "fine_grain_interleave: 2 is not supported"),
    ({"model": {"model_config": {"use_past": True}}}, BOTH, "use_past: True is not supported"),      # model run key
    ({"model": {"model_config": {"bogus": 1}}}, BOTH, "unknown config key 'bogus'"),                  # unknown key
    ({"parallel_config": {"context_parallel": 2}}, BOTH, "context_parallel: 2 is not supported"),     # layout field
    ({"recompute_config": {"select_recompute_exclude": {"w1": [0]}}}, BOTH, "select_recompute_exclude"),
    ({"parallel_config": {"model_parallel": 2}}, BOTH, "use_parallel is false"),                      # dropped layout
    ({"moe_config": {"expert_num": 8}}, BOTH, "moe_config.expert_num: 8 disagrees with model_config.num_experts"),
    ({"train_dataset": {"input_columns": ["input_ids", "labels"]}}, BOTH, "missing ['position_ids', 'document_ids']"),
    ({"use_parallel": True, "resume_training": True}, ("mindformers",), "with use_parallel on CPU MindFormers cannot "
                                                                      "load a checkpoint"),   # engine limit on CPU
]


@pytest.fixture(scope="module")
def synthetic(work):
    from .test_train import write_synthetic
    return write_synthetic(str(work / "synthetic.mindrecord"))


def _one_error(capsys, args, engine) -> str:
    from telechat_ms.train.cli import train_main
    assert train_main(["--engine", engine, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("patch, engines, message", REFUSALS)
def test_refused_settings_are_one_line(tmp_path, synthetic, capsys, patch, engines, message):
    data = yaml.safe_load(open(TRAIN_YAML, encoding="utf-8"))
    path = tmp_path / "refused.yaml"
    path.write_text(yaml.safe_dump(_merge(data, patch)), encoding="utf-8")
    args = ["--config", str(path), "--train_dataset", synthetic, "--output_dir", str(tmp_path / "out")]
    for engine in BOTH:
        if engine in engines:
            assert message in _one_error(capsys, args, engine), engine
    assert "mindformers" not in sys.modules          # refused before MindFormers is imported


def test_dataset_missing_a_named_column_is_one_error(work, capsys):
    from mindspore.mindrecord import FileWriter
    path = str(work / "two_columns.mindrecord")
    writer = FileWriter(path, 1)
    writer.add_schema({c: {"type": "int32", "shape": [33]} for c in ("input_ids", "labels")}, "old")
    writer.write_raw_data([{"input_ids": np.full(33, 5, np.int32), "labels": np.full(33, 5, np.int32)}] * 2)
    writer.commit()
    args = ["--config", TRAIN_YAML, "--train_dataset", path, "--output_dir", str(work / "cols")]
    for engine in BOTH:
        err = _one_error(capsys, args, engine)
        assert f"{path}: no column position_ids, document_ids" in err, err


def test_checkpoint_not_matching_the_model_is_one_error(work, converted, synthetic, capsys):
    """MindFormers would log the mismatch and train the missing tensors from random values."""
    data = _merge(yaml.safe_load(open(FINETUNE_YAML, encoding="utf-8")),
                  {"model": {"model_config": {"ffn_hidden_size": 96}}})
    path = work / "wrong_shape.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    err = _one_error(capsys, ["--config", str(path), "--load_checkpoint", converted, "--train_dataset", synthetic,
                              "--output_dir", str(work / "wrong")], "mindformers")
    assert "tensor(s) of another shape" in err and "feed_forward" in err, err
    # MindFormers' rule for a whole checkpoint under use_parallel (checked on the Ascend path, before it starts)
    err = _one_error(capsys, ["--config", FINETUNE_YAML, "--load_checkpoint", converted, "--train_dataset", synthetic,
                              "--output_dir", str(work / "wrong"), "--use_parallel", "true", "--device_target",
                              "Ascend"], "mindformers")
    assert "set auto_trans_ckpt: True" in err, err
    assert "mindformers" not in sys.modules


def test_fresh_run_into_used_output_dir_is_refused(tmp_path, synthetic, capsys):
    """As in the native loop: MindFormers' checkpoint rotation would mix two runs."""
    rank0 = tmp_path / "out" / "checkpoint" / "rank_0"
    rank0.mkdir(parents=True)
    (rank0 / "telechat_tiny_rank_0-1_4.ckpt").write_bytes(b"x")
    err = _one_error(capsys, ["--config", TRAIN_YAML, "--train_dataset", synthetic, "--output_dir",
                              str(tmp_path / "out")], "mindformers")
    assert "already holds checkpoints of an earlier run" in err and "--overwrite_output_dir" in err
    assert "mindformers" not in sys.modules


def test_consecutive_skipped_steps_stop_the_run(work, synthetic):
    """max_consecutive_skips (MindFormers has no such stop): fp16 from a loss scale of 2^40 overflows at every
    step; after 3 in a row the run stops with one error line and exit 2."""
    config = write_yaml(work / "skips.yaml", TRAIN_YAML, amp_level="O2", max_consecutive_skips=3,
                        runner_wrapper__scale_sense__loss_scale_value=2 ** 40)
    proc = train(["--config", config, "--train_dataset", synthetic, "--output_dir", str(work / "skips")], cwd=work,
                 ok=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: step 3: 3 consecutive steps skipped"), \
        proc.stderr[-2000:]
    assert [r["overflow"] for r in log_of(work / "skips")] == [True] * 3


def test_every_training_yaml_passes_mindformers_config_machinery_and_ours():
    """Each finetune/pretrain yaml (sizes and families) through MindFormerConfig, build_parallel_config, its rule
    checks, the registered TelechatConfig and the layout handed to the model; and our strict reader."""
    import glob
    paths = sorted(p for p in glob.glob(os.path.join(REPO, "yaml_configs", "**", "*.yaml"), recursive=True)
                   if os.sep + "model" + os.sep not in p and os.sep + "base" + os.sep not in p and "predict" not in p)
    script = ("import json, sys\nfrom telechat_ms.integrations.mf_yaml import check_yaml\n"
              "print('RESULT' + json.dumps({p: check_yaml(p)['layout'] for p in sys.argv[1:]}))\n")
    proc = subprocess.run([PY, "-c", script, *paths], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, **ENV))
    assert proc.returncode == 0, proc.stderr[-3000:]
    layouts = json.loads(proc.stdout.split("RESULT", 1)[1].splitlines()[0])
    assert len(layouts) == len(paths) >= 20
    assert layouts[os.path.join(REPO, "yaml_configs", "finetune_telechat2_115b.yaml")].startswith("dp8 mp8 pp8")
