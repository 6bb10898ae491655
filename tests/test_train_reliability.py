"""Training failure behaviour (issue 14): used output directories, crash-safe rotation, the lr schedule across
resumes, non-finite values, yaml numbers, and one `error:` line (exit 2) for bad datasets and checkpoints.

Runs are tiny (16 rows of 33 tokens, batch 2: 8 steps per epoch) and use PYNATIVE mode, which runs a few
steps faster than a graph compile. The kill -9 test starts `scripts/train.py` in a subprocess that kills itself
at a named point of the checkpoint code (TELECHAT_MS_TEST_KILL_AT, read only by train/checkpoint.py).
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from telechat_ms.config.base import ConfigError
from telechat_ms.config.train import CheckpointConfig, LossScaleConfig, LrScheduleConfig, TrainConfig
from telechat_ms.train import checkpoint as ckpt
from telechat_ms.train.cli import build_train_parser, train_main
from telechat_ms.train.trainer import Trainer, TrainingError, load_run

from .test_train import TINY_YAML, write_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic(str(tmp_path_factory.mktemp("data") / "train.mindrecord"))


def trainer(data, out, lines=None, model=None, resume=False, **changes):
    """A tiny PYNATIVE trainer; `lines` collects what it prints; `model` overrides model.model_config keys."""
    config, overrides, parallel = load_run(TINY_YAML)
    config = config.replace(dataset_dir=data, output_dir=str(out), resume_training=resume, mode=1, **changes)
    printer = (lambda line: None) if lines is None else lines.append
    return Trainer(config, {**overrides, **(model or {})}, parallel, printer=printer)


def every(steps, keep):
    return CheckpointConfig(save_checkpoint_steps=steps, keep_checkpoint_max=keep)


def derived_yaml(tmp_path, name="run.yaml", **sections) -> str:
    """A run yaml = the tiny yaml with `sections` merged over it (PYNATIVE mode)."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"base_config": TINY_YAML, "context": {"mode": 1}, **sections}),
                    encoding="utf-8")
    return str(path)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def log_steps(out) -> list:
    with open(os.path.join(out, "train_log.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line)["step"] for line in fh]


# ----- 1. a fresh run into a used output_dir; rotation keeps the step just written -----

def test_fresh_run_into_a_used_output_dir_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    trainer(data, out, stop_step=4, checkpoint=every(2, 2)).train()
    root = out / "checkpoint"
    with pytest.raises(ConfigError, match=r"already holds checkpoints.*step_00000004.*--resume_training.*"
                                          r"--overwrite_output_dir"):
        trainer(data, out, stop_step=2)
    assert train_main(["--config", derived_yaml(tmp_path), "--train_dataset", data, "--output_dir", str(out),
                       "--stop_step", "2"]) == 2
    assert str(root) in one_error_line(capsys)
    assert sorted(os.listdir(root)) == ["latest", "step_00000002", "step_00000004"]    # the old run untouched
    assert log_steps(out) == [1, 2, 3, 4]
    # an explicit overwrite starts over: the old steps go, the new run's checkpoint stays and is `latest`
    result = trainer(data, out, stop_step=2, checkpoint=every(1, 1), overwrite_output_dir=True).train()
    assert sorted(os.listdir(root)) == ["latest", "step_00000002"]
    assert ckpt.latest(str(root)) == result.checkpoint and log_steps(out) == [1, 2]
    assert build_train_parser().parse_args(["--config", "x", "--overwrite_output_dir"]).overwrite_output_dir
    with pytest.raises(ConfigError, match="overwrite_output_dir.*resume_training"):
        trainer(data, out, resume=True, overwrite_output_dir=True)
    with pytest.raises(ConfigError, match="lies in .*which overwrite_output_dir would delete"):
        trainer(data, out, overwrite_output_dir=True, run_mode="finetune", load_checkpoint=result.checkpoint)


def test_rotation_keeps_the_step_just_written(data, tmp_path):
    """Resuming from an older step (steps 3 and 4 of the abandoned continuation exist) and saving step 2 with
    keep 2: step 2 is the newest of this run and stays; the later steps are left until this run reaches them."""
    trainer(data, tmp_path, stop_step=4, checkpoint=every(1, 4)).train()
    root = str(tmp_path / "checkpoint")
    result = trainer(data, tmp_path, resume="step_00000001", stop_step=2, checkpoint=every(1, 2)).train()
    assert result.checkpoint.endswith("step_00000002") and ckpt.is_complete(result.checkpoint)
    assert ckpt.latest(root) == result.checkpoint
    assert sorted(os.listdir(root)) == ["latest", "step_00000001", "step_00000002", "step_00000003",
                                        "step_00000004"]


# ----- 4. keep-K rotation under kill -9 -----

def test_kill_inside_rotation_never_leaves_a_complete_looking_partial_step(data, tmp_path):
    run_yaml = derived_yaml(tmp_path, callbacks=[{"type": "CheckpointMonitor", "save_checkpoint_steps": 1,
                                                  "keep_checkpoint_max": 1}])
    out = tmp_path / "out"
    env = {**os.environ, "TELECHAT_MS_TEST_KILL_AT": "rotate-delete", "GLOG_v": "3"}
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train.py"), "--config", run_yaml,
                           "--train_dataset", data, "--output_dir", str(out), "--stop_step", "3"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-2000:]   # killed while deleting step 1
    root = out / "checkpoint"
    steps = sorted(p for p in os.listdir(root) if p.startswith("step_"))
    for name in steps:                        # what is left under a step name is whole, or not a step at all
        files = set(os.listdir(root / name))
        assert {"model.safetensors", "optimizer.safetensors", "trainer_state.json"} <= files, (name, files)
    assert ckpt.latest(str(root)) == str(root / "step_00000002")
    assert any(p.startswith(".tmp-") for p in os.listdir(root))              # the half-deleted remains, hidden
    resumed = trainer(data, out, resume=True, stop_step=3, checkpoint=every(1, 1))
    assert resumed.start_step == 2
    resumed.train()
    assert sorted(os.listdir(root)) == ["latest", "step_00000003"]           # the next save cleaned up


def test_incomplete_step_directory_is_not_complete_and_the_next_save_removes_it(data, tmp_path):
    root = tmp_path / "checkpoint"
    (root / "step_00000001").mkdir(parents=True)        # left by an older version's non-atomic deletion
    (root / "step_00000001" / "trainer_state.json").write_text('{"step": 1}', encoding="utf-8")
    assert not ckpt.is_complete(str(root / "step_00000001")) and ckpt.latest(str(root)) is None
    (root / "step_00000009").mkdir()                    # an incomplete step newer than the next save
    (root / "step_00000009" / "model_config.yaml").write_text("x", encoding="utf-8")
    run = trainer(data, tmp_path / "x", stop_step=1)
    ckpt.save(str(root), 2, run.network.parameters_dict(), run.optimizer.state(), {"schedule": {}},
              run.export_config, keep=3)
    assert sorted(os.listdir(root)) == ["latest", "step_00000002"]


# ----- 3. the lr schedule across stop_step and resume -----

def test_sliced_run_repeats_the_uninterrupted_lr_and_losses(data, tmp_path):
    """total_steps -1 = epochs x steps per epoch (8 here) whatever stop_step is: a job stopped at step 3 and
    resumed runs the lr and losses of the uninterrupted job (before: a cosine over 3 steps, then over 8)."""
    full = trainer(data, tmp_path / "full", checkpoint=every(4, 2)).train()
    first = trainer(data, tmp_path / "cut", stop_step=3, checkpoint=every(4, 2)).train()
    rest = trainer(data, tmp_path / "cut", resume=True, checkpoint=every(4, 2)).train()
    assert rest.start_step == 3                                              # stop_step saves its step
    records = first.records + rest.records
    assert [r["lr"] for r in records] == [r["lr"] for r in full.records]
    assert [r["loss"] for r in records] == [r["loss"] for r in full.records]                 # bit-exact
    cosine_at_7_of_8 = 3e-4 + (3e-3 - 3e-4) * 0.5 * (1 + math.cos(math.pi * 7 / 8))      # no warmup (0.1 x 8)
    assert full.records[-1]["lr"] == pytest.approx(cosine_at_7_of_8, rel=1e-9)


def test_resume_with_another_schedule_is_refused_naming_both_values(data, tmp_path):
    trainer(data, tmp_path, stop_step=2, checkpoint=every(2, 1)).train()         # epochs 1: 8 steps
    with pytest.raises(ConfigError, match=r"epochs: checkpoint 1, this run 2.*total_steps: checkpoint 8, "
                                          r"this run 16"):
        trainer(data, tmp_path, resume=True, epochs=2)
    schedule = LrScheduleConfig(learning_rate=3e-3, lr_end=3e-4, warmup_ratio=0.1, total_steps=100)
    with pytest.raises(ConfigError, match=r"total_steps: checkpoint 8, this run 100"):
        trainer(data, tmp_path, resume=True, lr_schedule=schedule)
    with pytest.raises(ConfigError, match=r"global_batch: checkpoint 2, this run 4"):
        trainer(data, tmp_path, resume=True, batch_size=4)


def test_resume_at_or_past_stop_step_says_nothing_was_done(data, tmp_path, capsys):
    trainer(data, tmp_path, stop_step=2, checkpoint=every(2, 1)).train()
    lines = []
    result = trainer(data, tmp_path, lines, resume=True, stop_step=2).train()
    assert result.losses == [] and result.checkpoint == str(tmp_path / "checkpoint" / "step_00000002")
    assert any(line.startswith("nothing to do: resumed at step 2") and "stop_step 2" in line for line in lines)
    assert train_main(["--config", derived_yaml(tmp_path), "--train_dataset", data, "--output_dir", str(tmp_path),
                       "--resume_training", "--stop_step", "1"]) == 0
    assert "nothing to do: resumed at step 2" in capsys.readouterr().out


# ----- 7. non-finite values -----

@pytest.mark.parametrize("value", [float("nan"), float("inf"), "nan"])
def test_non_finite_learning_rate_is_refused(value):
    with pytest.raises(ConfigError, match="lr_schedule.learning_rate must be a finite number"):
        LrScheduleConfig(learning_rate=value)


def test_non_finite_yaml_value_is_one_error_line(data, tmp_path, capsys):
    path = derived_yaml(tmp_path, lr_schedule={"learning_rate": float("nan")})
    assert "learning_rate: .nan" in open(path, encoding="utf-8").read()
    assert train_main(["--config", path, "--train_dataset", data, "--output_dir", str(tmp_path / "o")]) == 2
    err = one_error_line(capsys)
    assert path in err and "learning_rate must be a finite number" in err and "nan" in err
    assert not os.path.exists(tmp_path / "o" / "checkpoint")


def poison(run):
    """NaN in one weight: every loss and gradient is NaN from step 1 on."""
    param = run.network.parameters_dict()["model.norm_out.weight"]
    import mindspore as ms
    param.set_data(ms.Tensor(param.asnumpy() * np.nan))


def test_non_finite_loss_at_loss_scale_1_stops_without_saving(data, tmp_path):
    run = trainer(data, tmp_path, stop_step=4, checkpoint=every(1, 2),
                  loss_scale=LossScaleConfig(dynamic=False, loss_scale_value=1.0))
    poison(run)
    with pytest.raises(TrainingError, match=r"step 1: loss nan at loss scale 1"):
        run.train()
    assert not os.path.exists(tmp_path / "checkpoint")                          # no NaN checkpoint


def test_consecutive_skipped_steps_stop_the_run(data, tmp_path, capsys):
    run = trainer(data, tmp_path, stop_step=8, checkpoint=every(2, 2), max_consecutive_skips=3,
                  loss_scale=LossScaleConfig(dynamic=True, loss_scale_value=65536.0))
    poison(run)
    with pytest.raises(TrainingError, match=r"step 3: 3 consecutive steps skipped.*max_consecutive_skips 3"):
        run.train()
    assert not os.path.exists(tmp_path / "checkpoint")
    assert TrainConfig().max_consecutive_skips == 50
    with pytest.raises(ConfigError, match="max_consecutive_skips must be a positive integer"):
        TrainConfig(max_consecutive_skips=0)
    # through the command line: NaN weights from a file, the default fixed scale of fp32 (1): one line, exit 2
    import mindspore as ms
    ms.save_checkpoint(run.network.parameters_dict(), str(tmp_path / "nan.safetensors"), format="safetensors")
    path = derived_yaml(tmp_path, runner_wrapper={"scale_sense": 1.0})
    assert train_main(["--config", path, "--train_dataset", data, "--output_dir", str(tmp_path / "o"),
                       "--load_checkpoint", str(tmp_path / "nan.safetensors")]) == 2
    assert "step 1: loss nan at loss scale 1" in one_error_line(capsys)


# ----- 10. yaml numbers and empty yamls -----

def test_exponent_without_a_dot_is_a_number(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"base_config: {TINY_YAML}\nlr_schedule:\n  learning_rate: 5e-3\n  lr_end: 1E-5\n"
                    "optimizer:\n  eps: 1e-6\n", encoding="utf-8")
    assert yaml.safe_load(path.read_text(encoding="utf-8"))["lr_schedule"]["learning_rate"] == "5e-3"  # PyYAML
    config = TrainConfig.from_yaml(str(path))
    assert config.lr_schedule.learning_rate == 5e-3 and config.lr_schedule.lr_end == 1e-5
    assert config.optimizer.eps == 1e-6 and isinstance(config.lr_schedule.learning_rate, float)
    with pytest.raises(ConfigError, match="lr_schedule.learning_rate must be a number, got 'fast'"):
        LrScheduleConfig(learning_rate="fast")


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("# nothing here\n", "is empty"),
    ("seed: 1\n", "no lr_schedule.learning_rate"),
])
def test_yaml_without_a_training_recipe_is_refused(data, tmp_path, capsys, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    assert train_main(["--config", str(path), "--train_dataset", data, "--output_dir", str(tmp_path / "o"),
                       "--run_mode", "train"]) == 2
    err = one_error_line(capsys)
    assert str(path) in err and message in err
    assert not os.path.exists(tmp_path / "o")


# ----- 5. bad datasets and checkpoints: one error line, exit 2 -----

def test_dataset_that_is_not_a_mindrecord_is_one_error_line(data, tmp_path, capsys):
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text('{"text": "hello"}\n', encoding="utf-8")
    args = ["--config", derived_yaml(tmp_path), "--output_dir", str(tmp_path / "o")]
    assert train_main(args + ["--train_dataset", str(jsonl)]) == 2
    err = one_error_line(capsys)
    assert str(jsonl) in err and "not a MindRecord" in err and "telechat-ms preprocess" in err
    assert train_main(args + ["--train_dataset", data + ".db"]) == 2
    err = one_error_line(capsys)
    assert f"{data}.db" in err and f"pass {data}" in err


def test_missing_load_checkpoint_names_the_path(data, tmp_path, capsys):
    missing = str(tmp_path / "no_such_model")
    path = os.path.join(REPO, "yaml_configs", "tiny", "finetune_tiny.yaml")
    assert train_main(["--config", path, "--train_dataset", data, "--output_dir", str(tmp_path / "o"),
                       "--load_checkpoint", missing]) == 2
    err = one_error_line(capsys)
    assert err == f"error: load_checkpoint: {missing}: no such file or directory"
    os.mkdir(missing)                     # a directory without model_config.yaml is not silently ignored
    assert train_main(["--config", derived_yaml(tmp_path), "--train_dataset", data,
                       "--output_dir", str(tmp_path / "o"), "--load_checkpoint", missing]) == 2
    assert f"load_checkpoint: {missing}: no model_config.yaml in this directory" in one_error_line(capsys)


def test_weights_of_other_shapes_are_one_error_line(data, tmp_path, capsys):
    import mindspore as ms
    small = trainer(data, tmp_path / "small", model={"hidden_size": 32, "ffn_hidden_size": 80}, stop_step=1)
    weights = str(tmp_path / "small.safetensors")
    ms.save_checkpoint(small.network.parameters_dict(), weights, format="safetensors")
    assert train_main(["--config", derived_yaml(tmp_path), "--train_dataset", data,
                       "--output_dir", str(tmp_path / "o"), "--load_checkpoint", weights]) == 2
    err = one_error_line(capsys)
    assert weights in err and "model.tok_embeddings.embedding_weight" in err and "[512, 32]" in err
    # resume of a checkpoint whose shapes differ from the yaml's architecture
    small.train()
    with pytest.raises(ConfigError, match=r"step_00000001.*shape.*\[512, 32\].*\[512, 64\]"):
        trainer(data, tmp_path / "small", resume=True, stop_step=2)
