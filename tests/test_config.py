"""Model config: presets, HF config.json mapping, yaml round trip, and clear errors for bad input."""
import dataclasses
import json

import pytest

from telechat_ms import ConfigError, TelechatConfig
from telechat_ms.config.model import PRESETS

# spec §1: parameter counts computed from the architecture
SPEC_PARAMS = {"3b": 3.07e9, "7b": 7.62e9, "35b": 35.44e9, "115b": 113.28e9, "39b_a12b": 39.33e9}

# the published 115B config.json (spec §1.1), Megatron leftovers included
CONFIG_115B = {
    "architectures": ["TelechatForCausalLM"], "model_type": "telechat",
    "auto_map": {"AutoConfig": "configuration_telechat.TelechatConfig"},
    "vocab_size": 131072, "hidden_size": 8192, "ffn_hidden_size": 40960, "n_layer": 96, "n_head": 64,
    "num_key_value_heads": 8, "layer_norm_epsilon": 1e-08, "hidden_dropout": 0.0, "attention_dropout": 0.0,
    "apply_residual_connection_post_layernorm": False, "flash_attn": True, "tie_word_embeddings": False,
    "training_seqlen": 8192, "base_seqlen": 8192, "seq_length": 8192, "bos_token_id": 1, "eos_token_id": 2,
    "pad_token_id": 3, "unk_token_id": 0, "initializer_range": 0.02, "use_cache": True,
    "attention_softmax_in_fp32": True, "bias_dropout_fusion": True, "masked_softmax_fusion": True,
    "pretraining_tp": 2, "skip_bias_add": False, "skip_bias_add_qkv": False, "slow_but_exact": False,
    "n_inner": None, "logn": True,
}


@pytest.mark.parametrize("name,expected", sorted(SPEC_PARAMS.items()))
def test_preset_parameter_counts(name, expected):
    assert abs(TelechatConfig.preset(name).num_parameters() - expected) / expected <= 0.005


def test_moe_active_parameters():
    assert abs(TelechatConfig.preset("39b_a12b").num_parameters(active=True) - 12.15e9) / 12.15e9 <= 0.005


def test_115b_param_bytes_equal_published_index_total_size():
    assert TelechatConfig.preset("115b").num_parameters() * 4 == 453_131_665_408


def test_from_hf_config_115b(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIG_115B))
    config = TelechatConfig.from_hf_config(str(tmp_path))
    assert config == TelechatConfig.preset("115b")
    assert config.num_kv_heads == 8 and config.rms_norm_eps == 1e-8 and config.head_dim == 128


def test_missing_num_key_value_heads_means_mha():
    data = {k: v for k, v in CONFIG_115B.items() if k != "num_key_value_heads"}
    assert TelechatConfig.from_hf_config(data).num_kv_heads == 64


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_round_trips(name, tmp_path):
    config = TelechatConfig.preset(name)
    assert TelechatConfig.from_hf_config(config.to_hf_config()) == config
    path = tmp_path / "model.yaml"
    config.to_yaml(str(path))
    assert TelechatConfig.from_yaml(str(path)) == config


@pytest.mark.parametrize("changes,pattern", [
    (dict(num_heads=5), r"hidden_size \(64\) must be divisible by num_heads \(5\)"),
    (dict(num_kv_heads=3), r"num_heads \(4\) must be divisible by num_kv_heads \(3\)"),
    (dict(hidden_size=60, num_heads=4, num_kv_heads=4), r"head_dim .* 15 must be even"),
    (dict(num_layers=0), r"num_layers must be a positive integer, got 0"),
    (dict(num_layers=True), r"num_layers must be int, got True"),
    (dict(rms_norm_eps="1e-5"), r"rms_norm_eps must be float"),
    (dict(tie_word_embeddings=1), r"tie_word_embeddings must be bool"),
    (dict(rope_variant="yarn"), r"rope_variant must be one of telechat2, telechat1, flm, plain, got 'yarn'"),
    (dict(rope_scaling="linear", rope_scaling_factor=4.0), r"rope_scaling='linear' applies to rope_variant 'plain'"),
    (dict(logit_multiplier=0.0), r"logit_multiplier must be a finite number > 0"),
    (dict(pad_token_id=512), r"pad_token_id \(512\) must be in \[0, vocab_size=512\)"),
    (dict(compute_dtype="float64"), r"compute_dtype must be one of"),
    (dict(hidden_dropout=1.0), r"hidden_dropout must be in \[0, 1\)"),
    (dict(num_experts=1, num_experts_per_tok=1), r"num_experts must be 0 \(dense\) or >= 2, got 1"),
    (dict(num_experts=4, num_experts_per_tok=5), r"num_experts_per_tok \(5\) must be in \[1, num_experts=4\]"),
    (dict(num_experts_per_tok=2), r"num_experts_per_tok \(2\) needs num_experts > 0"),
    (dict(moe_capacity_factor=0.0), r"moe_capacity_factor must be > 0"),
])
def test_invalid_combinations_name_fields_and_values(changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        TelechatConfig(**{**PRESETS["tiny"], **changes})


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"config.json: 'rope_scaling': the TeleChat2 modeling never reads"):
        TelechatConfig.from_hf_config({**CONFIG_115B, "rope_scaling": {"type": "dynamic"}})
    with pytest.raises(ConfigError, match=r"unknown config key 'n_layer'"):
        TelechatConfig.from_dict({"n_layer": 2})          # HF names only through from_hf_config


def test_conflicting_aliases_are_rejected():
    with pytest.raises(ConfigError, match=r"'num_hidden_layers' and 'n_layer' both set field 'num_layers' to different values \(10 vs 96\)"):
        TelechatConfig.from_hf_config({**CONFIG_115B, "num_hidden_layers": 10})


def test_yaml_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("hidden_size: 64\nnum_heads: [4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+ invalid yaml"):
        TelechatConfig.from_yaml(str(bad))
    with pytest.raises(ConfigError, match="file not found"):
        TelechatConfig.from_yaml(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match=r"config.json: invalid JSON at line 1"):
        (tmp_path / "config.json").write_text("{oops")
        TelechatConfig.from_hf_config(str(tmp_path))


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        TelechatConfig.preset("huge")


def test_yaml_with_model_config_section(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model_config:\n" + "".join(f"  {k}: {v}\n" for k, v in PRESETS["tiny"].items()))
    assert TelechatConfig.from_yaml(str(path)) == TelechatConfig.preset("tiny")
    assert dataclasses.replace(TelechatConfig.preset("tiny"), num_layers=3).num_layers == 3


def test_yaml_in_mindformers_layout(tmp_path):
    path = tmp_path / "run.yaml"
    body = "".join(f"      {k}: {v}\n" for k, v in PRESETS["tiny"].items())
    path.write_text("model:\n  arch:\n    type: TelechatForCausalLM\n  model_config:\n"
                    "    type: TelechatConfig\n" + body.replace("      ", "    "))
    assert TelechatConfig.from_yaml(str(path)) == TelechatConfig.preset("tiny")
    path.write_text("model:\n  model_config:\n    num_layerz: 2\n")
    with pytest.raises(ConfigError, match=r"run.yaml: model.model_config: unknown config key 'num_layerz'"):
        TelechatConfig.from_yaml(str(path))


# ---- explicit head_dim (per-rank configs of tensor-parallel inference) ----

def test_head_dim_defaults_to_hidden_over_heads_and_is_not_serialised():
    config = TelechatConfig.preset("tiny_gqa")
    assert config.head_dim == 16 and config.head_dim_is_derived
    assert "head_dim" not in config.to_dict() and "head_dim" not in config.to_hf_config()
    assert TelechatConfig.preset("tiny", head_dim=16) == TelechatConfig.preset("tiny")   # same as derived


def test_explicit_head_dim_round_trips_and_counts_parameters(tmp_path):
    # the TP=2 rank config of tiny_gqa: 2 query heads, 1 kv head, global head_dim 16 (2 * 16 != hidden 64)
    config = TelechatConfig.preset("tiny_gqa", num_heads=2, num_kv_heads=1, ffn_hidden_size=80, head_dim=16)
    assert config.head_dim == 16 and not config.head_dim_is_derived
    assert config.to_dict()["head_dim"] == 16 and config.to_hf_config()["head_dim"] == 16
    assert TelechatConfig.from_hf_config(config.to_hf_config()) == config
    config.to_yaml(str(tmp_path / "rank.yaml"))
    assert TelechatConfig.from_yaml(str(tmp_path / "rank.yaml")) == config
    h, q, kv, f, v = 64, 2 * 16, 1 * 16, 80, 512
    layer = (q * h + 2 * kv * h + h * q + h) + (3 * h * f + h) + 2 * h
    assert config.num_parameters() == 2 * v * h + 2 * layer + h


@pytest.mark.parametrize("head_dim,pattern", [
    (15, r"head_dim \(15\) must be even for rotary embedding"),
    (0, r"head_dim must be a positive integer, got 0"),
    (16.0, r"head_dim must be int, got 16.0"),
])
def test_bad_explicit_head_dim_is_named(head_dim, pattern):
    with pytest.raises(ConfigError, match=pattern):
        TelechatConfig(**{**PRESETS["tiny"], "head_dim_override": head_dim})


def test_replace_rederives_head_dim():
    """dataclasses.replace with a new width/head count derives head_dim again (benchmarks and tests rely on it),
    while an explicit override survives."""
    wide = dataclasses.replace(TelechatConfig.preset("tiny"), hidden_size=512, num_heads=8, num_kv_heads=8)
    assert wide.head_dim == 64 and wide.head_dim_is_derived
    rank = TelechatConfig.preset("tiny_gqa", num_heads=2, num_kv_heads=1, head_dim=16)
    assert dataclasses.replace(rank, ffn_hidden_size=80).head_dim == 16
