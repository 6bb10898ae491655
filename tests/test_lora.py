"""LoRA (issue 12): configs, targets by our and the family's HF names, the exact fused key_value <-> k/v
conversion, zero-init adapters, PEFT parity both ways (TeleChat2 names and a Llama layout), merge, chat with an
adapter and LoRA memory in the planner. Training (loss, resume, data parallel) is in test_lora_train.py."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import mindspore as ms

from telechat_ms import TelechatConfig, TelechatForCausalLM
from telechat_ms.cli import main as cli_main
from telechat_ms.config.base import ConfigError
from telechat_ms.convert.names import merge_key_value, split_key_value
from telechat_ms.convert.pipeline import convert_hf_to_ms, convert_ms_to_hf
from telechat_ms.lora import LoraConfig, adapter_arrays, apply_lora, load_adapter, save_adapter
from telechat_ms.lora.config import lora_from_run
from telechat_ms.lora.inject import Adapter, set_adapter_arrays
from telechat_ms.lora.layouts import hf_to_ours, ours_to_hf
from telechat_ms.lora.names import config_linears, select_targets

from .conftest import set_mode
from .reference import torch_families as tf
from .reference.torch_telechat import build_reference, random_hf_state, reference_forward
from .reference.torch_telechat_hf import TelechatHF

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_TELECHAT = ["query", "key_value", "dense", "gate_proj", "up_proj", "down_proj"]
ALL_LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ----------------------------------------------------------------------------- configs and targets (no model)
def _targets(preset, lora=None, **fields):
    config = TelechatConfig.preset(preset)
    lora = lora or LoraConfig(**fields)
    return [m.replace("model.layers.0.", "") for m in select_targets(lora, config, config_linears(config))
            if m.startswith("model.layers.0.") or m == "lm_head"]


def test_lora_section_and_pet_config_mean_the_same():
    ours = lora_from_run({"lora": {"rank": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["wq", "wk_v"]}}, "y")
    pet = lora_from_run({"model": {"model_config": {"pet_config": {
        "pet_type": "lora", "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.1,
        "target_modules": ".*wq|.*wk_v"}}}}, "y")
    assert (ours.rank, ours.alpha, ours.dropout, ours.scaling) == (pet.rank, pet.alpha, pet.dropout, 2.0)
    config = TelechatConfig.preset("tiny")
    assert select_targets(ours, config, config_linears(config)) == select_targets(pet, config, config_linears(config))
    assert _targets("tiny", rank=4, target_modules=["wq", "wk_v"]) == ["attention.wq", "attention.wk_v"]
    assert pet.init_a == "normal" and ours.init_a == "kaiming_uniform"      # MindFormers' lora_a_init default


@pytest.mark.parametrize("run,named", [
    ({"lora": {"rank": 4, "target_modules": ["wq"]}, "model": {"model_config": {"pet_config": {
        "pet_type": "lora", "target_modules": ".*wq"}}}}, "both lora: and model.model_config.pet_config"),
    ({"lora": {"rank": 4, "target_modules": ["wq"], "rnak": 2}}, "unknown config key 'rnak'"),
    ({"lora": {"rank": 0, "target_modules": ["wq"]}}, "lora.rank must be >= 1"),
    ({"lora": {"rank": 4}}, "lora.target_modules is required"),
    ({"lora": {"rank": 4, "dropout": 1.5, "target_modules": ["wq"]}}, "dropout must be in [0, 1)"),
    ({"model": {"model_config": {"pet_config": {"pet_type": "lora", "target_modules": ".*wq",
                                                "lora_b_init": "normal"}}}}, "lora_b_init: 'normal'"),
    ({"model": {"model_config": {"pet_config": {"pet_type": "prefix"}}}}, "pet_type: 'prefix'"),
    ({"model": {"model_config": {"pet_config": {"pet_type": "lora"}}}}, "target_modules is required"),
])
def test_bad_lora_settings_name_the_key(run, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        lora_from_run(run, "y.yaml")


def test_run_yaml_reads_lora_and_pet_config(tmp_path):
    from telechat_ms.train.trainer import load_run
    base = os.path.join(REPO, "yaml_configs", "tiny", "finetune_tiny.yaml")
    path = tmp_path / "pet.yaml"
    path.write_text(f"base_config: {base}\nmodel:\n  model_config:\n    pet_config:\n      pet_type: lora\n"
                    "      lora_rank: 2\n      lora_alpha: 4\n      target_modules: '.*wq'\n", encoding="utf-8")
    config, overrides, _ = load_run(str(path))
    assert config.lora.rank == 2 and config.lora.match == "mindformers" and "pet_config" not in overrides
    config, _, _ = load_run(os.path.join(REPO, "yaml_configs", "tiny", "lora_tiny.yaml"))
    assert config.lora.target_modules == ["wq", "wk_v", "wo", "w1", "w2", "w3"] and config.lora.rank == 8


@pytest.mark.parametrize("preset,targets,expected", [
    ("tiny", ALL_TELECHAT, ["attention.wq", "attention.wk_v", "attention.wo", "feed_forward.w1", "feed_forward.w3",
                            "feed_forward.w2"]),
    ("tiny", ["key_value", "lm_head"], ["attention.wk_v", "lm_head"]),
    ("tiny_llama2_gqa", ["q_proj", "k_proj", "v_proj"], ["attention.wq", "attention.wk_v"]),
    ("tiny_llama2_gqa", ".*(gate|up)_proj", ["feed_forward.w1", "feed_forward.w3"]),
    ("tiny_telechat52b", ["c_attn"], ["attention.wq", "attention.wk_v"]),
    ("tiny_telechat52b", ["c_fc", "wo"], ["attention.wo", "feed_forward.w1", "feed_forward.w3"]),
])
def test_targets_by_our_and_the_familys_hf_names(preset, targets, expected):
    assert _targets(preset, target_modules=targets) == expected


def test_targets_refused_clearly():
    with pytest.raises(ConfigError, match="k_proj is targeted but v_proj is not.*fused"):
        _targets("tiny_llama2", target_modules=["q_proj", "k_proj"])
    with pytest.raises(ConfigError, match="matches no linear.*our names: .*wk_v.*HF names: .*key_value"):
        _targets("tiny", target_modules=["q_proj"])
    assert _targets("tiny", target_modules=["wq", "wo"], exclude_modules=["dense"]) == ["attention.wq"]
    pet = LoraConfig.from_pet_config({"pet_type": "lora", "target_modules": ".*w", "exclude_layers": ["w2"]})
    assert _targets("tiny", pet) == ["attention.wq", "attention.wk_v", "attention.wo", "feed_forward.w1",
                                     "feed_forward.w3"]


# ----------------------------------------------------------------------------- the fused kv layout, exactly
def _random_adapters(shapes: dict, rank: int, seed: int, scaling=2.0) -> dict:
    rng = np.random.default_rng(seed)
    return {m: Adapter(rng.normal(0, 0.1, (rank, s[1])).astype(np.float32),
                       rng.normal(0, 0.1, (s[0], rank)).astype(np.float32), scaling) for m, s in shapes.items()}


def _assert_same(x: dict, y: dict):
    assert set(x) == set(y)
    for m in x:
        assert x[m].scaling == y[m].scaling and np.array_equal(x[m].a, y[m].a) and np.array_equal(x[m].b, y[m].b), m


def test_fused_key_value_is_two_loras_sharing_a_and_back():
    """ours wk_v (rank r) -> HF k_proj, v_proj: same A, B = K / V rows; deltas exact; back to ours bit for bit."""
    config = TelechatConfig.preset("tiny_llama2_gqa")
    kv, h = 2 * config.num_kv_heads * config.head_dim, config.hidden_size
    modules = config_linears(config)
    ours = _random_adapters({"model.layers.1.attention.wk_v": (kv, h)}, rank=4, seed=0)
    hf = ours_to_hf(config, ours, modules)
    k, v = hf["model.layers.1.self_attn.k_proj"], hf["model.layers.1.self_attn.v_proj"]
    assert k.rank == v.rank == 4 and np.array_equal(k.a, v.a)
    fused = ours["model.layers.1.attention.wk_v"]
    dk, dv = split_key_value(fused.delta(), config.num_kv_heads, config.head_dim)
    np.testing.assert_allclose(k.delta(), dk, rtol=0, atol=1e-12)
    np.testing.assert_allclose(v.delta(), dv, rtol=0, atol=1e-12)
    _assert_same(hf_to_ours(config, hf, modules), ours)


def test_two_independent_kv_loras_are_one_fused_lora_of_twice_the_rank_and_back():
    config = TelechatConfig.preset("tiny_llama2_gqa")
    kvd, h = config.num_kv_heads * config.head_dim, config.hidden_size
    modules = config_linears(config)
    hf = _random_adapters({"model.layers.0.self_attn.k_proj": (kvd, h)}, rank=3, seed=1)
    hf.update(_random_adapters({"model.layers.0.self_attn.v_proj": (kvd, h)}, rank=3, seed=2, scaling=0.5))
    ours = hf_to_ours(config, hf, modules)
    fused = ours["model.layers.0.attention.wk_v"]
    assert fused.rank == 6 and fused.blocks == (3, 3)
    expected = merge_key_value(hf["model.layers.0.self_attn.k_proj"].delta(),
                               hf["model.layers.0.self_attn.v_proj"].delta(), config.num_kv_heads, config.head_dim)
    np.testing.assert_allclose(fused.delta(), expected, rtol=0, atol=1e-7)      # v's scaling folded into B
    back = ours_to_hf(config, ours, modules)
    assert set(back) == set(hf)
    for m in hf:
        assert back[m].rank == 3 and np.array_equal(back[m].a, hf[m].a)
        np.testing.assert_allclose(back[m].delta(), hf[m].delta(), rtol=0, atol=1e-7)


def test_conv1d_c_attn_and_c_fc_are_exact_both_ways():
    """TeleChat-52B: one c_attn LoRA = wq and wk_v sharing A; independent wq / wk_v LoRAs = one c_attn LoRA."""
    config = TelechatConfig.preset("tiny_telechat52b")
    h, q, kv, f = config.hidden_size, config.num_heads * config.head_dim, 2 * config.num_kv_heads * config.head_dim, \
        config.ffn_hidden_size
    modules = config_linears(config)
    hf = _random_adapters({"transformer.h.0.attn.c_attn": (q + kv, h), "transformer.h.0.mlp.c_fc": (2 * f, h)}, 4, 3)
    ours = hf_to_ours(config, hf, modules)
    d = hf["transformer.h.0.attn.c_attn"].delta()
    np.testing.assert_allclose(ours["model.layers.0.attention.wq"].delta(), d[:q], atol=1e-12)
    k, v = d[q:q + kv // 2], d[q + kv // 2:]
    np.testing.assert_allclose(ours["model.layers.0.attention.wk_v"].delta(),
                               merge_key_value(k, v, config.num_kv_heads, config.head_dim), atol=1e-12)
    _assert_same(ours_to_hf(config, ours, modules), hf)
    mine = _random_adapters({"model.layers.0.attention.wq": (q, h), "model.layers.0.attention.wk_v": (kv, h)}, 2, 4)
    c_attn = ours_to_hf(config, mine, modules)["transformer.h.0.attn.c_attn"]
    assert c_attn.rank == 4
    np.testing.assert_allclose(hf_to_ours(config, {"transformer.h.0.attn.c_attn": c_attn}, modules)[
        "model.layers.0.attention.wq"].delta(), mine["model.layers.0.attention.wq"].delta(), atol=1e-12)


@pytest.mark.parametrize("preset", ["tiny", "tiny_moe", "tiny_telechat1", "tiny_telechat1_untied", "tiny_telechat52b",
                                    "tiny_teleflm_gqa", "tiny_aquila2_gqa", "tiny_llama2"])
def test_every_family_round_trips_adapters_on_all_its_linears(preset):
    """Random adapters on every linear of each family: ours -> the family's HF names -> ours, bit for bit (MoE:
    attention, router and head; the experts are stacked tensors, not linears)."""
    from telechat_ms.lora.memory import _shapes
    config = TelechatConfig.preset(preset)
    modules = config_linears(config)
    shapes = _shapes(config)
    ours = _random_adapters({m: shapes[m] for m in modules}, rank=2, seed=len(preset))
    hf = ours_to_hf(config, ours, modules)
    assert set(hf) & set(ours) == {"lm_head"}                                  # every other name is the family's
    _assert_same(hf_to_ours(config, hf, modules), ours)


def test_telechat1_7b_spelling_and_tied_head(tmp_path):
    """TeleChat v1 7B names its modules without `transformer.`; a LoRA on its tied lm_head works at chat time
    but cannot be merged (the head is the embedding table)."""
    from telechat_ms.lora.merge import merged_state
    from telechat_ms.lora.peft_format import adapters_for_model
    config = TelechatConfig.preset("tiny_telechat1")
    h = config.hidden_size
    bare = _random_adapters({"h.1.self_attention.query": (h, h), "lm_head": (config.vocab_size, h)}, 2, 0)
    tensors = {f"base_model.model.{m}.lora_{x}.weight": getattr(a, x.lower()) for m, a in bare.items() for x in "AB"}
    os.makedirs(tmp_path / "a")
    save_file(tensors, str(tmp_path / "a" / "adapter_model.safetensors"))
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    ours, _ = adapters_for_model(str(tmp_path / "a"), config)
    assert sorted(ours) == ["lm_head", "model.layers.1.attention.wq"]
    assert ours["lm_head"].scaling == 2.0
    with pytest.raises(ConfigError, match="tied lm_head"):
        merged_state({}, config, ours)


# ----------------------------------------------------------------------------- models (fp32, pynative)
def _write_hf(dst, config, state):
    os.makedirs(dst)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, os.path.join(dst, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(dst, "config.json"), "w", encoding="utf-8") as fh:
        json.dump(config.to_hf_config(), fh)
    with open(os.path.join(dst, "generation_config.json"), "w", encoding="utf-8") as fh:
        json.dump({"do_sample": False, "eos_token_id": 2, "pad_token_id": 3, "bos_token_id": 1}, fh)
    shutil.copy(os.path.join(REPO, "data", "tiny_tokenizer.model"), os.path.join(dst, "tokenizer.model"))


def _llama_cfg(config):
    return dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.ffn_hidden_size,
                num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
                num_key_value_heads=config.num_kv_heads, rms_norm_eps=config.rms_norm_eps, rope_theta=config.rope_theta)


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """{family: (config, HF state, HF dir, converted dir)} for a TeleChat2 GQA and a Llama-2 GQA tiny model."""
    root = tmp_path_factory.mktemp("lora_models")
    out = {}
    tele = TelechatConfig.preset("tiny_gqa")
    llama = TelechatConfig.preset("tiny_llama2_gqa")
    for name, config, state in (("telechat2", tele, random_hf_state(tele, seed=5)),
                                ("llama2", llama, tf.random_llama_state(_llama_cfg(llama), seed=6))):
        _write_hf(str(root / f"{name}_hf"), config, state)
        convert_hf_to_ms(str(root / f"{name}_hf"), str(root / f"{name}_ms"))
        out[name] = (config, state, str(root / f"{name}_hf"), str(root / f"{name}_ms"))
    return out


def _ids(config, seq=12):
    return np.random.default_rng(seq).integers(0, config.vocab_size, (2, seq)).astype(np.int32)


def _logits(model, ids):
    return model(ms.Tensor(ids)).asnumpy()


def _randomize_b(model, seed=7, std=0.1):
    rng = np.random.default_rng(seed)
    set_adapter_arrays(model, {m: Adapter(a.a, rng.normal(0, std, a.b.shape).astype(np.float32), a.scaling)
                               for m, a in adapter_arrays(model).items()})


def _torch_ids(ids):
    return torch.from_numpy(ids.astype(np.int64))


def test_zero_init_adapters_leave_logits_unchanged_and_only_adapters_are_trainable(families):
    set_mode("pynative")
    config, _, _, ms_dir = families["telechat2"]
    model = TelechatForCausalLM.from_pretrained(ms_dir)
    ids = _ids(config)
    before = _logits(model, ids)
    base_names = sorted(model.parameters_dict())
    names = apply_lora(model, LoraConfig(rank=4, alpha=8, target_modules=ALL_TELECHAT + ["lm_head"]))
    assert len(names) == 6 * config.num_layers + 1
    np.testing.assert_array_equal(_logits(model, ids), before)              # B = 0: exactly the base model
    params = model.parameters_dict()
    assert sorted(k for k in params if not k.endswith((".lora_a", ".lora_b"))) == base_names   # names kept
    trainable = model.trainable_params()
    assert {p.name for p in trainable} == {f"{m}.lora_{x}" for m in names for x in "ab"}
    cells = dict(model.cells_and_names())
    expected = sum(4 * (cells[m].in_features + cells[m].out_features) for m in names)
    assert sum(p.size for p in trainable) == expected
    assert all(np.count_nonzero(p.asnumpy()) == 0 for p in trainable if p.name.endswith("lora_b"))


def test_our_adapter_loads_in_peft_and_gives_our_logits_telechat2(families, tmp_path):
    """Our TeleChat2 adapter (HF names: query, key_value, dense, ...) on a torch model with the HF module names,
    through PeftModel.from_pretrained: the same logits (<= 1e-4). The torch model is anchored to the Llama-based
    TeleChat2 reference first."""
    from peft import PeftModel
    set_mode("pynative")
    config, state, _, ms_dir = families["telechat2"]
    ids = _ids(config)
    ref = TelechatHF(config).load_hf_state(state)
    with torch.no_grad():
        base_ref = ref(input_ids=_torch_ids(ids)).numpy()
        np.testing.assert_allclose(base_ref, reference_forward(build_reference(config, state), ids).logits.numpy(),
                                   rtol=0, atol=1e-5)
    model = TelechatForCausalLM.from_pretrained(ms_dir)
    apply_lora(model, LoraConfig(rank=4, alpha=8, target_modules=ALL_TELECHAT + ["lm_head"]))
    _randomize_b(model)
    ours = _logits(model, ids)
    assert np.abs(ours - base_ref).max() > 0.1                               # the adapter matters
    save_adapter(model, str(tmp_path / "adapter"), base=ms_dir)
    settings = json.load(open(tmp_path / "adapter" / "adapter_config.json", encoding="utf-8"))
    assert settings["target_modules"] == sorted(ALL_TELECHAT + ["lm_head"]) and settings["r"] == 4
    peft_model = PeftModel.from_pretrained(ref, str(tmp_path / "adapter"))
    with torch.no_grad():
        theirs = peft_model(input_ids=_torch_ids(ids)).numpy()
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4)


def test_peft_trained_adapter_loads_into_ours_telechat2(families, tmp_path):
    from peft import LoraConfig as PeftLoraConfig, get_peft_model
    set_mode("pynative")
    config, state, _, ms_dir = families["telechat2"]
    torch.manual_seed(0)
    peft_model = get_peft_model(TelechatHF(config).load_hf_state(state),
                                PeftLoraConfig(r=3, lora_alpha=5, target_modules=ALL_TELECHAT, use_rslora=True))
    _randomize_torch(peft_model)
    peft_model.save_pretrained(str(tmp_path / "peft"))
    ids = _ids(config)
    with torch.no_grad():
        theirs = peft_model(input_ids=_torch_ids(ids)).numpy()
    model = TelechatForCausalLM.from_pretrained(ms_dir)
    load_adapter(model, str(tmp_path / "peft"))
    np.testing.assert_allclose(_logits(model, ids), theirs, rtol=0, atol=1e-4)


def _randomize_torch(peft_model, std=0.1):
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=std)


def test_peft_llama_adapter_with_split_kv_loads_and_round_trips_exactly(families, tmp_path):
    """A Llama layout adapter trained by PEFT (independent k_proj / v_proj LoRAs, GQA) gives PEFT's logits in
    ours (one fused wk_v LoRA of twice the rank) and is written back tensor for tensor."""
    from peft import LoraConfig as PeftLoraConfig, get_peft_model
    set_mode("pynative")
    config, state, _, ms_dir = families["llama2"]
    torch.manual_seed(1)
    peft_model = get_peft_model(tf.llama_reference(_llama_cfg(config), state).model,
                                PeftLoraConfig(r=4, lora_alpha=8, target_modules=ALL_LLAMA))
    _randomize_torch(peft_model)
    peft_model.save_pretrained(str(tmp_path / "peft"))
    ids = _ids(config)
    with torch.no_grad():
        theirs = peft_model(input_ids=_torch_ids(ids)).logits.numpy()
    model = TelechatForCausalLM.from_pretrained(ms_dir)
    load_adapter(model, str(tmp_path / "peft"))
    assert adapter_arrays(model)["model.layers.0.attention.wk_v"].rank == 8
    np.testing.assert_allclose(_logits(model, ids), theirs, rtol=0, atol=1e-4)
    save_adapter(model, str(tmp_path / "back"))
    a, b = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("peft", "back"))
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_our_llama_adapter_loads_in_peft(families, tmp_path):
    from peft import PeftModel
    set_mode("pynative")
    config, state, _, ms_dir = families["llama2"]
    model = TelechatForCausalLM.from_pretrained(ms_dir)
    apply_lora(model, LoraConfig(rank=2, alpha=6, target_modules=["wq", "wk_v", "w2"]))
    _randomize_b(model, seed=9)
    ids = _ids(config)
    save_adapter(model, str(tmp_path / "adapter"))
    peft_model = PeftModel.from_pretrained(tf.llama_reference(_llama_cfg(config), state).model,
                                           str(tmp_path / "adapter"))
    with torch.no_grad():
        theirs = peft_model(input_ids=_torch_ids(ids)).logits.numpy()
    np.testing.assert_allclose(_logits(model, ids), theirs, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- merge, chat
@pytest.fixture(scope="module")
def adapters(families, tmp_path_factory):
    """{family: (adapter dir, logits of base + adapter)} with random adapters on every projection."""
    set_mode("pynative")
    root, out = tmp_path_factory.mktemp("lora_adapters"), {}
    for name, targets in (("telechat2", ALL_TELECHAT), ("llama2", ALL_LLAMA)):
        config, _, _, ms_dir = families[name]
        model = TelechatForCausalLM.from_pretrained(ms_dir)
        apply_lora(model, LoraConfig(rank=4, alpha=8, target_modules=targets))
        _randomize_b(model, seed=11)
        save_adapter(model, str(root / name), base=ms_dir)
        out[name] = (str(root / name), _logits(model, _ids(config)))
    return out


@pytest.mark.parametrize("family", ["telechat2", "llama2"])
def test_merge_lora_equals_base_plus_adapter_and_round_trips_ms2hf(families, adapters, family, tmp_path, capsys):
    from peft import PeftModel
    set_mode("pynative")
    config, state, _, ms_dir = families[family]
    adapter, with_adapter = adapters[family]
    assert cli_main(["merge-lora", "--base", ms_dir, "--adapter", adapter, "--dst", str(tmp_path / "merged")]) == 0
    assert "merged 12 LoRA weights" in capsys.readouterr().out
    merged = TelechatForCausalLM.from_pretrained(str(tmp_path / "merged"))
    np.testing.assert_allclose(_logits(merged, _ids(config)), with_adapter, rtol=0, atol=1e-5)
    assert {"model_config.yaml", "convert_meta.json", "tokenizer.model", "checksums.sha256"} <= \
        set(os.listdir(tmp_path / "merged"))
    convert_ms_to_hf(str(tmp_path / "merged"), str(tmp_path / "hf"))
    ours = load_file(str(tmp_path / "hf" / "model.safetensors")) if os.path.isfile(
        tmp_path / "hf" / "model.safetensors") else _hf_shards(tmp_path / "hf")
    ref = TelechatHF(config).load_hf_state(state) if family == "telechat2" else \
        tf.llama_reference(_llama_cfg(config), state).model
    theirs = PeftModel.from_pretrained(ref, adapter).merge_and_unload().state_dict()
    for key, value in ours.items():
        np.testing.assert_allclose(value, theirs[key].numpy(), rtol=0, atol=1e-5, err_msg=key)


def _hf_shards(directory):
    out = {}
    for name in os.listdir(directory):
        if name.endswith(".safetensors"):
            out.update(load_file(os.path.join(directory, name)))
    return out


def test_merge_lora_refuses_bad_input_in_one_line(families, adapters, tmp_path, capsys):
    _, _, _, tele_dir = families["telechat2"]
    adapter, _ = adapters["llama2"]
    cases = [(["--base", tele_dir, "--adapter", str(tmp_path), "--dst", str(tmp_path / "o")], "no adapter_config.json"),
             (["--base", tele_dir, "--adapter", adapter, "--dst", str(tmp_path / "o")], "not linear layers of this"),
             (["--base", tele_dir, "--adapter", adapters["telechat2"][0], "--dst", tele_dir], "must not be the source")]
    for args, named in cases:
        assert cli_main(["merge-lora", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    assert not os.path.exists(tmp_path / "o") and not any(n.startswith(".o") for n in os.listdir(tmp_path))


def test_chat_with_adapter_equals_chat_with_the_merged_model(families, adapters, tmp_path, capsys):
    from telechat_ms.infer.cli import main as chat_main
    config, _, _, ms_dir = families["telechat2"]
    adapter, _ = adapters["telechat2"]
    assert cli_main(["merge-lora", "--base", ms_dir, "--adapter", adapter, "--dst", str(tmp_path / "merged")]) == 0
    capsys.readouterr()
    # the model chat builds with --adapter (unmerged) computes the merged model's logits; comparing logits, not
    # greedy text, because a random tiny model has near-ties that 1e-7 float differences can flip
    import mindspore as ms
    from telechat_ms import TelechatForCausalLM
    from telechat_ms.lora import load_adapter
    ids = ms.Tensor(np.random.default_rng(5).integers(4, 500, (1, 24)).astype(np.int32))
    unmerged = TelechatForCausalLM.from_pretrained(ms_dir)
    load_adapter(unmerged, adapter)
    merged_net = TelechatForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert np.abs(unmerged(ids).asnumpy() - merged_net(ids).asnumpy()).max() <= 1e-5
    base_net = TelechatForCausalLM.from_pretrained(ms_dir)
    assert np.abs(base_net(ids).asnumpy() - merged_net(ids).asnumpy()).max() > 1e-3   # the adapter matters
    flags = ["--prompt", "你好", "--max-new-tokens", "6", "--mode", "pynative", "--no-stream"]
    assert chat_main(["--model", ms_dir, "--adapter", adapter, *flags]) == 0
    with_adapter = capsys.readouterr().out
    assert with_adapter.strip()
    assert chat_main(["--model", ms_dir, "--adapter", str(tmp_path), *flags]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err


# ----------------------------------------------------------------------------- planner
def test_plan_counts_a_frozen_base_and_adapter_states_only():
    from telechat_ms.config.parallel import ParallelConfig
    from telechat_ms.lora.memory import LoraMemory
    from telechat_ms.parallel.memory import Hardware, Workload
    from telechat_ms.parallel.planner import evaluate
    config = TelechatConfig.preset("7b", compute_dtype="bfloat16")
    layout, hw = ParallelConfig(recompute=True), Hardware()
    lora = LoraMemory.from_config(config, LoraConfig(rank=8, target_modules=["wq", "wk_v", "wo", "w1", "w2", "w3"]))
    h, f = config.hidden_size, config.ffn_hidden_size
    per_layer = 8 * (2 * (h + h) + (h + 2 * h) + 3 * (h + f))                # wq, wo, wk_v (MHA), w1, w3, w2
    assert lora.per_layer == per_layer and lora.base_bytes == 2
    full = evaluate(config, layout, Workload(seq_len=4096), hw).estimate.stages[0]
    low = evaluate(config, layout, Workload(seq_len=4096, lora=lora), hw).estimate.stages[0]
    adapters = config.num_layers * per_layer
    assert low.states_gb == pytest.approx((2 * full.params + 16 * adapters) / 1e9)
    assert low.total_gb < 30 < full.total_gb and low.time_s < full.time_s


def test_plan_cli_reads_lora_from_flags_and_yaml(tmp_path, capsys):
    from telechat_ms.parallel.plan_cli import main as plan_main
    common = ["--no-validate", "--seq-len", "4096"]
    assert plan_main(["--model", "7b", "--dp", "1", "--mp", "1", "--pp", "1", "--recompute", "full",
                      "--lora-rank", "8", *common]) == 0                       # fits one NPU with LoRA
    assert "LoRA r8 on 180 linears: 18.7M trainable params" in capsys.readouterr().out
    assert plan_main(["--model", "7b", "--dp", "1", "--mp", "1", "--pp", "1", "--recompute", "full", *common]) == 1
    capsys.readouterr()
    path = tmp_path / "lora.yaml"
    path.write_text(f"base_config: {os.path.join(REPO, 'yaml_configs', 'finetune_telechat2_7b.yaml')}\n"
                    "lora: {rank: 16, target_modules: [query, key_value]}\n", encoding="utf-8")
    assert plan_main(["--config", str(path), "--no-validate"]) == 0
    assert "LoRA r16 on 60 linears" in capsys.readouterr().out
