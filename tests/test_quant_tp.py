"""Tensor-parallel inference of a quantized model: TP=2 under msrun on CPU (two workers, real AllReduce /
AllGather; act order, so the row-parallel projections all-gather their inputs) gives the logits and greedy
tokens of the TP=1 quantized model, and the logits of the dequantized float model; the chat CLI runs under TP
on the quantized directory. One short msrun run (tests/tp_worker.py)."""
import json
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

from telechat_ms import TelechatConfig, TelechatForCausalLM
from telechat_ms.convert import convert_hf_to_ms
from telechat_ms.quant.cells import load_model

from . import quant_packer as qp
from .conftest import set_mode
from .test_tp import _tail, free_port
from .tp_worker import FORWARD_IDS, greedy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TP = 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """4-bit act-order asym GPTQ, GQA Llama with ffn 128 (w2: 64 rows per rank = two groups of 32)."""
    root = tmp_path_factory.mktemp("quant_tp_run")
    config = TelechatConfig.preset("tiny_llama2_gqa", ffn_hidden_size=128)
    qp.make_llama(str(root / "hf"), config, "gptq", 4, 32, True, False, seed=3,
                  tokenizer=os.path.join(REPO, "data", "tiny_tokenizer.model"))
    convert_hf_to_ms(str(root / "hf"), str(root / "ms"))
    convert_hf_to_ms(str(root / "hf"), str(root / "deq"), dequantize=True, dtype="float32")
    return root


@pytest.fixture(scope="module")
def tp_run(checkpoint):
    out, logs = checkpoint / "out", checkpoint / "msrun_log"
    out.mkdir()
    env = dict(os.environ, DEVICE_TARGET="CPU", PYTHON=sys.executable)
    cmd = ["bash", f"{REPO}/scripts/msrun_predict.sh", "--workers", str(TP), "--master_port", str(free_port()),
           "--log_dir", str(logs), "--script", f"{REPO}/tests/tp_worker.py", "--", "--out", str(out),
           "--case", f"quant={checkpoint / 'ms'}"]
    proc = subprocess.run(cmd, cwd=checkpoint, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, "\n".join([proc.stdout[-2000:], proc.stderr[-2000:]] + [
        _tail(str(logs / f"worker_{r}.log")) for r in range(TP)])
    with open(out / "summary.json", encoding="utf-8") as fh:
        summary = json.load(fh)
    chats = []
    for rank in range(TP):
        with open(out / f"chat_rank{rank}.json", encoding="utf-8") as fh:
            chats.append(json.load(fh))
    return out, summary, chats


def test_tp2_quantized_equals_tp1_and_the_float_model(checkpoint, tp_run):
    out, summary, _ = tp_run
    set_mode("graph")
    model = load_model(str(checkpoint / "ms"), param_dtype="float32")
    model.set_train(False)
    expected = model(ms.Tensor(FORWARD_IDS)).asnumpy()                          # (2, 40, 512)
    got = np.load(out / "quant_logits.npy")
    assert got.shape == expected.shape == (2, 40, 512)
    assert np.abs(got - expected).max() <= 1e-5, np.abs(got - expected).max()
    assert summary["quant"]["tokens"] == greedy(model)
    floating = TelechatForCausalLM.from_pretrained(str(checkpoint / "deq"))
    floating.set_train(False)
    assert np.abs(got - floating(ms.Tensor(FORWARD_IDS)).asnumpy()).max() <= 1e-4
    assert summary["quant"]["rank_config"]["quantization"]["act_order"] is True


def test_chat_cli_under_tp_loads_the_quantized_directory(tp_run):
    _, _, chats = tp_run
    assert [c["rc"] for c in chats] == [0, 0], chats
    assert chats[0]["stdout"].strip() and chats[1]["stdout"] == ""
