"""TensorBoard scalars and the ETA of the native loop: event files read back record by record (TFRecord framing +
tensorboardX's Event proto) hold the expected tags with the values of train_log.jsonl."""
import glob
import json
import os
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from telechat_ms.train.logs import TB_TAGS, StepLogger, format_eta

from telechat_ms.train.trainer import Trainer, load_run

from .test_train import TINY_YAML, write_synthetic


def read_scalars(directory):
    """{tag: [(step, value), ...]} of every event file under `directory`."""
    out = {}
    for path in sorted(glob.glob(os.path.join(directory, "**", "events.out.tfevents.*"), recursive=True)):
        data = open(path, "rb").read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4                     # length, its crc, payload, payload crc
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_step_logger_writes_scalars_and_eta(tmp_path):
    lines = []
    logger = StepLogger(str(tmp_path / "out"), 4, 1000, 1e6, 1.0, lines.append, tensorboard_dir=str(tmp_path / "tb"))
    logger.log(1, 5.0, 1e-3, 1024.0, 2.5, True, 1024.0)
    logger.log(2, 4.5, 2e-3, 1024.0, float("nan"), False, 512.0)
    logger.flush()
    scalars = read_scalars(str(tmp_path / "tb" / "rank_0"))           # MindFormers' per-rank directory
    assert set(scalars) == set(TB_TAGS.values())
    assert scalars["loss"] == [(1, 5.0), (2, 4.5)] and scalars["loss-scale"] == [(1, 1024.0), (2, 1024.0)]
    assert scalars["grad-norm"] == [(1, 2.5)]                        # a skipped step has no grad norm
    assert scalars["overflow-skipped"] == [(1, 0.0), (2, 1.0)]
    assert [s for s, _ in scalars["learning-rate"]] == [1, 2]
    assert np.allclose([v for _, v in scalars["learning-rate"]], [1e-3, 2e-3])
    assert " | eta 0:00:" in lines[0] and lines[1].endswith("loss scale 1024 -> 512")
    assert format_eta(3725.4) == "1:02:05"
    logger.log(3, 4.0, 3e-3, 512.0, 1.5, True, 512.0)                # after flush(): a new event file
    logger.close()
    assert read_scalars(str(tmp_path / "tb"))["loss"] == [(1, 5.0), (2, 4.5), (3, 4.0)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic(str(tmp_path_factory.mktemp("data") / "train.mindrecord"))


def test_native_loop_writes_tensorboard(dataset, tmp_path):
    lines = []
    yaml = tmp_path / "run.yaml"                          # the tiny yaml + MindFormers' tensorboard section
    yaml.write_text(open(TINY_YAML, encoding="utf-8").read() + f"\ntensorboard:\n  tensorboard_dir: {tmp_path / 'tb'}\n"
                    "  tensorboard_queue_size: 10\n", encoding="utf-8")
    config, model_overrides, parallel = load_run(str(yaml))
    assert config.tensorboard_dir == str(tmp_path / "tb")
    config = config.replace(dataset_dir=dataset, output_dir=str(tmp_path / "run"), log_interval=4)
    Trainer(config, model_overrides, parallel, printer=lines.append).train()
    records = [json.loads(line) for line in open(tmp_path / "run" / "train_log.jsonl", encoding="utf-8")]
    scalars = read_scalars(str(tmp_path / "tb"))
    assert len(records) == 8 and set(scalars) == set(TB_TAGS.values())
    for field, tag in (("loss", "loss"), ("lr", "learning-rate"), ("grad_norm", "grad-norm"), ("scale", "loss-scale"),
                       ("tokens_per_s_per_device", "tokens-per-second-per-device"), ("mfu", "mfu")):
        assert [s for s, _ in scalars[tag]] == list(range(1, 9)), tag
        assert np.allclose([v for _, v in scalars[tag]], [r[field] for r in records], rtol=1e-6), tag
    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) == 2 and all(" | eta " in line for line in steps)          # per_print_times lines + ETA
    assert steps[-1].split(" | eta ")[1].startswith("0:00:00")
