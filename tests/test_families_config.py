"""Families as data: HF config.json of every family -> TelechatConfig, detection, presets, rotary rules.

References are written out here from the spec (families.md) and transformers' own config classes, never from
telechat_ms tables.
"""
import json
import math

import numpy as np
import pytest

from telechat_ms import ConfigError, TelechatConfig
from telechat_ms.config.model import PRESETS
from telechat_ms.families import all_families, detect, get
from telechat_ms.model.rotary import RopeSpec, rope_regime, rotary_tables

# spec families.md, verbatim values
TELECHAT1_7B = {"architectures": ["TelechatForCausalLM"], "model_type": "telechat", "n_layer": 30,
                "hidden_size": 4096, "n_head": 32, "ffn_hidden_size": 12288, "vocab_size": 160256,
                "layer_norm_epsilon": 1e-5, "training_seqlen": 8192, "seq_length": 8192, "embed_layernorm": False,
                "apply_residual_connection_post_layernorm": False, "flash_attn": True, "bos_token_id": 1,
                "eos_token_id": 2, "hidden_dropout": 0.0, "attention_dropout": 0.0}
TELECHAT_52B = {"architectures": ["TeleChatForCausalLM"], "model_type": "telechat", "n_embd": 8192, "n_layer": 64,
                "n_head": 64, "n_inner": 21824, "vocab_size": 80896, "n_positions": 4096,
                "layer_norm_epsilon": 1e-5, "use_RMSNorm": True, "activation_function": "silu",
                "add_bias_linear": False, "relative_encoding": "rotary", "rotary_theta": 10000,
                "rotary_use_xpos": False, "use_mup": True, "input_mult": 1.0, "output_mult": 1.0,
                "mup_scale_factor": 32.0, "mup_base_width": 256, "scale_attn_weights": True,
                "scale_attn_by_inverse_layer_idx": True, "reorder_and_upcast_attn": True,
                "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3,
                "unk_token_id": 0, "torch_dtype": "bfloat16"}
FLM = {"architectures": ["TeleFLMForCausalLM"], "model_type": "TeleFLM", "hidden_size": 8192,
       "num_hidden_layers": 64, "num_attention_heads": 64, "num_key_value_heads": 64, "intermediate_size": 21824,
       "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None,
       "use_mup": True, "input_mult": 1.0, "attention_bias": False, "tie_word_embeddings": False,
       "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2}
AQUILA_2023 = {"architectures": ["AquilaForCausalLM"], "model_type": "aquila", "hidden_size": 6144,
               "num_hidden_layers": 60, "num_attention_heads": 48, "num_key_value_heads": 8,
               "intermediate_size": 24576, "vocab_size": 100008, "max_position_embeddings": 4096,
               "rms_norm_eps": 1e-5, "bos_token_id": 100006, "eos_token_id": 100007, "pad_token_id": 0,
               "hidden_act": "silu", "tie_word_embeddings": False}
AQUILA_2024 = {**AQUILA_2023, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 143973,
               "bos_token_id": 143717, "eos_token_id": 143718, "rope_theta": 1000000.0,
               "max_position_embeddings": 8192, "transformers_version": "4.39.3"}
FIREFLY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
           "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 11008,
           "vocab_size": 55296, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_scaling": None,
           "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
           "hidden_act": "silu", "torch_dtype": "float16"}


def test_every_preset_builds_and_names_its_family():
    names = {f.name for f in all_families()}
    assert names == {"telechat2", "telechat1", "telechat52b", "teleflm", "aquila2", "firefly", "llama2"}
    for name in PRESETS:
        config = TelechatConfig.preset(name)
        assert config.family in names
        assert TelechatConfig.from_hf_config(config.to_hf_config()) == config, name


@pytest.mark.parametrize("name,params", [
    ("telechat1_7b", 14_400_036_864 // 2),            # the 7B index total_size (fp16, tied)
    ("telechat_52b", 105_665_020_032 // 2 - 64),      # the 52B index total_size (bf16) minus 64 masked_bias scalars
    ("llama2_7b", 6_738_415_616), ("llama2_13b", 13_015_864_320), ("llama2_70b", 68_976_648_192),
])
def test_published_parameter_counts(name, params):
    assert TelechatConfig.preset(name).num_parameters() == params


@pytest.mark.parametrize("name,billions", [("telechat1_12b", 12), ("teleflm_52b", 52), ("flm2_52b", 52),
                                           ("teleflm_1t", 1000), ("aquila2_7b", 7), ("aquila2_34b", 34),
                                           ("aquila2_70b", 70), ("firefly_llama2_7b", 7)])
def test_real_sizes_are_the_advertised_class(name, billions):
    # these sizes have no published exact count in the spec: the architecture must land within 10 % of the name
    count = TelechatConfig.preset(name).num_parameters()
    assert 0.9 * billions * 1e9 <= count <= 1.1 * billions * 1e9


def test_telechat1_7b_config_is_tied_mha_with_divisor_4096(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TELECHAT1_7B))
    config = TelechatConfig.from_hf_config(str(tmp_path))
    assert config.family == "telechat1" and config.rope_variant == "telechat1"
    assert config.tie_word_embeddings and config.num_kv_heads == 32 and config.base_seqlen == 4096
    assert config.num_parameters() == TelechatConfig.preset("telechat1_7b").num_parameters()
    # the divisor comes from the checkpoint's own modeling file when it is there
    (tmp_path / "modeling_telechat.py").write_text(
        "def get_ntk_alpha(self, true_seq_len):\n    context_value = math.log(true_seq_len / 8192, 2) + 1\n")
    assert TelechatConfig.from_hf_config(str(tmp_path)).base_seqlen == 8192


def test_telechat_52b_gpt2_config():
    config = TelechatConfig.from_hf_config(TELECHAT_52B)
    assert config.family == "telechat52b" and config.rope_variant == "flm"
    assert config.logit_multiplier == 1 / 32 and config.embedding_multiplier == 1.0
    assert not config.attention_out_bias and not config.mlp_out_bias and not config.rotary_fp16_rounding
    assert (config.hidden_size, config.ffn_hidden_size, config.base_seqlen) == (8192, 21824, 4096)
    with pytest.raises(ConfigError, match=r"'rotary_use_xpos': True is not supported"):
        TelechatConfig.from_hf_config({**TELECHAT_52B, "rotary_use_xpos": True})


@pytest.mark.parametrize("output_mult,scale,vocab,expected", [(0.5, 16.0, 80384, 1 / 32), (1.0, 32.0, 80896, 1 / 32),
                                                              (2.0, 80.0, 81920, 1 / 40)])
def test_flm_logit_multiplier_is_output_mult_over_mup_scale(output_mult, scale, vocab, expected):
    config = TelechatConfig.from_hf_config({**FLM, "vocab_size": vocab, "output_mult": output_mult,
                                            "mup_scale_factor": scale})
    assert config.family == "teleflm" and config.rope_variant == "plain"
    assert math.isclose(config.logit_multiplier, expected)


def test_aquila2_2023_and_2024_configs_both_map():
    old, new = TelechatConfig.from_hf_config(AQUILA_2023), TelechatConfig.from_hf_config(AQUILA_2024)
    assert old.family == new.family == "aquila2"
    assert (old.vocab_size, old.bos_token_id, old.eos_token_id, old.rope_theta) == (100008, 100006, 100007, 1e4)
    assert (new.vocab_size, new.bos_token_id, new.eos_token_id, new.rope_theta) == (143973, 143717, 143718, 1e6)
    assert old.num_kv_heads == 8 and old.seq_length == 4096 and new.seq_length == 8192
    linear = TelechatConfig.from_hf_config({**AQUILA_2023, "rope_scaling": {"type": "linear", "factor": 4.0}})
    assert (linear.rope_scaling, linear.rope_scaling_factor) == ("linear", 4.0)


def test_firefly_and_llama_detection_and_override():
    assert TelechatConfig.from_hf_config(FIREFLY).family == "firefly"
    assert TelechatConfig.from_hf_config({**FIREFLY, "vocab_size": 32000}).family == "llama2"
    assert TelechatConfig.from_hf_config(FIREFLY, family="llama2").family == "llama2"
    with pytest.raises(ConfigError, match=r"cannot tell the model family .*known: .*aquila2"):
        detect({"model_type": "gpt_neox"})
    with pytest.raises(ConfigError, match=r"unknown model family 'gpt' \(known: "):
        get("gpt")


def test_transformers_full_config_dumps_are_accepted():
    """save_pretrained writes `dtype`; to_dict() dumps every PretrainedConfig attribute: all bookkeeping."""
    from transformers import LlamaConfig
    dump = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64).to_dict()
    assert "dtype" in dump and "id2label" in dump and "torchscript" in dump
    config = TelechatConfig.from_hf_config(dump)
    assert (config.family, config.num_kv_heads, config.seq_length) == ("llama2", 2, 64)
    tele = {**TelechatConfig.preset("tiny").to_hf_config(), "dtype": "float32", "torchscript": False,
            "id2label": {"0": "LABEL_0"}, "rope_scaling": None, "quantization_config": None,
            "tokenizer_class": None, "is_encoder_decoder": False, "add_cross_attention": False}
    assert TelechatConfig.from_hf_config(tele) == TelechatConfig.preset("tiny")


def test_unknown_keys_are_named_together_and_math_keys_stay_strict():
    with pytest.raises(ConfigError, match=r"unknown config keys 'foo', 'bar'"):
        TelechatConfig.from_hf_config({**FIREFLY, "foo": 1, "bar": 2})
    for key, value, pattern in [("rope_scaling", {"type": "yarn", "factor": 4.0}, r"'rope_scaling': type 'yarn'"),
                                ("attention_bias", True, r"'attention_bias': True is not supported"),
                                ("hidden_act", "gelu", r"'hidden_act': 'gelu' is not supported"),
                                ("quantization_config", {"quant_method": "gptq"}, r"quant_method 'gptq'")]:
        with pytest.raises(ConfigError, match=pattern):
            TelechatConfig.from_hf_config({**FIREFLY, key: value})


def _spec(variant, **kw):
    base = dict(head_dim=16, variant=variant, theta=10000.0, training_seqlen=32, base_seqlen=32,
                fp16_rounding=False)
    return RopeSpec(**{**base, **kw})


def test_flm_rule_switches_after_base_without_exponent_or_mscale():
    spec = _spec("flm", base_seqlen=4096)
    assert rope_regime(spec, 4096) == (10000.0, 1.0)
    assert rope_regime(spec, 4097) == (30000.0, 1.0) == rope_regime(spec, 8192)
    assert rope_regime(spec, 8193) == (70000.0, 1.0)


def test_telechat1_rule_is_telechat2_with_its_divisor():
    v1 = _spec("telechat1", training_seqlen=8192, base_seqlen=4096)
    base, mscale = rope_regime(v1, 10)                      # 7B: alpha 3 even for short inputs
    assert math.isclose(base, 10000 * 3 ** (16 / 14)) and mscale == 1.0


def test_plain_rope_matches_transformers_linear_and_dynamic():
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    for kind, factor, length in [("linear", 4.0, 50), ("dynamic", 2.0, 50), ("dynamic", 2.0, 20)]:
        hf = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=32, rope_theta=10000.0,
                         rope_scaling={"rope_type": kind, "factor": factor})
        inv_freq, _ = ROPE_INIT_FUNCTIONS[kind](hf, "cpu", seq_len=length)
        freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq.float())
        emb = torch.cat([freqs, freqs], -1)
        cos, sin = rotary_tables(_spec("plain", scaling=kind, scaling_factor=factor), length, 0, length)
        assert np.abs(cos - emb.cos().numpy()).max() < 1e-5 and np.abs(sin - emb.sin().numpy()).max() < 1e-5
