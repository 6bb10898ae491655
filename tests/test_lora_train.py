"""LoRA training in the native loop (issue 12): a tiny finetune lowers the loss with the base untouched, only
adapter parameters get gradients / optimizer state / checkpoint space, resume is exact, pet_config trains like
the lora: section, and data parallel over 2 msrun workers equals one process."""
import dataclasses
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from telechat_ms import TelechatConfig
from telechat_ms.convert.pipeline import convert_hf_to_ms
from telechat_ms.train import checkpoint as ckpt
from telechat_ms.train.trainer import Trainer, load_run

from .reference.torch_telechat import random_hf_state
from .test_lora import _write_hf
from .test_msrun_dp import free_port, read_log
from .test_train import write_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LORA_YAML = os.path.join(REPO, "yaml_configs", "tiny", "lora_tiny.yaml")
STEPS = 16          # 16 rows / global batch 2 = 8 steps per epoch, 2 epochs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(converted tiny TeleChat2 GQA directory, MindRecord of 33-token rows)."""
    root = tmp_path_factory.mktemp("lora_train")
    config = TelechatConfig.preset("tiny_gqa")
    _write_hf(str(root / "hf"), config, random_hf_state(config, seed=3, std=0.05))
    convert_hf_to_ms(str(root / "hf"), str(root / "base"))
    return str(root / "base"), write_synthetic(str(root / "train.mindrecord"))


def make_trainer(setup, out, yaml=LORA_YAML, lr=3e-2, **changes):
    """`lr` above the yaml's 1e-2: the adapters memorise the 4 synthetic sequences within the 16 steps."""
    base, data = setup
    config, overrides, parallel = load_run(yaml)
    fields = dict(dataset_dir=data, output_dir=str(out), load_checkpoint=base, epochs=2, stop_step=0,
                  checkpoint=ckpt_config(8, 2))
    if lr is not None:
        fields["lr_schedule"] = dataclasses.replace(config.lr_schedule, learning_rate=lr)
    fields.update(changes)
    return Trainer(config.replace(**fields), overrides, parallel, printer=lambda line: None)


def ckpt_config(every, keep):
    from telechat_ms.config.train import CheckpointConfig
    return CheckpointConfig(save_checkpoint_steps=every, keep_checkpoint_max=keep)


def _params(trainer):
    return {k: v.asnumpy().copy() for k, v in trainer.network.parameters_dict().items()}


@pytest.fixture(scope="module")
def full_run(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora_full")
    trainer = make_trainer(setup, out)
    before = _params(trainer)
    result = trainer.train()
    return trainer, before, result, out


def test_lora_finetune_lowers_the_loss_and_leaves_the_base_untouched(full_run):
    trainer, before, result, _ = full_run
    assert len(result.losses) == STEPS and np.isfinite(result.losses).all()
    assert np.mean(result.losses[-4:]) < np.mean(result.losses[:4]) - 0.5, result.losses
    after = _params(trainer)
    adapters = {k for k in after if k.endswith((".lora_a", ".lora_b"))}
    assert adapters and all(np.array_equal(before[k], after[k]) for k in after if k not in adapters)
    assert all(not np.array_equal(before[k], after[k]) for k in adapters if k.endswith(".lora_b"))


def test_only_adapters_get_optimizer_state_and_checkpoint_space(full_run):
    trainer, _, result, _ = full_run
    network, optimizer = trainer.network, trainer.optimizer
    adapters = {p.name: p for p in network.get_parameters() if p.name.endswith((".lora_a", ".lora_b"))}
    assert {p.name for p in optimizer.params} == set(adapters)                # optimizer / all-reduce / grads
    state = optimizer.state()
    assert set(state) == {f"adam_{m}.{n}" for m in "mv" for n in adapters} | {"adam_step"}
    adapter_bytes = sum(p.size * 4 for p in adapters.values())
    assert sum(v.size * v.itemsize for v in (t.asnumpy() for t in state.values())) == 2 * adapter_bytes + 4
    step = result.checkpoint
    assert sorted(os.listdir(step)) == ["adapter_config.json", "adapter_model.safetensors", "generation_config.json",
                                        "model_config.yaml", "optimizer.safetensors", "tokenizer.model",
                                        "trainer_state.json"]                  # no model weights
    saved = load_file(os.path.join(step, "adapter_model.safetensors"))
    assert sum(v.nbytes for v in saved.values()) == adapter_bytes            # (the HF names, PEFT format)
    assert all(k.startswith("base_model.model.transformer.h.") for k in saved)
    assert ckpt.is_complete(step)


def test_lora_resume_reproduces_the_uninterrupted_run(setup, full_run, tmp_path):
    _, _, full, out = full_run
    shutil.copytree(out, tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoint" / f"step_{STEPS:08d}")      # as if killed after step 8's save
    resumed = make_trainer(setup, tmp_path / "cut", resume_training=True)
    assert resumed.start_step == 8
    rest = resumed.train()
    np.testing.assert_allclose(rest.losses, full.losses[8:], rtol=0, atol=1e-5)
    a, b = (load_file(os.path.join(p, "adapter_model.safetensors")) for p in (full.checkpoint, rest.checkpoint))
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-5


def test_finetune_from_a_lora_step_starts_from_its_adapter(setup, full_run, tmp_path):
    """--run_mode finetune --load_checkpoint <LoRA step>: the base comes from the adapter's
    base_model_name_or_path, the adapters from the step; the optimizer starts fresh."""
    from telechat_ms.lora import adapter_arrays
    from telechat_ms.lora.peft_format import adapters_for_model
    _, _, full, _ = full_run
    trainer = make_trainer((full.checkpoint, setup[1]), tmp_path / "next")
    saved, _ = adapters_for_model(full.checkpoint, trainer.network.config)
    mine = adapter_arrays(trainer.network)
    assert set(mine) == set(saved) and all(np.array_equal(mine[m].b, saved[m].b) for m in mine)
    assert int(trainer.optimizer.step.asnumpy()) == 0 and trainer.start_step == 0


def test_pet_config_trains_like_the_lora_section(setup, tmp_path):
    path = tmp_path / "pet.yaml"
    path.write_text(f"base_config: {os.path.join(REPO, 'yaml_configs', 'tiny', 'finetune_tiny.yaml')}\n"
                    "lr_schedule: {type: CosineWithWarmUpLR, learning_rate: 1.e-2, lr_end: 1.e-3, warmup_ratio: 0.1,"
                    " total_steps: -1}\n"
                    "model:\n  model_config:\n    pet_config: {pet_type: lora, lora_rank: 8, lora_alpha: 16, "
                    "lora_dropout: 0.0, lora_a_init: he_uniform, target_modules: '.*wq|.*wk_v|.*wo|.*w1|.*w2|.*w3'}\n",
                    encoding="utf-8")
    ours = make_trainer(setup, tmp_path / "a", stop_step=3).train().losses
    pet = make_trainer(setup, tmp_path / "b", yaml=str(path), stop_step=3).train().losses
    np.testing.assert_array_equal(pet, ours)


def test_lora_two_msrun_workers_match_one_process(setup, tmp_path):
    base, data = setup
    steps = 3
    env = dict(os.environ, DEVICE_TARGET="CPU", PYTHON=sys.executable)
    cmd = ["bash", os.path.join(REPO, "scripts", "msrun_train.sh"), "--config", LORA_YAML, "--workers", "2",
           "--master_port", str(free_port()), "--log_dir", str(tmp_path / "log"), "--",
           "--load_checkpoint", base, "--train_dataset", data, "--output_dir", str(tmp_path / "dp"),
           "--batch_size", "1", "--epochs", "1", "--stop_step", str(steps)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = tmp_path / "log" / "worker_0.log"
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + (
        log.read_text()[-3000:] if log.exists() else "")
    assert "dp 2" in log.read_text() and "LoRA on 12 linears" in log.read_text()
    single = make_trainer(setup, tmp_path / "single", lr=None, batch_size=2, epochs=1, stop_step=steps).train()
    np.testing.assert_allclose(read_log(tmp_path / "dp" / "train_log.jsonl"), single.losses, rtol=0, atol=1e-5)
    a = load_file(str(tmp_path / "dp" / "checkpoint" / f"step_{steps:08d}" / "adapter_model.safetensors"))
    b = load_file(os.path.join(single.checkpoint, "adapter_model.safetensors"))
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-5


def test_qlora_int4_base_trains_and_equals_its_dequantized_twin(tmp_path):
    """QLoRA: a GPTQ int4 Llama base (kept quantized) trains adapters (loss falls, int4 weights untouched); the
    trained adapter on the int4 model gives the logits of the dequantized float model with the same adapter.
    Merging into int4 weights is refused."""
    import mindspore as ms
    from telechat_ms import TelechatForCausalLM
    from telechat_ms.cli import main as cli_main
    from telechat_ms.lora import load_adapter
    from telechat_ms.quant.cells import load_model
    from . import quant_packer as qp
    config = TelechatConfig.preset("tiny_llama2_gqa")
    qp.make_llama(str(tmp_path / "hf"), config, "gptq", 4, 32, False, True, "file", 0)
    convert_hf_to_ms(str(tmp_path / "hf"), str(tmp_path / "int4"))
    convert_hf_to_ms(str(tmp_path / "hf"), str(tmp_path / "float"), dequantize=True, dtype="float32")
    data = write_synthetic(str(tmp_path / "train.mindrecord"))
    trainer = make_trainer((str(tmp_path / "int4"), data), tmp_path / "out")
    before = _params(trainer)
    result = trainer.train()
    assert np.mean(result.losses[-4:]) < np.mean(result.losses[:4]) - 0.5, result.losses
    after = _params(trainer)
    quantized = [k for k in before if k.endswith(".qweight")]
    assert quantized and all(np.array_equal(before[k], after[k]) for k in before if "lora" not in k)
    ids = ms.Tensor(np.arange(12, dtype=np.int32).reshape(1, 12))
    int4, dense = load_model(str(tmp_path / "int4")), TelechatForCausalLM.from_pretrained(str(tmp_path / "float"))
    for model in (int4, dense):
        load_adapter(model, result.checkpoint)
    np.testing.assert_allclose(int4(ids).asnumpy(), dense(ids).asnumpy(), rtol=0, atol=1e-4)
    assert cli_main(["merge-lora", "--base", str(tmp_path / "int4"), "--adapter", result.checkpoint,
                     "--dst", str(tmp_path / "merged")]) == 2
    assert not os.path.exists(tmp_path / "merged")
