"""Data parallel on CPU: scripts/msrun_train.sh with DEVICE_TARGET=CPU and 2 msrun workers against one process
with the same global batch: same losses and same final weights (<= 1e-5)."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

from telechat_ms.train.trainer import Trainer, load_run

from .test_train import TINY_YAML, load_weights, write_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_log(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line)["loss"] for line in fh]


def test_two_msrun_workers_match_one_process(tmp_path):
    data = write_synthetic(str(tmp_path / "train.mindrecord"))
    env = dict(os.environ, DEVICE_TARGET="CPU", PYTHON=sys.executable)
    cmd = ["bash", os.path.join(REPO, "scripts", "msrun_train.sh"), "--config", TINY_YAML, "--workers", "2",
           "--master_port", str(free_port()), "--log_dir", str(tmp_path / "msrun_log"), "--",
           "--train_dataset", data, "--output_dir", str(tmp_path / "dp"), "--batch_size", "1",
           "--stop_step", str(STEPS)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    worker_log = tmp_path / "msrun_log" / "worker_0.log"
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + (
        worker_log.read_text()[-3000:] if worker_log.exists() else "")
    assert "dp 2" in worker_log.read_text()                                     # really two data-parallel ranks

    config, model_overrides, parallel = load_run(TINY_YAML)
    config = config.replace(dataset_dir=data, output_dir=str(tmp_path / "single"), batch_size=2, stop_step=STEPS)
    single = Trainer(config, model_overrides, parallel, printer=lambda line: None).train()

    dp_losses = read_log(tmp_path / "dp" / "train_log.jsonl")
    assert len(dp_losses) == STEPS
    np.testing.assert_allclose(dp_losses, single.losses, rtol=0, atol=1e-5)
    a = load_weights(str(tmp_path / "dp" / "checkpoint" / f"step_{STEPS:08d}"))
    b = load_weights(single.checkpoint)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-5
