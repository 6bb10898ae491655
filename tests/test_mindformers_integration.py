"""MindFormers 1.9.0 integration on CPU, in subprocesses (importing mindformers changes global state):
the tiny yaml trains through MindFormers' Trainer, and run_mindformer.py's `--register_path` + `auto_register`
route finds our classes (same parameter names, tokenizer, learning-rate formula as MindFormers')."""
import json
import os
import re
import subprocess
import sys

import yaml

from .test_train import TINY_YAML, write_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTEGRATIONS = os.path.join(REPO, "telechat_ms", "integrations")


def run(args, cwd, env=None):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def test_tiny_yaml_trains_through_mindformers_trainer(tmp_path):
    data = write_synthetic(str(tmp_path / "train.mindrecord"))
    out = run([os.path.join(REPO, "scripts", "train.py"), "--engine", "mindformers", "--config", TINY_YAML,
               "--train_dataset", data, "--output_dir", str(tmp_path / "mf"), "--epochs", "2"], cwd=tmp_path)
    losses = [float(x) for x in re.findall(r"step:\[\s*\d+/\s*\d+\], loss:\[([0-9.]+)/", out)]
    assert len(losses) == 16, out[-3000:]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.8, losses


CHECK = r"""
import json, os, sys
register = os.environ["REGISTER_PATH"]
sys.path.append(register)                          # what run_mindformer.py does with --register_path
from mindformers import MindFormerConfig
from mindformers.models.build_model import build_network
from mindformers.tools.register import MindFormerModuleType, MindFormerRegister
assert "telechat_ms.integrations.mindformers" not in sys.modules
config = MindFormerConfig(sys.argv[1])
network = build_network(config.model)              # auto_register loads telechat_register.py -> registers all
from telechat_ms import TelechatConfig, TelechatForCausalLM
ours = TelechatForCausalLM(TelechatConfig.preset("tiny", seq_length=32))
tok = MindFormerRegister.get_instance_from_cfg({"type": "TelechatTokenizer", "vocab_file": sys.argv[2]},
                                               MindFormerModuleType.TOKENIZER)
from telechat_ms.data import TelechatTokenizer
from mindformers.core.lr.lr_schedule import CosineWithWarmUpLR
from telechat_ms.config.train import LrScheduleConfig
from telechat_ms.train.optim import learning_rate
import mindspore as ms
mf_lr = CosineWithWarmUpLR(learning_rate=3e-3, lr_end=3e-4, warmup_steps=5, total_steps=40)
mine = LrScheduleConfig(learning_rate=3e-3, lr_end=3e-4, warmup_steps=5, total_steps=40)
lr_err = max(abs(float(mf_lr(ms.Tensor(s, ms.int32)).asnumpy()) - learning_rate(mine, s, 40)) for s in range(45))
text = "<_user>你好<_bot>您好！<_end>"
print("RESULT" + json.dumps({
    "names_equal": sorted(network.parameters_dict()) == sorted(ours.parameters_dict()),
    "network": type(network).__name__, "wrapper": MindFormerRegister.is_exist("wrapper", "TelechatTrainOneStepCell"),
    "tokens_equal": tok(text)["input_ids"] == TelechatTokenizer(sys.argv[2]).encode(text),
    "lr_err": lr_err}))
"""


def test_register_path_route_and_formulas(tmp_path):
    data = yaml.safe_load(open(TINY_YAML, encoding="utf-8"))
    data["model"]["model_config"]["auto_register"] = "telechat_register.TelechatConfig"
    data["model"]["arch"]["auto_register"] = "telechat_register.TelechatForCausalLM"
    config = tmp_path / "auto.yaml"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    script = tmp_path / "check.py"
    script.write_text(CHECK, encoding="utf-8")
    out = run([str(script), str(config), os.path.join(REPO, "data", "tiny_tokenizer.model")], cwd=tmp_path,
              env={"REGISTER_PATH": INTEGRATIONS})
    result = json.loads(out.split("RESULT", 1)[1].splitlines()[0])
    assert result["network"] == "MFTelechatForCausalLM" and result["names_equal"] and result["wrapper"]
    assert result["tokens_equal"]
    assert result["lr_err"] < 1e-7, result
