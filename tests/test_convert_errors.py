"""Every bad input gives one clear ConvertError (CLI: `error: ...`, exit 2) and leaves no output behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from telechat_ms.config import TelechatConfig
from telechat_ms.convert import ConvertError, convert_hf_to_ms, convert_ms_to_hf
from telechat_ms.io import writer
from telechat_ms.io.checkpoint import load_pretrained
from telechat_ms.convert.cli import hf2ms_main, main, ms2hf_main
from tests.hf_checkpoint import random_state, write_hf_checkpoint, write_side_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = TelechatConfig.preset("tiny")


def fails(tmp_path, src, match: str, **kwargs) -> str:
    """hf2ms must raise ConvertError matching `match` and leave nothing (not even a temp dir) in tmp_path/out."""
    out_parent = tmp_path / "out"
    out_parent.mkdir(exist_ok=True)
    before = set(os.listdir(out_parent))
    with pytest.raises(ConvertError, match=match) as info:
        convert_hf_to_ms(str(src), str(out_parent / "ms"), **kwargs)
    assert set(os.listdir(out_parent)) == before
    return str(info.value)


@pytest.fixture(name="hf")
def _hf(tmp_path):
    write_hf_checkpoint(str(tmp_path / "hf"), TINY, "sharded")
    return tmp_path / "hf"


def _write_state(tmp_path, state, layout="single", config=TINY):
    write_hf_checkpoint(str(tmp_path / "bad"), config, layout, state=state)
    return tmp_path / "bad"


def test_missing_key(tmp_path):
    state = random_state(TINY)
    del state["transformer.h.1.mlp.up_proj.weight"]
    msg = fails(tmp_path, _write_state(tmp_path, state), "missing tensors")
    assert "transformer.h.1.mlp.up_proj.weight" in msg and "unexpected" not in msg


def test_extra_keys_are_listed_at_most_20(tmp_path):
    state = random_state(TINY)
    state.update({f"transformer.h.0.self_attention.rotary_emb.inv_freq{n}": np.ones(4, np.float32)
                  for n in range(25)})
    msg = fails(tmp_path, _write_state(tmp_path, state), r"unexpected tensors \(25\)")
    assert "inv_freq0" in msg and "(5 more)" in msg


def test_wrong_shape_names_file_key_expected_and_found(tmp_path):
    state = random_state(TINY)
    state["transformer.h.0.self_attention.key_value.weight"] = np.ones((64, 64), np.float32)
    msg = fails(tmp_path, _write_state(tmp_path, state), "expected shape")
    assert "'transformer.h.0.self_attention.key_value.weight' in" in msg and "model.safetensors" in msg
    assert "expected shape [128, 64], found [64, 64]" in msg


def test_integer_tensor_is_not_castable(tmp_path):
    state = random_state(TINY)
    state["transformer.ln_f.weight"] = np.ones(64, np.int32)
    fails(tmp_path, _write_state(tmp_path, state), "dtype int32 cannot be cast")


def test_config_that_does_not_match_the_weights(tmp_path, hf):
    with open(hf / "config.json", "w", encoding="utf-8") as fh:
        json.dump(TelechatConfig.preset("tiny", num_layers=3).to_hf_config(), fh)
    fails(tmp_path, hf, r"layers=3.*\n  missing tensors \(10\): transformer.h.2.input_layernorm.weight")


def test_truncated_shard(tmp_path, hf):
    shard = hf / "model-00002-of-00003.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    fails(tmp_path, hf, "model-00002-of-00003.safetensors: truncated: tensor")


def test_corrupt_shard_header(tmp_path, hf):
    shard = hf / "model-00003-of-00003.safetensors"
    data = bytearray(shard.read_bytes())
    data[8:20] = b"#garbage!!#!"
    shard.write_bytes(bytes(data))
    fails(tmp_path, hf, "model-00003-of-00003.safetensors: corrupt safetensors header")


def test_corrupt_bin(tmp_path):
    write_hf_checkpoint(str(tmp_path / "hf"), TINY, "bin")
    (tmp_path / "hf/pytorch_model.bin").write_bytes(b"not a zip or pickle" * 10)
    fails(tmp_path, tmp_path / "hf", "pytorch_model.bin: not a readable torch checkpoint")


def test_config_without_weights(tmp_path):
    (tmp_path / "hf").mkdir()
    write_side_files(str(tmp_path / "hf"), TINY)
    fails(tmp_path, tmp_path / "hf", "no weights found: expected model.safetensors.index.json")


def test_weights_without_config(tmp_path, hf):
    os.remove(hf / "config.json")
    fails(tmp_path, hf, "config.json: file not found")


def test_index_pointing_at_a_missing_file(tmp_path, hf):
    os.remove(hf / "model-00002-of-00003.safetensors")
    fails(tmp_path, hf, "names model-00002-of-00003.safetensors for .* does not exist")


def test_existing_output_is_refused_and_overwrite_replaces_it(tmp_path, hf):
    dst = tmp_path / "out" / "ms"
    dst.mkdir(parents=True)
    (dst / "old.txt").write_text("keep me")
    fails(tmp_path, hf, "already exists")
    assert (dst / "old.txt").read_text() == "keep me"
    convert_hf_to_ms(str(hf), str(dst), overwrite=True)
    assert not (dst / "old.txt").exists() and (dst / "model_config.yaml").exists()
    assert sorted(os.listdir(tmp_path / "out")) == ["ms"]


def test_failure_while_writing_keeps_the_old_output(tmp_path, hf, monkeypatch):
    dst = tmp_path / "out" / "ms"
    convert_hf_to_ms(str(hf), str(dst))
    before = sorted(os.listdir(dst))

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(writer, "_write_tensor", broken)
    with pytest.raises(OSError, match="disk full"):
        convert_hf_to_ms(str(hf), str(dst), overwrite=True)
    assert sorted(os.listdir(tmp_path / "out")) == ["ms"] and sorted(os.listdir(dst)) == before


def test_bare_checkpoint_needs_a_config(tmp_path, hf):
    convert_hf_to_ms(str(hf), str(tmp_path / "ms"), fmt="ckpt")
    with pytest.raises(ConvertError, match="pass --config"):
        convert_ms_to_hf(str(tmp_path / "ms/model.ckpt"), str(tmp_path / "back"))
    assert not (tmp_path / "back").exists()


def test_truncated_ckpt(tmp_path, hf):
    convert_hf_to_ms(str(hf), str(tmp_path / "ms"), fmt="ckpt")
    ckpt = tmp_path / "ms/model.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:-1000])
    with pytest.raises(ConvertError, match="model.ckpt: corrupt or truncated .ckpt"):
        convert_ms_to_hf(str(tmp_path / "ms"), str(tmp_path / "back"))
    assert not (tmp_path / "back").exists()


def test_unknown_entry_in_training_checkpoint_is_an_error(tmp_path, hf):
    convert_hf_to_ms(str(hf), str(tmp_path / "ms"))
    with open(tmp_path / "ms/model.safetensors.index.json", encoding="utf-8") as fh:
        index = json.load(fh)
    from safetensors.numpy import save_file
    save_file({"model.layers.0.attention.wq.lora_a": np.zeros((2, 2), np.float32)},
              str(tmp_path / "ms/extra.safetensors"))
    index["weight_map"]["model.layers.0.attention.wq.lora_a"] = "extra.safetensors"
    with open(tmp_path / "ms/model.safetensors.index.json", "w", encoding="utf-8") as fh:
        json.dump(index, fh)
    with pytest.raises(ConvertError, match=r"unexpected tensors \(1\): model.layers.0.attention.wq.lora_a"):
        convert_ms_to_hf(str(tmp_path / "ms"), str(tmp_path / "back"))


def test_load_pretrained_errors_name_the_path(tmp_path, hf):
    from telechat_ms import TelechatForCausalLM
    with pytest.raises(ConvertError, match="model_config.yaml: file not found"):
        load_pretrained(TelechatForCausalLM, str(hf))
    convert_hf_to_ms(str(hf), str(tmp_path / "ms"), max_shard_size="100KB")
    with open(tmp_path / "ms/model.safetensors.index.json", encoding="utf-8") as fh:
        second = sorted(set(json.load(fh)["weight_map"].values()))[1]
    os.remove(tmp_path / "ms" / second)
    with pytest.raises(ConvertError, match=f"ms/{second} does not exist"):
        TelechatForCausalLM.from_pretrained(str(tmp_path / "ms"))
    convert_hf_to_ms(str(hf), str(tmp_path / "ms2"))
    with pytest.raises(ConvertError, match=r"missing \(10\): model.layers.2.attention_norm.weight"):
        TelechatForCausalLM.from_pretrained(str(tmp_path / "ms2"), num_layers=3)


def test_cli_mains_return_2_with_error_line(tmp_path, hf, capsys):
    assert hf2ms_main(["--src", str(tmp_path / "nope"), "--dst", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert ms2hf_main(["--src", str(hf), "--dst", str(tmp_path / "x")]) == 2
    assert main(["unknown"]) == 2 and main(["hf2ms", "--help"]) == 0
    assert not (tmp_path / "x").exists()


def test_cli_scripts_end_to_end(tmp_path, hf):
    """The real scripts in subprocesses (slow: each imports mindspore): success, then a refused rerun."""
    def run(script, *args):
        return subprocess.run([sys.executable, os.path.join(REPO, "convert", script), *args, "--no-progress"],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False)
    ok = run("hf2ms.py", "--src", str(hf), "--dst", str(tmp_path / "ms"), "--dtype", "bfloat16")
    assert ok.returncode == 0 and "wrote 23 tensors" in ok.stdout, ok.stderr
    back = run("ms2hf.py", "--src", str(tmp_path / "ms"), "--dst", str(tmp_path / "ms"))
    assert back.returncode == 2 and back.stderr.startswith("error: ") and "must not be the source" in back.stderr
