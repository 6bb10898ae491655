"""Converters for every family: a tiny checkpoint in the family's own HF layout (key names, Conv1D transposes,
split k/v, buffers, config.json written out here from spec families.md, independently of the name tables)
-> hf2ms -> ms2hf: our tensors equal an independent re-layout, the way back is bit-exact with the same key
set and the same config.json bytes; detection, --family, and the errors for unknown families / fields."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from telechat_ms.config import TelechatConfig
from telechat_ms.convert import (ConvertError, convert_hf_to_ms, convert_mindformers_to_ms, convert_ms_to_hf,
                                 hf_to_ms, ms_to_hf)
from telechat_ms.convert.cli import hf2ms_main, ms2hf_main
from tests.hf_checkpoint import load_safetensors_dir

# ---- config.json of each family (HF naming, as the published files spell them) ------------------------

TELECHAT1 = {"architectures": ["TelechatForCausalLM"], "model_type": "telechat", "vocab_size": 512,
             "hidden_size": 64, "n_layer": 2, "n_head": 4, "ffn_hidden_size": 160, "layer_norm_epsilon": 1e-5,
             "training_seqlen": 64, "seq_length": 64, "embed_layernorm": False,
             "apply_residual_connection_post_layernorm": False, "hidden_dropout": 0.0, "attention_dropout": 0.0,
             "flash_attn": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3,
             "initializer_range": 0.02, "use_cache": True, "torch_dtype": "float16"}
TELECHAT52B = {"architectures": ["TeleChatForCausalLM"], "model_type": "telechat", "vocab_size": 512, "n_embd": 64,
               "n_layer": 2, "n_head": 4, "n_inner": 160, "n_positions": 64, "layer_norm_epsilon": 1e-5,
               "use_RMSNorm": True, "activation_function": "silu", "add_bias_linear": False,
               "relative_encoding": "rotary", "rotary_theta": 10000, "rotary_use_xpos": False, "use_mup": True,
               "input_mult": 1.0, "output_mult": 1.0, "mup_scale_factor": 32.0, "mup_base_width": 256,
               "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": True, "reorder_and_upcast_attn": True,
               "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3,
               "unk_token_id": 0, "torch_dtype": "bfloat16"}
# GPT-2's persistent causal-mask buffer (1, 1, n_positions, n_positions), big enough to be recorded as a rule
TELECHAT52B_MASK = {**TELECHAT52B, "torch_dtype": "float32", "n_positions": 128}
_LLAMA = {"hidden_act": "silu", "rms_norm_eps": 1e-5, "initializer_range": 0.02, "use_cache": True,
          "tie_word_embeddings": False, "pretraining_tp": 1, "rope_scaling": None, "torch_dtype": "float32"}
TELEFLM = {**_LLAMA, "architectures": ["TeleFLMForCausalLM"], "model_type": "TeleFLM",
           "auto_map": {"AutoConfig": "configuration_teleflm.TeleFLMConfig"}, "vocab_size": 512, "hidden_size": 64,
           "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
           "max_position_embeddings": 64, "rope_theta": 10000.0, "attention_bias": False, "use_mup": True,
           "input_mult": 1.0, "output_mult": 0.5, "mup_scale_factor": 16.0, "bos_token_id": 1,
           "eos_token_id": 2, "torch_dtype": "bfloat16"}
# Aquila2: the 2023 release (model_type aquila, vocab 100008, theta default) and the 2024 re-upload (llama,
# vocab 143973, theta 1e6); real vocabularies and ids with a hidden size of 8 keep the files small.
AQUILA2_2023 = {**_LLAMA, "architectures": ["AquilaForCausalLM"], "model_type": "aquila", "vocab_size": 100008,
                "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                "num_key_value_heads": 1, "max_position_embeddings": 4096, "bos_token_id": 100006,
                "eos_token_id": 100007, "pad_token_id": 0, "transformers_version": "4.31.0"}
AQUILA2_2024 = {**_LLAMA, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 143973,
                "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                "num_key_value_heads": 2, "max_position_embeddings": 8192, "rope_theta": 1000000.0,
                "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False, "bos_token_id": 143717,
                "eos_token_id": 143718, "transformers_version": "4.39.3"}
LLAMA2_GQA = {**_LLAMA, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512,
              "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 64, "bos_token_id": 1, "eos_token_id": 2,
              "torch_dtype": "float16"}
FIREFLY = {**LLAMA2_GQA, "vocab_size": 55296, "hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 2,
           "num_key_value_heads": 2, "pad_token_id": 0}


# ---- HF state dicts in each family's own layout (names from the spec, not from our tables) ---------------

def _rng_tensor(rng, shape, dtype):
    return torch.from_numpy(rng.normal(0.0, 0.5, shape).astype(np.float32)).to(getattr(torch, dtype))


def telechat1_state(cfg, rng, dtype, prefix="transformer.", lm_head=True):
    h, f, v, n = cfg["hidden_size"], cfg["ffn_hidden_size"], cfg["vocab_size"], cfg["n_layer"]
    t = lambda *s: _rng_tensor(rng, s, dtype)    # noqa: E731
    state = {prefix + "word_embeddings.weight": t(v, h), prefix + "ln_f.weight": t(h)}
    for i in range(n):
        p = f"{prefix}h.{i}."
        state.update({p + "input_layernorm.weight": t(h), p + "self_attention.query.weight": t(h, h),
                      p + "self_attention.key_value.weight": t(2 * h, h), p + "self_attention.dense.weight": t(h, h),
                      p + "self_attention.dense.bias": t(h), p + "post_attention_layernorm.weight": t(h),
                      p + "mlp.gate_proj.weight": t(f, h), p + "mlp.up_proj.weight": t(f, h),
                      p + "mlp.down_proj.weight": t(h, f), p + "mlp.down_proj.bias": t(h)})
    if lm_head:
        state["lm_head.weight"] = t(v, h)
    return state


def conv1d_state(cfg, rng, dtype, masked_bias=True, causal_bias=False):
    """TeleChat-52B: Conv1D weights [in, out]; c_attn [h, 3h] = q|k|v; c_fc [h, 2f] = gate|up."""
    h, f, v, n = cfg["n_embd"], cfg["n_inner"], cfg["vocab_size"], cfg["n_layer"]
    t = lambda *s: _rng_tensor(rng, s, dtype)    # noqa: E731
    state = {"transformer.wte.weight": t(v, h), "transformer.ln_f.weight": t(h), "lm_head.weight": t(v, h)}
    for i in range(n):
        p = f"transformer.h.{i}."
        state.update({p + "ln_1.weight": t(h), p + "attn.c_attn.weight": t(h, 3 * h), p + "attn.c_proj.weight": t(h, h),
                      p + "ln_2.weight": t(h), p + "mlp.c_fc.weight": t(h, 2 * f), p + "mlp.c_proj.weight": t(f, h)})
        if masked_bias:
            state[p + "attn.masked_bias"] = torch.tensor(-1e4).to(getattr(torch, dtype))
        if causal_bias:
            n_pos = cfg["n_positions"]
            state[p + "attn.bias"] = torch.tril(torch.ones(n_pos, n_pos, dtype=torch.bool)).view(1, 1, n_pos, n_pos)
    return state


def llama_state(cfg, rng, dtype, inv_freq=False):
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    t = lambda *s: _rng_tensor(rng, s, dtype)    # noqa: E731
    state = {"model.embed_tokens.weight": t(v, h), "model.norm.weight": t(h), "lm_head.weight": t(v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        state.update({p + "input_layernorm.weight": t(h), p + "self_attn.q_proj.weight": t(h, h),
                      p + "self_attn.k_proj.weight": t(kv, h), p + "self_attn.v_proj.weight": t(kv, h),
                      p + "self_attn.o_proj.weight": t(h, h), p + "post_attention_layernorm.weight": t(h),
                      p + "mlp.gate_proj.weight": t(f, h), p + "mlp.up_proj.weight": t(f, h),
                      p + "mlp.down_proj.weight": t(h, f)})
        if inv_freq:       # persistent buffer of transformers < 4.31
            state[p + "self_attn.rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, hd, 2).float() / hd)
    return state


def write_hf(directory, config_text: str, state: dict, layout: str = "single"):
    """config.json (verbatim text) + weights: one safetensors, 2 safetensors shards + index, or one .bin."""
    os.makedirs(directory)
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as fh:
        fh.write(config_text)
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as fh:
        json.dump({"tokenizer_class": "X"}, fh)
    for name, text in (("vocab.json", '{"a": 0}'), ("merges.txt", "#version: 0.2\n"), ("added_tokens.json", "{}")):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as fh:    # Aquila2's BPE files
            fh.write(text)
    if layout == "bin":
        torch.save(state, os.path.join(directory, "pytorch_model.bin"))
    elif layout == "single":
        save_file(state, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    else:
        keys = list(state)
        weight_map = {}
        for n, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:]), 1):
            name = f"model-{n:05d}-of-00002.safetensors"
            save_file({k: state[k] for k in part}, os.path.join(directory, name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, name))
        with open(os.path.join(directory, "model.safetensors.index.json"), "w", encoding="utf-8") as fh:
            json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, fh)


# ---- what our tensors must be: an independent re-layout in torch --------------------------------------

def _interleave(k, v, n_kv):
    """K, V (n_kv*hd, H) -> rows [K_0; V_0; K_1; V_1; ...]."""
    hd = k.shape[0] // n_kv
    return torch.stack([k.reshape(n_kv, hd, -1), v.reshape(n_kv, hd, -1)], dim=1).reshape(2 * n_kv * hd, -1)


def expected_ms(family: str, cfg: dict, state: dict) -> dict:
    out = {}
    if family == "telechat1":
        bare = {k.removeprefix("transformer."): t for k, t in state.items()}
        out["model.tok_embeddings.embedding_weight"] = bare["word_embeddings.weight"]
        out["model.norm_out.weight"] = bare["ln_f.weight"]
        names = {"input_layernorm.weight": "attention_norm.weight", "self_attention.query.weight": "attention.wq.weight",
                 "self_attention.key_value.weight": "attention.wk_v.weight",
                 "self_attention.dense.weight": "attention.wo.weight", "self_attention.dense.bias": "attention.wo.bias",
                 "post_attention_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight": "feed_forward.w1.weight",
                 "mlp.up_proj.weight": "feed_forward.w3.weight", "mlp.down_proj.weight": "feed_forward.w2.weight",
                 "mlp.down_proj.bias": "feed_forward.w2.bias"}
        for i in range(cfg["n_layer"]):
            out.update({f"model.layers.{i}.{ours}": bare[f"h.{i}.{theirs}"] for theirs, ours in names.items()})
    elif family == "telechat52b":
        h, f, n_head = cfg["n_embd"], cfg["n_inner"], cfg["n_head"]
        out["model.tok_embeddings.embedding_weight"] = state["transformer.wte.weight"]
        out["model.norm_out.weight"] = state["transformer.ln_f.weight"]
        for i in range(cfg["n_layer"]):
            p, m = f"transformer.h.{i}.", f"model.layers.{i}."
            c_attn, c_fc = state[p + "attn.c_attn.weight"], state[p + "mlp.c_fc.weight"]
            out.update({m + "attention_norm.weight": state[p + "ln_1.weight"],
                        m + "attention.wq.weight": c_attn[:, :h].T,
                        m + "attention.wk_v.weight": _interleave(c_attn[:, h:2 * h].T, c_attn[:, 2 * h:].T, n_head),
                        m + "attention.wo.weight": state[p + "attn.c_proj.weight"].T,
                        m + "ffn_norm.weight": state[p + "ln_2.weight"],
                        m + "feed_forward.w1.weight": c_fc[:, :f].T, m + "feed_forward.w3.weight": c_fc[:, f:].T,
                        m + "feed_forward.w2.weight": state[p + "mlp.c_proj.weight"].T})
    else:
        out["model.tok_embeddings.embedding_weight"] = state["model.embed_tokens.weight"]
        out["model.norm_out.weight"] = state["model.norm.weight"]
        for i in range(cfg["num_hidden_layers"]):
            p, m = f"model.layers.{i}.", f"model.layers.{i}."
            out.update({m + "attention_norm.weight": state[p + "input_layernorm.weight"],
                        m + "attention.wq.weight": state[p + "self_attn.q_proj.weight"],
                        m + "attention.wk_v.weight": _interleave(state[p + "self_attn.k_proj.weight"],
                                                                 state[p + "self_attn.v_proj.weight"],
                                                                 cfg["num_key_value_heads"]),
                        m + "attention.wo.weight": state[p + "self_attn.o_proj.weight"],
                        m + "ffn_norm.weight": state[p + "post_attention_layernorm.weight"],
                        m + "feed_forward.w1.weight": state[p + "mlp.gate_proj.weight"],
                        m + "feed_forward.w3.weight": state[p + "mlp.up_proj.weight"],
                        m + "feed_forward.w2.weight": state[p + "mlp.down_proj.weight"]})
    if "lm_head.weight" in state:
        out["lm_head.weight"] = state["lm_head.weight"]
    return out


def ms_dir_tensors(directory) -> dict:
    return load_safetensors_dir(str(directory))[0]


def assert_tensors_equal(got: dict, want: dict):
    assert set(got) == set(want), (sorted(set(got) ^ set(want)))
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype and got[key].shape == tensor.shape, key
        assert torch.equal(got[key], tensor.contiguous()), key


def read_meta(directory) -> dict:
    with open(os.path.join(directory, "convert_meta.json"), encoding="utf-8") as fh:
        return json.load(fh)


def _text(cfg: dict) -> str:
    return json.dumps(cfg, indent=2) + "\n"


# (case, family, config text, state builder, layout)
CASES = {
    "telechat1_12b": ("telechat1", _text({**TELECHAT1, "tie_word_embeddings": False}),
                      lambda rng: telechat1_state(TELECHAT1, rng, "float16"), "bin"),
    "telechat1_7b_tied_unprefixed": ("telechat1", _text(TELECHAT1),
                                     lambda rng: telechat1_state(TELECHAT1, rng, "float16", prefix="", lm_head=False),
                                     "sharded"),
    "telechat52b_conv1d": ("telechat52b", _text(TELECHAT52B),
                           lambda rng: conv1d_state(TELECHAT52B, rng, "bfloat16"), "sharded"),
    "telechat52b_causal_mask": ("telechat52b", _text(TELECHAT52B_MASK),
                                lambda rng: conv1d_state(TELECHAT52B_MASK, rng, "float32", causal_bias=True), "single"),
    "teleflm": ("teleflm", _text(TELEFLM), lambda rng: llama_state(TELEFLM, rng, "bfloat16"), "single"),
    "aquila2_2023_gqa": ("aquila2", _text(AQUILA2_2023), lambda rng: llama_state(AQUILA2_2023, rng, "float32"),
                         "single"),
    "aquila2_2024": ("aquila2", _text(AQUILA2_2024), lambda rng: llama_state(AQUILA2_2024, rng, "float32"), "bin"),
    # AquilaChat2-34B-16K's config.json carries rope_scaling twice (linear x4, then null: the last one wins)
    "aquila2_16k_duplicate_key": ("aquila2", _text({**LLAMA2_GQA, "architectures": ["AquilaForCausalLM"],
                                                    "model_type": "aquila",
                                                    "rope_scaling": {"type": "linear", "factor": 4.0}})[:-3]
                                  + ',\n  "rope_scaling": null\n}\n',
                                  lambda rng: llama_state(LLAMA2_GQA, rng, "float32"), "single"),
    "llama2_gqa_inv_freq": ("llama2", _text(LLAMA2_GQA), lambda rng: llama_state(LLAMA2_GQA, rng, "float16",
                                                                                 inv_freq=True), "sharded"),
    "firefly": ("firefly", _text(FIREFLY), lambda rng: llama_state(FIREFLY, rng, "float32"), "single"),
}


@pytest.fixture(scope="module", name="converted")
def _converted(tmp_path_factory):
    """Every case written, converted to ours and back once (the tests below inspect the results)."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for n, (case, (family, text, build, layout)) in enumerate(CASES.items()):
        state = build(np.random.default_rng(n))
        src, mid, back = root / case / "hf", root / case / "ms", root / case / "back"
        write_hf(src, text, state, layout)
        convert_hf_to_ms(str(src), str(mid), max_shard_size="200KB")
        report = convert_ms_to_hf(str(mid), str(back), max_shard_size="200KB")
        out[case] = dict(family=family, cfg=json.loads(text), state=state, src=src, mid=mid, back=back,
                         report=report)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_is_bit_exact_in_the_family_layout(converted, case):
    c = converted[case]
    assert_tensors_equal(load_safetensors_dir(str(c["back"]))[0], c["state"])
    assert (c["back"] / "config.json").read_bytes() == (c["src"] / "config.json").read_bytes()
    assert (c["mid"] / "hf_config.json").read_bytes() == (c["src"] / "config.json").read_bytes()
    for name in ("tokenizer_config.json", "vocab.json", "merges.txt", "added_tokens.json"):
        assert (c["back"] / name).read_bytes() == (c["mid"] / name).read_bytes() == (c["src"] / name).read_bytes()
    assert any("the source's" in note for note in c["report"].notes)


@pytest.mark.parametrize("case", list(CASES))
def test_our_tensors_are_the_independent_relayout(converted, case):
    c = converted[case]
    config = TelechatConfig.from_yaml(str(c["mid"] / "model_config.yaml"))
    assert config.family == c["family"] == read_meta(c["mid"])["family"]
    assert_tensors_equal(ms_dir_tensors(c["mid"]), expected_ms(c["family"], c["cfg"], c["state"]))
    # the in-memory conversions (parity tests use them) agree with the streaming ones
    fp32 = {k: v.float().numpy() for k, v in c["state"].items()}
    ms = hf_to_ms(fp32, config)
    want = expected_ms(c["family"], c["cfg"], {k: torch.from_numpy(v) for k, v in fp32.items()})
    assert set(ms) == set(want) and all(np.array_equal(ms[k], want[k].numpy()) for k in want)
    back = ms_to_hf(ms, config)
    weights = {k: v for k, v in fp32.items() if not k.endswith(("attn.masked_bias", "attn.bias", "inv_freq"))}
    if c["family"] == "telechat1":   # ms_to_hf writes the canonical (prefixed) spelling
        weights = {k if k.startswith(("transformer.", "lm_head")) else "transformer." + k: v for k, v in weights.items()}
    assert set(back) == set(weights) and all(np.array_equal(back[k], weights[k]) for k in weights)


def test_parameter_names_and_shapes_are_the_models(converted):
    from telechat_ms import TelechatForCausalLM
    for case in ("telechat1_7b_tied_unprefixed", "telechat52b_conv1d", "aquila2_2023_gqa", "llama2_gqa_inv_freq"):
        c = converted[case]
        config = TelechatConfig.from_yaml(str(c["mid"] / "model_config.yaml"))
        params = TelechatForCausalLM(config).parameters_dict()
        ours = ms_dir_tensors(c["mid"])
        assert {k: tuple(p.shape) for k, p in params.items()} == {k: tuple(t.shape) for k, t in ours.items()}, case


def test_spellings_and_buffers_are_recorded(converted):
    meta = read_meta(converted["telechat1_7b_tied_unprefixed"]["mid"])
    assert meta["hf_spelling"]["prefix"] == ""
    assert not any(k.startswith("transformer.") or k == "lm_head.weight"
                   for k in load_safetensors_dir(str(converted["telechat1_7b_tied_unprefixed"]["back"]))[0])
    assert read_meta(converted["telechat1_12b"]["mid"])["hf_spelling"]["prefix"] == "transformer."
    buffers = read_meta(converted["telechat52b_conv1d"]["mid"])["hf_buffers"]
    assert [(b["template"], b["layers"], b["dtype"], b["shape"]) for b in buffers] == \
        [("transformer.h.{i}.attn.masked_bias", [0, 1], "bfloat16", [])]
    causal = read_meta(converted["telechat52b_causal_mask"]["mid"])["hf_buffers"]
    assert {b["template"]: b.get("fill") for b in causal}["transformer.h.{i}.attn.bias"] == "causal"
    inv = read_meta(converted["llama2_gqa_inv_freq"]["mid"])["hf_buffers"]
    assert inv[0]["template"] == "model.layers.{i}.self_attn.rotary_emb.inv_freq" and "hex" in inv[0]


def test_aquila2_configs_keep_their_own_values(converted):
    old = TelechatConfig.from_yaml(str(converted["aquila2_2023_gqa"]["mid"] / "model_config.yaml"))
    new = TelechatConfig.from_yaml(str(converted["aquila2_2024"]["mid"] / "model_config.yaml"))
    assert (old.vocab_size, old.bos_token_id, old.eos_token_id, old.rope_theta, old.num_kv_heads) == \
        (100008, 100006, 100007, 10000.0, 1)
    assert (new.vocab_size, new.bos_token_id, new.eos_token_id, new.rope_theta, new.seq_length) == \
        (143973, 143717, 143718, 1e6, 8192)
    dup = TelechatConfig.from_yaml(str(converted["aquila2_16k_duplicate_key"]["mid"] / "model_config.yaml"))
    assert dup.family == "aquila2" and dup.rope_scaling == "none"        # the last rope_scaling (null) wins
    flm = TelechatConfig.from_yaml(str(converted["teleflm"]["mid"] / "model_config.yaml"))
    assert flm.logit_multiplier == 0.5 / 16.0


def test_conv1d_cast_ckpt_and_small_chunks(converted, tmp_path):
    """fp32 Conv1D source -> bf16 (cast + transpose, tiny chunks) equals torch's cast of the re-layout; the
    .ckpt output loads in MindSpore; config.json back changes only torch_dtype."""
    import mindspore as ms
    c = converted["telechat52b_causal_mask"]
    want = {k: v.to(torch.bfloat16) for k, v in expected_ms("telechat52b", c["cfg"], c["state"]).items()}
    convert_hf_to_ms(str(c["src"]), str(tmp_path / "bf16"), dtype="bfloat16", chunk_bytes=700)
    assert_tensors_equal(ms_dir_tensors(tmp_path / "bf16"), want)
    convert_ms_to_hf(str(tmp_path / "bf16"), str(tmp_path / "back"), chunk_bytes=300)
    back = load_safetensors_dir(str(tmp_path / "back"))[0]
    # weights come back as stored (bf16); buffers as recorded from the source (ms2hf --dtype would cast them)
    assert_tensors_equal(back, {k: v.to(torch.bfloat16) if k.endswith(".weight") else v
                                for k, v in c["state"].items()})
    with open(tmp_path / "back/config.json", encoding="utf-8") as fh:
        assert json.load(fh) == {**c["cfg"], "torch_dtype": "bfloat16"}
    convert_hf_to_ms(str(c["src"]), str(tmp_path / "ckpt"), fmt="ckpt", chunk_bytes=500)
    params = ms.load_checkpoint(str(tmp_path / "ckpt/model.ckpt"))
    assert set(params) == set(want)
    for key, tensor in expected_ms("telechat52b", c["cfg"], c["state"]).items():
        np.testing.assert_array_equal(params[key].asnumpy(), tensor.numpy(), err_msg=key)


def test_changed_model_config_writes_the_family_config(converted, tmp_path):
    c = converted["llama2_gqa_inv_freq"]
    mid = tmp_path / "ms"
    convert_hf_to_ms(str(c["src"]), str(mid))
    config = TelechatConfig.from_yaml(str(mid / "model_config.yaml"))
    dataclasses.replace(config, seq_length=128).to_yaml(str(mid / "model_config.yaml"))
    report = convert_ms_to_hf(str(mid), str(tmp_path / "back"))
    assert any("written from the model config" in note for note in report.notes)
    with open(tmp_path / "back/config.json", encoding="utf-8") as fh:
        written = json.load(fh)
    assert written["max_position_embeddings"] == 128 and written["num_key_value_heads"] == 2
    assert_tensors_equal(load_safetensors_dir(str(tmp_path / "back"))[0], c["state"])   # buffers still re-created


def test_detection_and_family_override(converted, tmp_path, capsys):
    c = converted["llama2_gqa_inv_freq"]
    assert hf2ms_main(["--src", str(c["src"]), "--dst", str(tmp_path / "ff"), "--family", "firefly",
                       "--no-progress"]) == 0
    assert TelechatConfig.from_yaml(str(tmp_path / "ff/model_config.yaml")).family == "firefly"
    assert ms2hf_main(["--src", str(tmp_path / "ff"), "--dst", str(tmp_path / "ff_back"), "--no-progress"]) == 0
    assert (tmp_path / "ff_back/config.json").read_bytes() == (c["src"] / "config.json").read_bytes()
    capsys.readouterr()
    assert hf2ms_main(["--src", str(c["src"]), "--dst", str(tmp_path / "x"), "--family", "gpt9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown model family 'gpt9'" in err and "aquila2" in err
    # a TeleChat-52B checkpoint is told apart from TeleChat v1 / TeleChat2 (all three say model_type telechat)
    assert read_meta(converted["telechat52b_conv1d"]["mid"])["family"] == "telechat52b"


def _one_line_error(capsys, argv) -> str:
    capsys.readouterr()
    assert hf2ms_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_unknown_family_is_one_error_listing_the_known_ones(tmp_path, capsys):
    write_hf(tmp_path / "neox", _text({"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
                                       "hidden_size": 64}), {"gpt_neox.embed_in.weight": torch.zeros(4, 4)})
    err = _one_line_error(capsys, ["--src", str(tmp_path / "neox"), "--dst", str(tmp_path / "out")])
    assert "cannot tell the model family" in err and "'gpt_neox'" in err and "--family" in err
    for name in ("telechat2", "telechat1", "telechat52b", "teleflm", "aquila2", "firefly", "llama2"):
        assert name in err
    assert not (tmp_path / "out").exists()


def test_unsupported_config_fields_are_refused(tmp_path, capsys):
    bad = {**LLAMA2_GQA, "rope_scaling": {"type": "yarn", "factor": 4.0}, "attention_bias": True}
    write_hf(tmp_path / "bad", _text(bad), llama_state(LLAMA2_GQA, np.random.default_rng(0), "float32"))
    err = _one_line_error(capsys, ["--src", str(tmp_path / "bad"), "--dst", str(tmp_path / "out")])
    assert "'rope_scaling'" in err and "yarn" in err and "'attention_bias'" in err and "config.json" in err
    assert not (tmp_path / "out").exists()


def test_layout_errors_name_the_family_keys(tmp_path):
    state = conv1d_state(TELECHAT52B, np.random.default_rng(0), "float32")
    state["transformer.h.1.attn.c_attn.weight"] = torch.zeros(192, 64)        # stored [out, in] by mistake
    del state["transformer.h.0.mlp.c_fc.weight"]
    state["transformer.h.1.attn.masked_bias"] = torch.tensor(-1e9)           # differs from layer 0
    write_hf(tmp_path / "hf", _text(TELECHAT52B), state)
    with pytest.raises(ConvertError) as info:
        convert_hf_to_ms(str(tmp_path / "hf"), str(tmp_path / "ms"))
    msg = str(info.value)
    assert "missing tensors (1): transformer.h.0.mlp.c_fc.weight" in msg
    assert "'transformer.h.1.attn.c_attn.weight' in" in msg and "expected shape [64, 192], found [192, 64]" in msg
    state = {**conv1d_state(TELECHAT52B, np.random.default_rng(0), "float32"),
             "transformer.h.1.attn.masked_bias": torch.tensor(-1e9)}
    write_hf(tmp_path / "hf2", _text(TELECHAT52B), state)
    with pytest.raises(ConvertError, match="masked_bias' in .*: buffer differs from 'transformer.h.0"):
        convert_hf_to_ms(str(tmp_path / "hf2"), str(tmp_path / "ms"))
    assert not (tmp_path / "ms").exists()


def test_mf2ms_is_telechat2_only(converted, tmp_path):
    c = converted["teleflm"]
    with pytest.raises(ConvertError, match="official mindformers TeleChat2 port only; the config is family 'teleflm'"):
        convert_mindformers_to_ms(str(c["mid"]), str(tmp_path / "x"))


def test_ms2hf_with_an_hf_config_json_detects_the_family(converted, tmp_path):
    """A bare weights file plus the model's config.json: family from the json, which is written back as is."""
    c = converted["aquila2_2023_gqa"]
    shards = sorted(p for p in os.listdir(c["mid"]) if p.endswith(".safetensors"))
    merged = {}
    for name in shards:
        merged.update(load_file(str(c["mid"] / name)))
    save_file(merged, str(tmp_path / "train.safetensors"))
    convert_ms_to_hf(str(tmp_path / "train.safetensors"), str(tmp_path / "back"), config=str(c["src"] / "config.json"))
    assert (tmp_path / "back/config.json").read_bytes() == (c["src"] / "config.json").read_bytes()
    assert_tensors_equal(load_safetensors_dir(str(tmp_path / "back"))[0], c["state"])


def test_transposed_sources_are_read_once_per_output_tensor(converted, tmp_path, monkeypatch):
    """The per-head pieces of wk_v come from one read of c_attn's k|v columns, not one read per head."""
    from telechat_ms.io.sources import Source
    read = {}
    original = Source.read

    def counting(self, key, start, stop):
        read[key] = read.get(key, 0) + stop - start
        return original(self, key, start, stop)
    monkeypatch.setattr(Source, "read", counting)
    c = converted["telechat52b_causal_mask"]
    # the NaN/Inf check is one more read of every weight by design (test_non_finite_...): measure the writer alone
    convert_hf_to_ms(str(c["src"]), str(tmp_path / "ms"), dtype="bfloat16", chunk_bytes=4096, check_finite=False)
    numel = {k: v.numel() for k, v in c["state"].items()}
    for key, count in read.items():
        # c_attn -> wq, wk_v and c_fc -> w1, w3: two whole reads; every other tensor (and buffer, to record it) one
        times = 2 if key.endswith(("c_attn.weight", "c_fc.weight")) else 1
        assert count == times * numel[key], (key, count, numel[key])
    assert len(read) == len(numel)


def test_ms2hf_family_must_match_the_model_config(converted, tmp_path):
    with pytest.raises(ConvertError, match="--family 'llama2' contradicts the config, which is family 'teleflm'"):
        convert_ms_to_hf(str(converted["teleflm"]["mid"]), str(tmp_path / "x"), family="llama2")


def _copy_ms(c, tmp_path):
    import shutil
    mid = tmp_path / "ms"
    shutil.copytree(c["mid"], mid)
    return mid, read_meta(mid)


def _write_meta(mid, meta):
    with open(mid / "convert_meta.json", "w", encoding="utf-8") as fh:
        json.dump(meta, fh)


def test_meta_from_an_older_version_and_a_corrupt_buffer_record(converted, tmp_path):
    c = converted["llama2_gqa_inv_freq"]
    mid, meta = _copy_ms(c, tmp_path)
    del meta["hf_config_describes"]["embedding_multiplier"]     # a field this meta's writer did not know yet
    _write_meta(mid, meta)
    report = convert_ms_to_hf(str(mid), str(tmp_path / "back"))
    assert any("the source's" in note for note in report.notes)
    assert (tmp_path / "back/config.json").read_bytes() == (c["src"] / "config.json").read_bytes()
    meta["hf_buffers"][0]["hex"] = "zz"
    _write_meta(mid, meta)
    with pytest.raises(ConvertError, match=r"convert_meta.json: invalid hf_buffers record .*ValueError"):
        convert_ms_to_hf(str(mid), str(tmp_path / "back2"))
    assert not (tmp_path / "back2").exists()


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, capsys):
    """hf2ms reads every weight before writing (on by default): a NaN is one error, no output directory."""
    import subprocess
    import sys
    from safetensors.numpy import load_file as load_np, save_file as save_np
    from telechat_ms.convert.cli import hf2ms_main
    src, dst = tmp_path / "hf", tmp_path / "ms"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, f"{repo}/scripts/make_tiny_hf_checkpoint.py", str(src), "--preset",
                    "tiny_llama2_gqa"], check=True, capture_output=True)
    weights = load_np(str(src / "model.safetensors"))
    key = "model.layers.1.mlp.down_proj.weight"
    weights[key][3, 5] = np.nan
    save_np(weights, str(src / "model.safetensors"), metadata={"format": "pt"})
    assert hf2ms_main(["--src", str(src), "--dst", str(dst), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"tensor '{key}' holds 1 non-finite values" in err and err.count("error:") == 1
    assert not dst.exists()
    assert hf2ms_main(["--src", str(src), "--dst", str(dst), "--no-progress", "--no-check-finite"]) == 0
