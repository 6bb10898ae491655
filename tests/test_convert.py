"""Weight converters: exact round trips HF -> MS -> HF for every layout, dtype casts, the per-head key_value
layout, MoE stacking and router aliases, the official-port import, and models loaded from converted dirs."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import mindspore as ms

from telechat_ms import TelechatForCausalLM
from telechat_ms.config import TelechatConfig
from telechat_ms.convert import (convert_hf_to_ms, convert_mindformers_to_ms, convert_ms_to_hf, hf_to_ms,
                                 name_table)
from telechat_ms.convert.names import split_key_value
from tests.hf_checkpoint import hf_shapes, load_safetensors_dir, random_state, write_hf_checkpoint

SIDE_FILES = ("tokenizer.model", "tokenizer_config.json", "generation_config.json")


def ms_dir_state(directory: str) -> dict[str, np.ndarray]:
    """Our converted directory as MindSpore loads it (fp32 numpy)."""
    with open(os.path.join(directory, "model.safetensors.index.json"), encoding="utf-8") as fh:
        files = sorted(set(json.load(fh)["weight_map"].values()))
    out = {}
    for name in files:
        for key, param in ms.load_checkpoint(os.path.join(directory, name), format="safetensors").items():
            out[key] = ms.ops.cast(param, ms.float32).asnumpy()
    return out


def assert_same_hf(back_dir: str, source: dict[str, torch.Tensor]) -> dict:
    out, index = load_safetensors_dir(back_dir)
    assert list(out) and set(out) == set(source)
    for key, tensor in source.items():
        assert out[key].dtype == tensor.dtype and torch.equal(out[key], tensor), key
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in source.values())
    assert set(index["weight_map"]) == set(source)
    return index


@pytest.mark.parametrize("preset,layout", [("tiny", "single"), ("tiny", "sharded"), ("tiny", "bin"),
                                           ("tiny", "bin_sharded"), ("tiny_gqa", "sharded"),
                                           ("tiny_moe", "sharded"), ("tiny_moe", "bin")])
def test_round_trip_is_bit_exact(tmp_path, preset, layout):
    config = TelechatConfig.preset(preset)
    src, mid, back = tmp_path / "hf", tmp_path / "ms", tmp_path / "back"
    source = write_hf_checkpoint(str(src), config, layout)
    report = convert_hf_to_ms(str(src), str(mid), max_shard_size="60KB")
    assert report.tensors == len(name_table(config)) and len(report.files) > 4     # several shards
    assert set(ms_dir_state(str(mid))) == {e.ms_key for e in name_table(config)}
    assert TelechatConfig.from_yaml(str(mid / "model_config.yaml")) == config
    convert_ms_to_hf(str(mid), str(back), max_shard_size="60KB")
    index = assert_same_hf(str(back), source)
    if layout == "sharded":                 # same index content as the source index (up to shard file names)
        with open(src / "model.safetensors.index.json", encoding="utf-8") as fh:
            src_index = json.load(fh)
        assert src_index["metadata"] == index["metadata"] and set(src_index["weight_map"]) == set(index["weight_map"])
    assert TelechatConfig.from_hf_config(str(back)) == config
    for name in SIDE_FILES:
        assert (back / name).read_bytes() == (src / name).read_bytes() == (mid / name).read_bytes()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_outputs_equal_the_same_torch_cast(tmp_path, dtype):
    config = TelechatConfig.preset("tiny_moe")
    source = write_hf_checkpoint(str(tmp_path / "hf"), config, "sharded")
    convert_hf_to_ms(str(tmp_path / "hf"), str(tmp_path / "ms"), dtype=dtype)
    assert TelechatConfig.from_yaml(str(tmp_path / "ms/model_config.yaml")).param_dtype == dtype
    convert_ms_to_hf(str(tmp_path / "ms"), str(tmp_path / "back"))
    assert_same_hf(str(tmp_path / "back"), {k: v.to(getattr(torch, dtype)) for k, v in source.items()})
    # bf16 / fp16 source back to fp32 is exact
    convert_ms_to_hf(str(tmp_path / "ms"), str(tmp_path / "up"), dtype="float32")
    assert_same_hf(str(tmp_path / "up"), {k: v.to(getattr(torch, dtype)).float() for k, v in source.items()})


def test_bf16_source_and_ckpt_output_load_in_mindspore(tmp_path):
    config = TelechatConfig.preset("tiny_gqa")
    source = write_hf_checkpoint(str(tmp_path / "hf"), config, "single", dtype="bfloat16")
    convert_hf_to_ms(str(tmp_path / "hf"), str(tmp_path / "ms"), fmt="ckpt")
    params = ms.load_checkpoint(str(tmp_path / "ms/model.ckpt"))
    expected = hf_to_ms({k: v.float().numpy() for k, v in source.items()}, config)
    assert set(params) == set(expected)
    for key, value in expected.items():
        assert params[key].dtype == ms.bfloat16
        np.testing.assert_array_equal(ms.ops.cast(params[key], ms.float32).asnumpy(), value)


def _encoded_key_value(config) -> np.ndarray:
    """key_value rows that encode (kv head, k|v, dim): value = 1000*head + 100*kv + dim."""
    n_kv, hd, h = config.num_kv_heads, config.head_dim, config.hidden_size
    code = 1000 * np.arange(n_kv)[:, None, None] + 100 * np.arange(2)[None, :, None] + np.arange(hd)[None, None]
    return np.repeat(code.reshape(-1, 1), h, axis=1).astype(np.float32)       # (2*n_kv*hd, H), HF row order


def test_key_value_keeps_the_per_head_layout(tmp_path):
    config = TelechatConfig.preset("tiny_gqa")
    state = random_state(config)
    state["transformer.h.1.self_attention.key_value.weight"] = _encoded_key_value(config)
    write_hf_checkpoint(str(tmp_path / "hf"), config, "single", state=state)
    convert_hf_to_ms(str(tmp_path / "hf"), str(tmp_path / "ms"))
    wk_v = ms_dir_state(str(tmp_path / "ms"))["model.layers.1.attention.wk_v.weight"]
    n_kv, hd = config.num_kv_heads, config.head_dim
    per_head = wk_v[:, 0].reshape(n_kv, 2 * hd)              # the model's view: (n_kv, [K_h | V_h])
    for head in range(n_kv):
        np.testing.assert_array_equal(per_head[head, :hd], 1000 * head + np.arange(hd))          # K of head
        np.testing.assert_array_equal(per_head[head, hd:], 1000 * head + 100 + np.arange(hd))    # V of head
    k, v = split_key_value(wk_v, n_kv, hd)
    assert set(np.unique(k[:, 0] // 100 % 10)) == {0} and set(np.unique(v[:, 0] // 100 % 10)) == {1}


@pytest.mark.parametrize("source_key,override,written", [("router", None, "router"), ("gate", None, "gate"),
                                                         ("gate", "router", "router")])
def test_moe_experts_stack_and_router_alias_round_trips(tmp_path, source_key, override, written):
    config = TelechatConfig.preset("tiny_moe")
    source = write_hf_checkpoint(str(tmp_path / "hf"), config, "single", router_key=source_key)
    convert_hf_to_ms(str(tmp_path / "hf"), str(tmp_path / "ms"))
    ms_state = ms_dir_state(str(tmp_path / "ms"))
    for e in range(config.num_experts):
        p = f"transformer.h.1.mlp.local_experts.{e}."
        np.testing.assert_array_equal(ms_state["model.layers.1.feed_forward.ffn.w1.weight"][e],
                                      source[p + "gate_proj.weight"].numpy())
        np.testing.assert_array_equal(ms_state["model.layers.1.feed_forward.ffn.w2.bias"][e],
                                      source[p + "down_proj.bias"].numpy())
    np.testing.assert_array_equal(ms_state["model.layers.0.feed_forward.router.dense.weight"],
                                  source[f"transformer.h.0.mlp.{source_key}.weight"].numpy())
    convert_ms_to_hf(str(tmp_path / "ms"), str(tmp_path / "back"), router_key=override)
    renamed = {k.replace(f".mlp.{source_key}.", f".mlp.{written}."): v for k, v in source.items()}
    assert_same_hf(str(tmp_path / "back"), renamed)


def _save_ckpt(path: str, state: dict[str, np.ndarray], extra: dict | None = None, fmt: str = "ckpt") -> None:
    """A checkpoint written by MindSpore itself (the way the official port and training runs write them)."""
    items = [{"name": k, "data": ms.Tensor(v)} for k, v in {**state, **(extra or {})}.items()]
    ms.save_checkpoint(items, path, format=fmt)


TRAINING_STATE = {"global_step": np.array([7], np.int32), "scale_sense": np.array(1024.0, np.float32),
                  "learning_rate": np.array([1e-5], np.float32)}


def test_mindformers_port_checkpoint_imports_exactly(tmp_path):
    config = TelechatConfig.preset("tiny_moe")
    state = random_state(config)
    ms_state = hf_to_ms(state, config)
    port = dict(ms_state)
    for i in range(config.num_layers):       # the port stores the stacked expert bias as (1, E, 1, H)
        key = f"model.layers.{i}.feed_forward.ffn.w2.bias"
        port[key] = port[key].reshape(1, config.num_experts, 1, config.hidden_size)
    moments = {f"adam_m.{k}": np.zeros_like(v) for k, v in list(ms_state.items())[:3]}
    _save_ckpt(str(tmp_path / "port.ckpt"), port, {**moments, **TRAINING_STATE})
    (tmp_path / "hf").mkdir()
    with open(tmp_path / "hf/config.json", "w", encoding="utf-8") as fh:
        json.dump(config.to_hf_config(), fh)
    report = convert_mindformers_to_ms(str(tmp_path / "port.ckpt"), str(tmp_path / "ms"),
                                       config=str(tmp_path / "hf/config.json"))
    assert set(report.dropped) == set(moments) | set(TRAINING_STATE)
    got = ms_dir_state(str(tmp_path / "ms"))
    assert set(got) == set(ms_state)
    for key, value in ms_state.items():
        np.testing.assert_array_equal(got[key], value)
    # the same port checkpoint also goes straight to HF
    convert_ms_to_hf(str(tmp_path / "port.ckpt"), str(tmp_path / "back"), config=str(tmp_path / "hf/config.json"))
    assert_same_hf(str(tmp_path / "back"), {k: torch.from_numpy(v) for k, v in state.items()})


def test_mindformers_qkv_concat_checkpoint_is_defused(tmp_path):
    config = TelechatConfig.preset("tiny_gqa")
    state = random_state(config)
    state["transformer.h.0.self_attention.key_value.weight"] = _encoded_key_value(config)
    ms_state = hf_to_ms(state, config)
    port = {}
    for key, value in ms_state.items():      # qkv_concat: w_qkv rows [Q; K_all; V_all], w_gate_hidden [gate; up]
        prefix = key.rsplit(".attention.", 1)[0] if ".attention." in key else key.rsplit(".feed_forward.", 1)[0]
        if key.endswith("attention.wq.weight"):
            k, v = split_key_value(ms_state[prefix + ".attention.wk_v.weight"], config.num_kv_heads, config.head_dim)
            port[prefix + ".attention.w_qkv.weight"] = np.concatenate([value, k, v])
        elif key.endswith("feed_forward.w1.weight"):
            port[prefix + ".feed_forward.w_gate_hidden.weight"] = np.concatenate(
                [value, ms_state[prefix + ".feed_forward.w3.weight"]])
        elif not key.endswith(("attention.wk_v.weight", "feed_forward.w3.weight")):
            port[key] = value
    _save_ckpt(str(tmp_path / "port.safetensors"), port, fmt="safetensors")
    config.to_yaml(str(tmp_path / "model_config.yaml"))
    convert_mindformers_to_ms(str(tmp_path / "port.safetensors"), str(tmp_path / "ms"),
                              config=str(tmp_path / "model_config.yaml"))
    got = ms_dir_state(str(tmp_path / "ms"))
    assert set(got) == set(ms_state)
    for key, value in ms_state.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_training_checkpoint_and_merged_directory_to_hf(tmp_path):
    config = TelechatConfig.preset("tiny")
    state = random_state(config)
    ms_state = hf_to_ms(state, config)
    _save_ckpt(str(tmp_path / "train.ckpt"), ms_state, {f"adam_v.{k}": v for k, v in ms_state.items()})
    config.to_yaml(str(tmp_path / "model_config.yaml"))
    report = convert_ms_to_hf(str(tmp_path / "train.ckpt"), str(tmp_path / "a"),
                              config=str(tmp_path / "model_config.yaml"))
    assert len(report.dropped) == len(ms_state)
    assert_same_hf(str(tmp_path / "a"), {k: torch.from_numpy(v) for k, v in state.items()})
    # a merged distributed checkpoint: several safetensors files without an index (unified_safetensors style)
    merged = tmp_path / "merged"
    merged.mkdir()
    keys = list(ms_state)
    _save_ckpt(str(merged / "part0.safetensors"), {k: ms_state[k] for k in keys[:10]}, fmt="safetensors")
    _save_ckpt(str(merged / "part1.safetensors"), {k: ms_state[k] for k in keys[10:]}, fmt="safetensors")
    config.to_yaml(str(merged / "model_config.yaml"))
    convert_ms_to_hf(str(merged), str(tmp_path / "b"))
    assert_same_hf(str(tmp_path / "b"), {k: torch.from_numpy(v) for k, v in state.items()})
    # ms.parallel.unified_safetensors also writes a flat {name: file} param_name_map.json; extra files are ignored
    with open(merged / "param_name_map.json", "w", encoding="utf-8") as fh:
        json.dump({k: "part0.safetensors" if n < 10 else "part1.safetensors" for n, k in enumerate(keys)}, fh)
    _save_ckpt(str(merged / "hyper_param.safetensors"), {}, TRAINING_STATE, fmt="safetensors")
    convert_ms_to_hf(str(merged), str(tmp_path / "c"))
    assert_same_hf(str(tmp_path / "c"), {k: torch.from_numpy(v) for k, v in state.items()})


def test_ckpt_directory_round_trip(tmp_path):
    config = TelechatConfig.preset("tiny_moe")
    source = write_hf_checkpoint(str(tmp_path / "hf"), config, "bin_sharded", router_key="gate")
    convert_hf_to_ms(str(tmp_path / "hf"), str(tmp_path / "ms"), fmt="ckpt")
    assert sorted(os.listdir(tmp_path / "ms")) == ["checksums.sha256", "convert_meta.json", "generation_config.json",
                                                   "hf_config.json", "model.ckpt", "model_config.yaml",
                                                   "tokenizer.model", "tokenizer_config.json"]
    assert (tmp_path / "ms/hf_config.json").read_bytes() == (tmp_path / "hf/config.json").read_bytes()
    convert_ms_to_hf(str(tmp_path / "ms"), str(tmp_path / "back"))
    assert_same_hf(str(tmp_path / "back"), source)


@pytest.mark.parametrize("preset,fmt", [("tiny", "safetensors"), ("tiny_gqa", "ckpt")])
def test_from_pretrained_logits_equal_in_memory_model(tmp_path, preset, fmt):
    from tests.reference.ms_loading import ms_model_from_hf_state
    config = TelechatConfig.preset(preset)
    source = write_hf_checkpoint(str(tmp_path / "hf"), config, "sharded")
    convert_hf_to_ms(str(tmp_path / "hf"), str(tmp_path / "ms"), fmt=fmt, max_shard_size="100KB")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    loaded = TelechatForCausalLM.from_pretrained(str(tmp_path / "ms"))
    reference = ms_model_from_hf_state(config, {k: v.numpy() for k, v in source.items()})
    ids = ms.Tensor(np.random.default_rng(0).integers(0, config.vocab_size, (2, 12)).astype(np.int32))
    got, want = loaded(ids).asnumpy(), reference(ids).asnumpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.abs(got).max() > 1e-2
    from tests.reference.torch_telechat import build_reference, reference_forward
    torch_model = build_reference(config, {k: v.numpy() for k, v in source.items()})
    with torch.no_grad():
        torch_logits = reference_forward(torch_model, ids.asnumpy()).logits.numpy()
    np.testing.assert_allclose(got, torch_logits, atol=1e-4, rtol=0)


def test_from_pretrained_moe_loads_every_parameter(tmp_path):
    config = TelechatConfig.preset("tiny_moe")
    source = write_hf_checkpoint(str(tmp_path / "hf"), config, "single", router_key="gate")
    convert_hf_to_ms(str(tmp_path / "hf"), str(tmp_path / "ms"))
    model = TelechatForCausalLM.from_pretrained(str(tmp_path / "ms"))
    params = model.parameters_dict()
    expected = hf_to_ms({k: v.numpy() for k, v in source.items()}, config)
    assert set(params) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(params[key].asnumpy(), value)


def test_hf_shapes_helper_matches_the_name_table():
    """The test helper spells HF keys independently; both must describe the same checkpoint."""
    for preset in ("tiny", "tiny_gqa", "tiny_moe"):
        config = TelechatConfig.preset(preset)
        table = {k: e.hf_shape for e in name_table(config) for k in e.hf_keys}
        assert table == hf_shapes(config)
