"""Tensor-parallel inference on CPU: TP=2 under msrun (real AllReduce / AllGather between two CPU workers, started by
scripts/msrun_predict.sh) gives the logits (<= 1e-5) and greedy tokens of the TP=1 model, for a GQA and a MoE
checkpoint; slicing and the error paths are checked in-process."""
import json
import os
import shutil
import socket
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from telechat_ms import ConfigError, TelechatForCausalLM
from telechat_ms.io.errors import ConvertError
from telechat_ms.io.sources import open_ms
from telechat_ms.infer import tp as tensor_parallel

from .conftest import set_mode
from .tp_worker import FORWARD_IDS, greedy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TP = 2
# 4 heads / 2 or 4 kv heads, ffn 160 / 96, vocab 512; "tied": TeleChat v1 (lm_head = the embedding table, each
# rank's vocab-parallel head reads its rows of it; v1 rotary). The chat CLI check runs on the last case.
CASES = {"tied": ("tiny_telechat1", 3), "gqa": ("tiny_gqa", 1), "moe": ("tiny_moe", 2)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _checkpoint(root, preset: str, seed: int) -> str:
    """Tiny HF checkpoint (production generator) with larger weights and non-zero biases (the row-parallel
    biases are split across ranks), converted with hf2ms. training_seqlen 32: the test lengths cross it."""
    hf, out = os.path.join(root, f"{preset}_hf"), os.path.join(root, f"{preset}_ms")
    subprocess.run([sys.executable, f"{REPO}/scripts/make_tiny_hf_checkpoint.py", hf, "--preset", preset,
                    "--seq-length", "32", "--seed", str(seed)], check=True, capture_output=True)
    weights, rng = load_file(os.path.join(hf, "model.safetensors")), np.random.default_rng(seed)
    for key, value in weights.items():
        if key.endswith(".bias"):
            weights[key] = rng.normal(0.0, 0.1, value.shape).astype(np.float32)
        elif "norm" in key or "ln_f" in key:
            weights[key] = (1.0 + rng.normal(0.0, 0.1, value.shape)).astype(np.float32)
        else:   # std 0.1: peaked logits, so greedy paths are not decided by rounding noise
            weights[key] = (value * 5.0).astype(np.float32)
    save_file(weights, os.path.join(hf, "model.safetensors"), metadata={"format": "pt"})
    subprocess.run([sys.executable, f"{REPO}/convert/hf2ms.py", "--src", hf, "--dst", out], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp_ckpt")
    return {name: _checkpoint(str(root), preset, seed) for name, (preset, seed) in CASES.items()}


def _tail(path, chars=3000) -> str:
    if not os.path.isfile(path):
        return f"[{path}: missing]"
    with open(path, encoding="utf-8", errors="replace") as fh:
        return f"--- {path}\n" + fh.read()[-chars:]


@pytest.fixture(scope="module")
def tp_run(checkpoints, tmp_path_factory):
    """One msrun job, 2 CPU workers: both checkpoints, then the group-size check and the chat CLI."""
    root = tmp_path_factory.mktemp("tp_run")
    out, logs = root / "out", root / "msrun_log"
    out.mkdir()
    env = dict(os.environ, DEVICE_TARGET="CPU", PYTHON=sys.executable)
    cmd = ["bash", f"{REPO}/scripts/msrun_predict.sh", "--workers", str(TP), "--master_port", str(free_port()),
           "--log_dir", str(logs), "--script", f"{REPO}/tests/tp_worker.py", "--", "--out", str(out)]
    for name, path in checkpoints.items():
        cmd += ["--case", f"{name}={path}"]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, "\n".join([proc.stdout[-2000:], proc.stderr[-2000:]] + [
        _tail(str(logs / f"worker_{r}.log")) for r in range(TP)] + [_tail(str(logs / "scheduler.log"), 1500)])
    with open(out / "summary.json", encoding="utf-8") as fh:
        summary = json.load(fh)
    chats = []
    for rank in range(TP):
        with open(out / f"chat_rank{rank}.json", encoding="utf-8") as fh:
            chats.append(json.load(fh))
    return out, summary, chats


@pytest.mark.parametrize("name", sorted(CASES))
def test_tp2_equals_tp1_logits_and_greedy_tokens(name, checkpoints, tp_run):
    out, summary, _ = tp_run
    set_mode("graph")
    model = TelechatForCausalLM.from_pretrained(checkpoints[name])
    model.set_train(False)
    expected = model(ms.Tensor(FORWARD_IDS)).asnumpy()                              # (2, 40, 512)
    got = np.load(out / f"{name}_logits.npy")
    assert got.shape == expected.shape == (2, 40, 512)
    assert np.abs(got - expected).max() <= 1e-5, np.abs(got - expected).max()
    assert summary[name]["tokens"] == greedy(model)                                 # 12 tokens, KV cache


def test_rank_model_holds_its_share(tp_run):
    _, summary, _ = tp_run
    gqa, moe = summary["gqa"]["rank_config"], summary["moe"]["rank_config"]
    assert (gqa["num_heads"], gqa["num_kv_heads"], gqa["ffn_hidden_size"], gqa["head_dim"]) == (2, 1, 80, 16)
    assert (moe["num_heads"], moe["num_kv_heads"], moe["ffn_hidden_size"], moe["num_experts"]) == (2, 2, 48, 4)


def test_group_size_must_equal_tp(tp_run):
    assert tp_run[1]["group_size_error"] == ("--tp 1 but the job has 2 ranks (msrun --worker_num): start exactly "
                                             "tp workers")


def test_chat_cli_under_tp_prints_on_rank_0_only(tp_run):
    _, _, chats = tp_run
    assert [c["rc"] for c in chats] == [0, 0]
    assert chats[0]["stdout"].strip() and "tokens/s" in chats[0]["stderr"]
    assert chats[1]["stdout"] == "" and "tokens/s" not in chats[1]["stderr"]


# ---- in-process: slices and errors (no launcher) ----

@pytest.mark.parametrize("name", ["gqa", "moe"])
def test_rank_slices_reassemble_the_checkpoint(name, checkpoints):
    """Rank parts concatenated along the split axis (biases summed) are the full tensors, and each rank's
    slices have the shapes of its model's parameters."""
    config = tensor_parallel.read_config(checkpoints[name])
    params = list(tensor_parallel.build_rank_model(config, TP, collectives=False).parameters_dict().items())
    with open_ms(checkpoints[name]) as source:
        parts = [tensor_parallel.read_rank_state(source, [n for n, _ in params], TP, rank) for rank in range(TP)]
        for key, param in params:
            full = source.read(key, 0, source.infos[key].numel).reshape(source.infos[key].shape)
            kind, axis = tensor_parallel.split_rule(key)
            assert parts[0][key].shape == tuple(param.shape), key
            if kind == "split":
                np.testing.assert_array_equal(np.concatenate([p[key] for p in parts], axis), full, err_msg=key)
            elif kind == "bias":
                np.testing.assert_array_equal(parts[0][key], parts[1][key])
                np.testing.assert_allclose(parts[0][key] * TP, full, rtol=0, atol=0)
            else:
                np.testing.assert_array_equal(parts[1][key], full, err_msg=key)
    kinds = {tensor_parallel.split_rule(k)[0] for k, _ in params}
    assert kinds == {"split", "bias", "replicated"}


def test_tp_not_dividing_heads_is_an_error(checkpoints):
    with pytest.raises(ConfigError, match=r"tp=4 must divide num_kv_heads \(2\):"):
        tensor_parallel.load_tensor_parallel(checkpoints["gqa"], 4)
    with pytest.raises(ConfigError, match=r"tp=3 must divide num_heads \(4\), num_kv_heads \(2\), "
                                          r"ffn_hidden_size \(160\), vocab_size \(512\)"):
        tensor_parallel.load_tensor_parallel(checkpoints["gqa"], 3)


def test_without_launcher_is_an_error(checkpoints, monkeypatch):
    monkeypatch.delenv("MS_ROLE", raising=False)
    monkeypatch.delenv("RANK_TABLE_FILE", raising=False)
    with pytest.raises(ConfigError, match=r"--tp 2 needs 2 processes started by msrun"):
        tensor_parallel.load_tensor_parallel(checkpoints["gqa"], TP)


def test_missing_checkpoint_files_are_an_error(checkpoints, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoints["gqa"], broken)
    for shard in broken.glob("*.safetensors"):
        shard.unlink()
    with pytest.raises(ConvertError, match=r"model.safetensors.index.json: names model-00001-of-00001.safetensors "
                                           r".* does not exist"):
        tensor_parallel.load_tensor_parallel(str(broken), TP)
    (broken / "model_config.yaml").unlink()
    with pytest.raises(ConvertError, match=r"model_config.yaml: file not found"):
        tensor_parallel.load_tensor_parallel(str(broken), TP)


def test_chat_interactive_with_tp_is_an_error(checkpoints, capsys):
    from telechat_ms.cli import main   # pylint: disable=import-outside-toplevel
    assert main(["chat", "--model", checkpoints["gqa"], "--tp", "2", "--interactive"]) == 2
    assert "--interactive is single-process" in capsys.readouterr().err


def test_tied_embeddings_give_each_rank_its_vocab_rows_of_the_table(tmp_path):
    """TeleChat v1 7B ties lm_head to the embedding, stored once: each rank's vocab-parallel head reads its rows
    of the embedding table, and the replicated embedding stays whole."""
    from telechat_ms import TelechatConfig   # pylint: disable=import-outside-toplevel
    set_mode("pynative")
    config = TelechatConfig.preset("tiny_telechat1")
    ms.save_checkpoint(TelechatForCausalLM(config), str(tmp_path / "model.ckpt"))
    config.to_yaml(str(tmp_path / "model_config.yaml"))
    names = list(tensor_parallel.build_rank_model(config, TP, collectives=False).parameters_dict())
    assert "lm_head.weight" in names
    with open_ms(str(tmp_path)) as source:
        assert "lm_head.weight" not in source.infos
        table = source.read(tensor_parallel.TIED_HEAD_SOURCE, 0, config.vocab_size * config.hidden_size)
        table = table.reshape(config.vocab_size, config.hidden_size)
        parts = [tensor_parallel.read_rank_state(source, names, TP, rank, tied=True) for rank in range(TP)]
        np.testing.assert_array_equal(np.concatenate([p["lm_head.weight"] for p in parts]), table)
        np.testing.assert_array_equal(parts[1][tensor_parallel.TIED_HEAD_SOURCE], table)
