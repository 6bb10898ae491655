"""Every model family end to end on CPU with the production CLIs: a tiny checkpoint in the family's own HF layout
with a tokenizer of the family's kind -> hf2ms -> preprocess (the family's template and tokenizer, read from the
converted directory) -> finetune a few steps (loss falls) -> chat from the trained checkpoint.

PYNATIVE keeps it fast (no graph compile per family); GRAPH mode is covered by the TeleChat2 demo test."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests import tiny_tokenizers as tt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
CLI = [PY, "-m", "telechat_ms.cli"]
FAMILIES = {      # preset -> tokenizer directory builder
    "tiny_telechat1": "telechat12b", "tiny_telechat52b": "llama", "tiny_teleflm_gqa": "llama",
    "tiny_aquila2_gqa": "aquila", "tiny_llama2_gqa": "llama",
}
STEPS = 12


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tok"))
    return {"llama": tt.llama_dir(root), "aquila": tt.aquila_dir(root), "telechat12b": tt.telechat12b_dir(root)}


@pytest.fixture(scope="module")
def train_yaml(tmp_path_factory):
    with open(os.path.join(REPO, "yaml_configs", "tiny", "finetune_tiny.yaml"), encoding="utf-8") as fh:
        config = yaml.safe_load(fh)
    config["context"]["mode"] = 1                             # PYNATIVE
    config["lr_schedule"]["total_steps"] = STEPS
    config["callbacks"] = [c for c in config.get("callbacks", []) if c.get("type") != "CheckpointMonitor"] or \
        config.get("callbacks", [])
    path = tmp_path_factory.mktemp("yaml") / "finetune.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def run(args, cwd):
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600, check=False,
                            env={**os.environ, "GLOG_v": "3"})
    assert result.returncode == 0, " ".join(args) + "\n" + result.stdout[-2000:] + result.stderr[-3000:]
    return result


def _tokenizer_ids(directory):
    from telechat_ms.data.tokenizer import load_tokenizer   # pylint: disable=import-outside-toplevel
    tok = load_tokenizer(directory)
    return tok.eos_id, tok.vocab_size


@pytest.mark.parametrize("preset", sorted(FAMILIES))
def test_family_converts_preprocesses_trains_and_chats(preset, tokenizers, train_yaml, tmp_path):
    hf, ms_dir, out = tmp_path / "hf", tmp_path / "ms", tmp_path / "run"
    run([PY, f"{REPO}/scripts/make_tiny_hf_checkpoint.py", str(hf), "--preset", preset, "--seq-length", "256"],
        tmp_path)
    for name in os.listdir(hf):                               # the stand-in tokenizer files -> a real tokenizer
        if name.startswith("tokenizer") or name in ("special_tokens_map.json",):
            os.remove(hf / name)
    src = tokenizers[FAMILIES[preset]]
    for name in os.listdir(src):
        shutil.copy(os.path.join(src, name), hf / name)
    eos, vocab = _tokenizer_ids(str(hf))
    assert vocab <= 512
    (hf / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    run([PY, f"{REPO}/convert/hf2ms.py", "--src", str(hf), "--dst", str(ms_dir), "--no-progress"], tmp_path)
    data = tmp_path / "sft.mindrecord"
    run([PY, f"{REPO}/scripts/preprocess.py", "--input", f"{REPO}/data/sample_sft.jsonl", "--tokenizer",
         str(ms_dir), "--output", str(data), "--seq-length", "256", "--no-progress"], tmp_path)
    run(CLI + ["train", "--config", train_yaml, "--load_checkpoint", str(ms_dir), "--train_dataset", str(data),
               "--output_dir", str(out), "--stop_step", str(STEPS)], tmp_path)
    with open(out / "train_log.jsonl", encoding="utf-8") as fh:
        losses = [json.loads(line)["loss"] for line in fh if '"loss"' in line]
    assert len(losses) >= 2 and losses[-1] < losses[0] - 0.5, losses
    step = (out / "checkpoint" / "latest").read_text().strip()
    chat = run(CLI + ["chat", "--model", str(out / "checkpoint" / step), "--prompt", "生抽与老抽的区别？",
                      "--max-new-tokens", "6", "--mode", "pynative", "--no-stream"], tmp_path)
    assert "tokens/s" in chat.stderr
