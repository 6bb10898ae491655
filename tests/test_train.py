"""Native training loop on CPU (tiny model, synthetic MindRecord): AMP levels, loss scaling, resume, checkpoints."""
import dataclasses
import json
import os

import numpy as np
import pytest

from telechat_ms import TelechatForCausalLM
from telechat_ms.config.base import ConfigError
from telechat_ms.config.train import LossScaleConfig, TrainConfig
from telechat_ms.train import checkpoint as ckpt
from telechat_ms.train.trainer import Trainer, load_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_YAML = os.path.join(REPO, "yaml_configs", "tiny", "train_tiny.yaml")
COLUMNS = ("input_ids", "labels", "position_ids", "document_ids")


def write_synthetic(path: str, rows: int = 16, length: int = 33, patterns: int = 4, seed: int = 0,
                    split: int = 0) -> str:
    """MindRecord with the preprocess column contract: `patterns` fixed random sequences repeated (learnable).
    `split` > 0 packs two documents per row, the second starting at `split` (its first label -100)."""
    from mindspore.mindrecord import FileWriter
    base = np.random.default_rng(seed).integers(13, 512, (patterns, length)).astype(np.int32)
    writer = FileWriter(path, 1)
    writer.add_schema({c: {"type": "int32", "shape": [length]} for c in COLUMNS}, "synthetic")
    starts = [0, split] if split else [0]
    positions = np.concatenate([np.arange(b - a) for a, b in zip(starts, starts[1:] + [length])]).astype(np.int32)
    documents = np.concatenate([np.full(b - a, d + 1) for d, (a, b) in
                                enumerate(zip(starts, starts[1:] + [length]))]).astype(np.int32)
    records = []
    for i in range(rows):
        ids = base[i % patterns]
        labels = ids.copy()
        labels[starts] = -100
        records.append({"input_ids": ids, "labels": labels, "position_ids": positions, "document_ids": documents})
    writer.write_raw_data(records)
    writer.commit()
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic(str(tmp_path_factory.mktemp("data") / "train.mindrecord"))


def make_trainer(dataset, out, resume=False, **changes):
    config, model_overrides, parallel = load_run(TINY_YAML)
    config = config.replace(dataset_dir=dataset, output_dir=str(out), resume_training=resume, **changes)
    return Trainer(config, model_overrides, parallel, printer=lambda line: None)


def weights(trainer):
    return {k: v.asnumpy().copy() for k, v in trainer.network.parameters_dict().items()}


@pytest.mark.parametrize("level", ["O0", "O1", "O2"])
def test_amp_level_lowers_loss(dataset, tmp_path, level):
    trainer = make_trainer(dataset, tmp_path, amp_level=level, epochs=4)     # 4 x 8 = 32 steps
    result = trainer.train()
    assert len(result.losses) == 32
    assert np.isfinite(result.losses).all()
    first, last = np.mean(result.losses[:4]), np.mean(result.losses[-4:])
    assert last < first - 1.0, (level, first, last)
    expected = "float16" if level == "O2" else "float32"
    assert trainer.model_config.compute_dtype == expected and trainer.model_config.param_dtype == "float32"
    assert all(p.dtype == np.float32 for p in weights(trainer).values())      # fp32 master weights


def test_overflow_step_is_skipped_and_scale_drops(dataset, tmp_path):
    scale = LossScaleConfig(dynamic=True, loss_scale_value=2.0 ** 24, scale_window=1000)
    trainer = make_trainer(dataset, tmp_path, amp_level="O2", loss_scale=scale, epochs=4)
    before = weights(trainer)
    first = trainer.train(max_steps=1).records[0]
    assert first["overflow"] and first["scale"] == 2.0 ** 24
    assert trainer.scaler.value == 2.0 ** 23
    after = weights(trainer)
    assert all(np.array_equal(before[k], after[k]) for k in before)          # skipped: weights untouched
    assert int(trainer.optimizer.step.asnumpy()) == 0
    rest = trainer.train(max_steps=31).records
    assert any(r["overflow"] for r in rest) and not rest[-1]["overflow"]
    assert trainer.scaler.value < 2.0 ** 23
    assert rest[-1]["loss"] < first["loss"] - 1.0


def test_resume_reproduces_uninterrupted_run(dataset, tmp_path):
    """fp16 O2 with a moving dynamic loss scale, gradient accumulation, shuffled epochs: a run stopped after
    step 6 and resumed (from its step-4 checkpoint, in a fresh trainer) repeats the uninterrupted losses."""
    setup = dict(amp_level="O2", epochs=2, batch_size=1, gradient_accumulation_steps=2,
                 loss_scale=LossScaleConfig(dynamic=True, loss_scale_value=2.0 ** 18, scale_window=3),
                 checkpoint=ckpt_config(every=4, keep=2))
    full = make_trainer(dataset, tmp_path / "full", **setup).train()
    assert len(full.losses) == 16
    assert len({r["scale"] for r in full.records}) > 1                        # the scale moved during the run
    stopped = make_trainer(dataset, tmp_path / "cut", **setup)
    stopped.train(max_steps=6)                                                # "killed" after step 6
    resumed = make_trainer(dataset, tmp_path / "cut", resume=True, **setup)
    assert resumed.start_step == 4
    rest = resumed.train()
    np.testing.assert_allclose(rest.losses, full.losses[4:], rtol=0, atol=1e-5)
    a = load_weights(full.checkpoint)
    b = load_weights(rest.checkpoint)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-5
    kept = [os.path.basename(p) for p in ckpt.complete_steps(str(tmp_path / "full" / "checkpoint"))]
    assert kept == ["step_00000012", "step_00000016"]                         # keep_checkpoint_max 2
    log = [json.loads(line) for line in open(tmp_path / "cut" / "train_log.jsonl", encoding="utf-8")]
    assert [r["step"] for r in log] == list(range(1, 7)) + list(range(5, 17))  # resumed runs append


def ckpt_config(every, keep):
    from telechat_ms.config.train import CheckpointConfig
    return CheckpointConfig(save_checkpoint_steps=every, keep_checkpoint_max=keep)


def load_weights(path):
    import mindspore as ms
    params = ms.load_checkpoint(os.path.join(path, "model.safetensors"), format="safetensors")
    return {k: v.asnumpy() for k, v in params.items()}


def test_save_killed_midway_keeps_previous_checkpoint(dataset, tmp_path, monkeypatch):
    trainer = make_trainer(dataset, tmp_path, checkpoint=ckpt_config(every=2, keep=3), epochs=1)
    real_write, calls = ckpt.write_tensors, []

    def dies_on_second_save(tensors, path):
        calls.append(path)
        if len(calls) == 4:                     # step 4: the model file is written, the optimizer file dies
            raise KeyboardInterrupt("killed while writing " + path)
        real_write(tensors, path)
    monkeypatch.setattr(ckpt, "write_tensors", dies_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    root = tmp_path / "checkpoint"
    assert sorted(os.listdir(root)) == ["latest", "step_00000002"]           # no partial step_4, no temp dir
    # a kill that left a temporary directory behind is ignored, and removed by the next save
    (root / ".tmp-step_00000004-x").mkdir()
    (root / ".tmp-step_00000004-x" / "model.safetensors").write_bytes(b"partial")
    assert ckpt.latest(str(root)) == str(root / "step_00000002")
    model = TelechatForCausalLM.from_pretrained(str(root / "step_00000002"))   # loadable model directory
    assert model.config.seq_length == 32
    monkeypatch.setattr(ckpt, "write_tensors", real_write)
    resumed = make_trainer(dataset, tmp_path, resume=True, checkpoint=ckpt_config(every=2, keep=3), epochs=1)
    assert resumed.start_step == 2
    resumed.train(max_steps=2)
    assert sorted(os.listdir(root)) == ["latest", "step_00000002", "step_00000004"]


def test_finetune_starts_from_a_model_directory(dataset, tmp_path):
    first = make_trainer(dataset, tmp_path / "a", epochs=2)
    done = first.train()
    tuned = make_trainer(dataset, tmp_path / "b", run_mode="finetune", load_checkpoint=done.checkpoint,
                         stop_step=2, amp_level="O0")
    result = tuned.train()
    assert result.losses[0] < done.losses[0] - 1.0                          # starts from the trained weights
    assert result.checkpoint.endswith("step_00000002")
    from_file = make_trainer(dataset, tmp_path / "d", run_mode="finetune", stop_step=1,
                             load_checkpoint=os.path.join(done.checkpoint, "model.safetensors"))
    assert from_file.train().losses[0] == pytest.approx(result.losses[0], abs=1e-6)   # same weights
    with pytest.raises(ConfigError, match="finetune needs load_checkpoint"):
        make_trainer(dataset, tmp_path / "c", run_mode="finetune")


def test_packed_rows_train_with_document_masks(tmp_path):
    """Rows holding two documents: the step's loss is the model's loss with position_ids/document_ids."""
    import mindspore as ms
    from telechat_ms.data.dataset import read_rows
    data = write_synthetic(str(tmp_path / "packed.mindrecord"), split=13)
    trainer = make_trainer(data, tmp_path / "out", shuffle=False, stop_step=1)
    rows = {k: ms.Tensor(v[:2]) for k, v in read_rows(data).items()}       # step 1 = rows 0, 1 (no shuffle)
    net = trainer.network
    with_docs = float(net(rows["input_ids"], rows["labels"], None, None, rows["position_ids"],
                          rows["document_ids"]).asnumpy())
    plain = float(net(rows["input_ids"], rows["labels"]).asnumpy())
    first = trainer.train().losses[0]
    assert first == pytest.approx(with_docs, abs=1e-5) and abs(with_docs - plain) > 1e-3


def test_learning_rate_schedule():
    from telechat_ms.config.train import LrScheduleConfig
    from telechat_ms.train.optim import learning_rate
    cosine = LrScheduleConfig(learning_rate=1.0, lr_end=0.1, warmup_steps=10, total_steps=110)
    assert learning_rate(cosine, 0, 0) == 0.0 and learning_rate(cosine, 5, 0) == 0.5
    assert learning_rate(cosine, 10, 0) == 1.0
    assert learning_rate(cosine, 60, 0) == pytest.approx(0.55)
    assert learning_rate(cosine, 110, 0) == pytest.approx(0.1)
    ratio = LrScheduleConfig(learning_rate=1.0, warmup_ratio=0.5, total_steps=-1)
    assert learning_rate(ratio, 2, run_steps=8) == 0.5                     # total -1: the run's steps


def test_weight_decay_skips_biases_and_norms():
    from telechat_ms import TelechatConfig
    from telechat_ms.train.optim import decays
    net = TelechatForCausalLM(TelechatConfig.preset("tiny"))
    flags = {p.name: decays(p) for p in net.trainable_params()}
    assert flags["model.layers.0.attention.wq.weight"] and flags["lm_head.weight"]
    assert not flags["model.layers.0.attention.wo.bias"] and not flags["model.layers.0.ffn_norm.weight"]
    assert not flags["model.norm_out.weight"]


def test_size_yamls_parse():
    """The per-size finetune/pretrain yamls (bases resolved) pass the strict training-config reader."""
    import glob
    from telechat_ms import TelechatConfig
    paths = glob.glob(os.path.join(REPO, "yaml_configs", "*train*.yaml")) + \
        glob.glob(os.path.join(REPO, "yaml_configs", "finetune*.yaml"))
    assert paths
    for path in paths:
        config, model_overrides, parallel = load_run(path)
        assert config.device_target == "Ascend" and config.optimizer.betas == (0.9, 0.95)
        assert TelechatConfig.from_dict(model_overrides).num_parameters() > 1e9 and parallel["data_parallel"] >= 1


def test_train_config_reads_mindformers_yaml():
    config = TrainConfig.from_yaml(TINY_YAML)
    assert config.optimizer.betas == (0.9, 0.95) and config.lr_schedule.warmup_ratio == 0.1
    assert config.loss_scale.dynamic and config.loss_scale.loss_scale_value == 65536
    assert config.checkpoint.save_checkpoint_steps == 100 and config.checkpoint.keep_checkpoint_max == 2
    assert config.device_target == "CPU" and config.batch_size == 2


@pytest.mark.parametrize("patch, message", [
    ({"learning_rat": 1}, "unknown config key 'learning_rat'"),
    ({"optimizer": {"type": "AdamW", "beta": [0.9, 0.95]}}, "optimizer: unknown config key 'beta'"),
    ({"runner_config": {"epochs": 1, "bach_size": 2}}, "runner_config: unknown key 'bach_size'"),
    ({"amp_level": "O3"}, "amp_level must be one of"),
    ({"callbacks": [{"type": "MyMonitor"}]}, "unknown callback type 'MyMonitor'"),
])
def test_bad_yaml_is_one_clear_error(tmp_path, capsys, patch, message):
    import yaml
    from telechat_ms.train.cli import train_main
    data = yaml.safe_load(open(TINY_YAML, encoding="utf-8"))
    data.update(patch)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert train_main(["--config", str(path), "--train_dataset", "x.mindrecord"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(path) in err


def test_missing_dataset_is_one_clear_error(tmp_path, capsys):
    from telechat_ms.train.cli import train_main
    missing = str(tmp_path / "nope.mindrecord")
    assert train_main(["--config", TINY_YAML, "--train_dataset", missing, "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {missing}: dataset file not found"
    assert train_main(["--config", TINY_YAML]) == 2
    assert "dataset_dir is empty" in capsys.readouterr().err


def test_recompute_is_applied_and_changes_no_loss(dataset, tmp_path):
    """recompute_config is honoured by the native loop (memory, not values): full recompute with
    recompute_slice_activation on every layer; the losses equal the run without recompute."""
    plain = make_trainer(dataset, tmp_path / "a", stop_step=3, amp_level="O0")
    parallel = plain.config.parallel.replace(recompute=True, recompute_slice_activation=True)
    again = make_trainer(dataset, tmp_path / "b", stop_step=3, amp_level="O0", parallel=parallel)
    for layer in again.network.model.layers:
        assert layer.recompute_flags == {"recompute_slice_activation": True} and layer._has_config_recompute
    assert not plain.network.model.layers[0]._has_config_recompute
    np.testing.assert_allclose(again.train().losses, plain.train().losses, rtol=0, atol=1e-6)


def test_docs_list_every_yaml_key():
    """docs/training.md's key table names every key config/train_keys.py and config/parallel.py classify."""
    from telechat_ms.config import parallel, train_keys
    docs = open(os.path.join(REPO, "docs", "training.md"), encoding="utf-8").read()
    tables = (train_keys.TOP, train_keys.CONTEXT, train_keys.RUNNER, train_keys.WRAPPER, train_keys.DATASET,
              train_keys.LOADER, train_keys.CHECKPOINT, train_keys.TENSORBOARD, train_keys.MODEL_RUN,
              train_keys.CALLBACKS_MF_ONLY)
    names = {key for table in tables for key in table} | set(train_keys.CONTEXT_APPLIED)
    names |= set(train_keys.PARALLEL_SEMI_AUTO) | set(parallel.NEUTRAL_ONLY_KEYS)
    names |= parallel.IGNORED_PARALLEL_KEYS | parallel.IGNORED_RECOMPUTE_KEYS | set(train_keys.MOE_FIELDS)
    names |= {f.name for f in dataclasses.fields(parallel.ParallelConfig) if f.name != "extra"}
    missing = sorted(n for n in names if f"`{n}`" not in docs and f".{n}`" not in docs)
    assert not missing, missing
