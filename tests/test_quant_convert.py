"""GPTQ / AWQ import and export: tiny quantized checkpoints from the independent packer (tests/quant_packer.py,
spec formulas) in every format -- 4 / 8 bit (2 bit dequantize-only), group 32 and -1, desc_act on and off,
AutoGPTQ v1 (zero-1) and gptq_v2 zeros, sym and asym, AWQ GEMM order -- converted with hf2ms (kept quantized
and --dequantize) and back with ms2hf. Dequantized weights equal the reference bit for bit; round trips are
byte-identical; every bad input is one clear error naming the tensor and field, with nothing written."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from telechat_ms import TelechatConfig
from telechat_ms.convert import convert_hf_to_ms, convert_ms_to_hf
from telechat_ms.io.errors import ConvertError

from . import quant_packer as qp
from .hf_checkpoint import random_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAMA = TelechatConfig.preset("tiny_llama2_gqa")          # 4 heads, 2 kv heads of 16, ffn 160
# (format, bits, group_size, desc_act, sym, where the quantization config lives)
CASES = {
    "gptq4_g32_act_asym": ("gptq", 4, 32, True, False, "file"),
    "gptq4_perchannel_sym": ("gptq", 4, -1, False, True, "inline"),
    "gptq8_g32_act_sym": ("gptq", 8, 32, True, True, "file"),
    "v2_4_g32_act_asym": ("gptq_v2", 4, 32, True, False, "inline"),
    "v2_8_perchannel_asym": ("gptq_v2", 8, -1, False, False, "file"),
    "awq4_g32": ("awq", 4, 32, False, False, "file"),
    "awq4_perchannel": ("awq", 4, -1, False, False, "inline"),
}


def weights(directory: str) -> dict:
    out = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".safetensors"):
            out.update(load_file(os.path.join(directory, name)))
    return out


def make_llama(directory: str, fmt, bits, group, desc_act, sym, where="file", seed=0, config=LLAMA):
    return qp.make_llama(directory, config, fmt, bits, group, desc_act, sym, where, seed)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Every case: HF source, kept-quantized ms, dequantized ms (fp32), and both ways back to HF."""
    root, out = tmp_path_factory.mktemp("quant"), {}
    for name, (fmt, bits, group, desc_act, sym, where) in CASES.items():
        d = {k: str(root / name / k) for k in ("hf", "ms", "deq", "back", "deq_hf")}
        ref = make_llama(d["hf"], fmt, bits, group, desc_act, sym, where)
        convert_hf_to_ms(d["hf"], d["ms"])
        convert_hf_to_ms(d["hf"], d["deq"], dequantize=True, dtype="float32")
        convert_ms_to_hf(d["ms"], d["back"])
        convert_ms_to_hf(d["ms"], d["deq_hf"], dequantize=True, dtype="float32")
        out[name] = (d, ref)
    return out


def test_packer_matches_spec_example():
    """families.md §5: sym 4-bit v1 qzeros words are 0x77777777, 8-bit 0x7F7F7F7F; q_proj-like shapes."""
    rng = np.random.default_rng(0)
    for bits, word in ((4, 0x77777777), (8, 0x7F7F7F7F)):
        packed = qp.pack(qp.quantize_linear(rng.normal(size=(64, 128)), bits, 32, True, True, rng), "gptq")
        assert packed["qweight"].shape == (128 * bits // 32, 64) and packed["qzeros"].shape == (4, 64 * bits // 32)
        assert (packed["qzeros"].view(np.uint32) == word).all()


@pytest.mark.parametrize("name", sorted(CASES))
def test_dequantize_equals_reference_bit_for_bit(name, converted):
    from telechat_ms.convert.names import merge_key_value   # pylint: disable=import-outside-toplevel
    d, ref = converted[name]
    ours = weights(d["deq"])
    for i in range(LLAMA.num_layers):
        hf, ms = f"model.layers.{i}.", f"model.layers.{i}."
        pairs = {"attention.wq": "self_attn.q_proj", "attention.wo": "self_attn.o_proj", "feed_forward.w1":
                 "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj", "feed_forward.w2": "mlp.down_proj"}
        for ours_name, hf_name in pairs.items():
            got, want = ours[ms + ours_name + ".weight"], ref[hf + hf_name + ".weight"]
            assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32)), ours_name
        kv = merge_key_value(ref[hf + "self_attn.k_proj.weight"], ref[hf + "self_attn.v_proj.weight"],
                             LLAMA.num_kv_heads, LLAMA.head_dim)
        assert np.array_equal(ours[ms + "attention.wk_v.weight"], kv)
    back = weights(d["deq_hf"])
    for key, value in ref.items():
        assert np.array_equal(back[key].view(np.uint32), value.view(np.uint32)), key
    assert "quantization_config" not in json.load(open(os.path.join(d["deq_hf"], "config.json"), encoding="utf-8"))
    assert not os.path.exists(os.path.join(d["deq_hf"], "quantize_config.json"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_is_byte_identical(name, converted):
    d, _ = converted[name]
    source, back = weights(d["hf"]), weights(d["back"])
    assert sorted(source) == sorted(back)
    for key, value in source.items():
        assert back[key].dtype == value.dtype and back[key].tobytes() == value.tobytes(), key
    for side in ("config.json", "quantize_config.json", "quant_config.json"):
        if os.path.exists(os.path.join(d["hf"], side)):
            with open(os.path.join(d["hf"], side), "rb") as a, open(os.path.join(d["back"], side), "rb") as b:
                assert a.read() == b.read(), side


def test_kept_layout_and_config(converted):
    d, _ = converted["gptq4_g32_act_asym"]
    config = TelechatConfig.from_yaml(os.path.join(d["ms"], "model_config.yaml"))
    q = config.quantization
    assert (q.method, q.bits, q.group_size, q.act_order, q.split_kv, q.scale_dtype) == \
        ("gptq", 4, 32, True, True, "float16")
    assert config.param_dtype == "float16"
    ours = weights(d["ms"])
    prefix = "model.layers.0.feed_forward.w2."
    assert ours[prefix + "qweight"].dtype == np.int8 and ours[prefix + "qweight"].shape == (160, 32)
    assert ours[prefix + "scale"].shape == ours[prefix + "offset"].shape == (5, 64)
    assert sorted(ours[prefix + "perm"]) == list(range(160))
    assert "model.layers.0.attention.wk_v.k.qweight" in ours and "model.layers.0.attention.wk_v.weight" not in ours
    d8, _ = converted["v2_8_perchannel_asym"]
    ours8 = weights(d8["ms"])
    assert ours8[prefix + "qweight"].shape == (160, 64) and ours8[prefix + "scale"].shape == (1, 64)
    assert prefix + "perm" not in ours8                          # no act order: rows in input order


def test_dtype_casts_floats_but_keeps_scales(tmp_path, converted):
    d, _ = converted["awq4_g32"]
    convert_hf_to_ms(d["hf"], str(tmp_path / "ms32"), dtype="float32")
    ours = weights(str(tmp_path / "ms32"))
    assert ours["model.norm_out.weight"].dtype == np.float32
    assert ours["model.layers.1.attention.wq.scale"].dtype == ours["model.layers.1.attention.wq.offset"].dtype \
        == np.float16
    convert_ms_to_hf(str(tmp_path / "ms32"), str(tmp_path / "back16"), dtype="float16")
    source, back = weights(d["hf"]), weights(str(tmp_path / "back16"))      # fp16 -> fp32 -> fp16 is exact
    assert sorted(source) == sorted(back) and all(source[k].tobytes() == back[k].tobytes() for k in source)


def test_telechat_fused_key_value_with_biases(tmp_path):
    """TeleChat layout (fused key_value, dense / down_proj biases, no transformer. spelling change): the
    quantized key_value stays one tensor; round trip and dequantization exact."""
    config = TelechatConfig.preset("tiny_gqa")
    state = {k: v.astype(np.float16) for k, v in random_state(config, seed=3).items()}
    linears = [k for k in state if k.endswith(("query.weight", "key_value.weight", "dense.weight", "proj.weight"))]
    quantized, ref = qp.quantize_state(state, linears, 4, 32, True, False, "gptq")
    hf = str(tmp_path / "hf")
    qp.write_checkpoint(hf, config.to_hf_config(), quantized, qp.quant_config("gptq", 4, 32, True, False))
    convert_hf_to_ms(hf, str(tmp_path / "ms"))
    ours = weights(str(tmp_path / "ms"))
    assert ours["model.layers.0.attention.wk_v.qweight"].shape == (64, 32)      # (H, 2 kv / 2)
    assert ours["model.layers.0.attention.wo.bias"].dtype == np.float16
    convert_ms_to_hf(str(tmp_path / "ms"), str(tmp_path / "back"))
    source, back = weights(hf), weights(str(tmp_path / "back"))
    assert sorted(source) == sorted(back) and all(source[k].tobytes() == back[k].tobytes() for k in source)
    convert_hf_to_ms(hf, str(tmp_path / "deq"), dequantize=True, dtype="float32")
    deq = weights(str(tmp_path / "deq"))
    assert np.array_equal(deq["model.layers.1.attention.wk_v.weight"],
                          ref["transformer.h.1.self_attention.key_value.weight"])


def test_two_bit_is_dequantize_only(tmp_path):
    ref = make_llama(str(tmp_path / "hf"), "gptq", 2, 32, False, False)
    with pytest.raises(ConvertError, match=r"bits 2: kept-quantized models hold int4 or int8 .* --dequantize"):
        convert_hf_to_ms(str(tmp_path / "hf"), str(tmp_path / "ms"))
    assert not os.path.exists(tmp_path / "ms")
    convert_hf_to_ms(str(tmp_path / "hf"), str(tmp_path / "deq"), dequantize=True, dtype="float32")
    assert np.array_equal(weights(str(tmp_path / "deq"))["model.layers.0.feed_forward.w2.weight"],
                          ref["model.layers.0.mlp.down_proj.weight"])


def test_dequantize_default_dtype_rounds_once_to_fp16(converted, tmp_path):
    d, ref = converted["gptq4_g32_act_asym"]
    convert_hf_to_ms(d["hf"], str(tmp_path / "deq16"), dequantize=True)
    got = weights(str(tmp_path / "deq16"))["model.layers.0.attention.wq.weight"]
    assert got.dtype == np.float16
    assert np.array_equal(got, ref["model.layers.0.self_attn.q_proj.weight"].astype(np.float16))


# ---------------------------------------------------------------- bad input: one error, nothing written


@pytest.fixture()
def source(tmp_path):
    """A fresh 4-bit act-order GPTQ checkpoint to break."""
    make_llama(str(tmp_path / "hf"), "gptq", 4, 32, True, False)
    return tmp_path / "hf"


def _edit(directory, change) -> None:
    path = os.path.join(directory, "model.safetensors")
    state = load_file(path)
    change(state)
    save_file(state, path, metadata={"format": "pt"})


def _edit_json(path, change) -> None:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    change(data)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh)


def _refused(src, dst, pattern, **kw):
    with pytest.raises(ConvertError, match=pattern):
        convert_hf_to_ms(str(src), str(dst), **kw)
    assert not os.path.exists(dst) and not [n for n in os.listdir(os.path.dirname(dst)) if ".partial-" in n]


Q = "model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize("leaf, shape, field", [
    ("qweight", (16, 64), r"bits 4"), ("qzeros", (3, 8), r"group_size 32"), ("scales", (2, 32), r"out_features 64"),
    ("g_idx", (60,), r"in_features 64")])
def test_shapes_inconsistent_with_bits_group_size_or_dims(source, tmp_path, leaf, shape, field):
    _edit(source, lambda s: s.update({f"{Q}.{leaf}": np.zeros(shape, s[f"{Q}.{leaf}"].dtype)}))
    _refused(source, tmp_path / "ms", rf"'{Q}\.{leaf}' in .*model\.safetensors: expected .*{field}.*found")


def test_wrong_dtype_is_named(source, tmp_path):
    _edit(source, lambda s: s.update({f"{Q}.qweight": s[f"{Q}.qweight"].astype(np.float32)}))
    _refused(source, tmp_path / "ms", rf"'{Q}\.qweight' .*expected int32 \[8, 64\].*found float32")


def test_missing_quantized_tensor(source, tmp_path):
    _edit(source, lambda s: s.pop(f"{Q}.qzeros"))
    _refused(source, tmp_path / "ms", rf"'{Q}\.qzeros': missing")


def test_g_idx_out_of_range(source, tmp_path):
    def change(state):
        state[f"{Q}.g_idx"][5] = 2                               # K 64 / group 32 = groups 0..1
    _edit(source, change)
    _refused(source, tmp_path / "ms", rf"'{Q}\.g_idx' .*g_idx values must lie in \[0, 2\).*found \[0, 2\]")


def test_g_idx_groups_of_wrong_size(source, tmp_path):
    def change(state):
        g = state[f"{Q}.g_idx"]
        g[np.flatnonzero(g == 1)[0]] = 0                         # group 0 gets 33 rows, group 1 31
    _edit(source, change)
    _refused(source, tmp_path / "ms", rf"'{Q}\.g_idx' .*g_idx: group 0 has 33 input rows, expected 32")


def test_non_monotone_g_idx_without_desc_act(source, tmp_path):
    _edit_json(str(source / "quantize_config.json"), lambda d: d.update(desc_act=False))
    _refused(source, tmp_path / "ms", r"g_idx is not k // group_size but desc_act is false")


def test_sym_zero_points_of_the_other_format(tmp_path):
    make_llama(str(tmp_path / "hf"), "gptq_v2", 4, 32, False, True, where="file")
    _edit_json(str(tmp_path / "hf" / "quantize_config.json"), lambda d: d.update(checkpoint_format="gptq"))
    _refused(tmp_path / "hf", tmp_path / "ms", r"qzeros' .*sym is true but the zero points are not 8 for "
                                               r"checkpoint_format gptq \(they match checkpoint_format gptq_v2\)")


def test_in_features_not_a_multiple_of_the_pack(source, tmp_path):
    _edit_json(str(source / "config.json"), lambda d: d.update(intermediate_size=164))
    _refused(source, tmp_path / "ms", r"mlp\.gate_proj\.qzeros': out_features 164 is not a multiple of 8 ")
    _refused(source, tmp_path / "ms", r"mlp\.down_proj\.qweight': in_features 164 is not a multiple of 8 "
                                               r"\(32 / bits 4")


@pytest.mark.parametrize("change, pattern", [
    ({"bits": 3}, r"quantize_config.json: bits 3 is not supported"),
    ({"quant_method": "bitsandbytes"}, r"quant_method 'bitsandbytes' is not supported"),
    ({"checkpoint_format": "marlin"}, r"checkpoint_format 'marlin' is not supported"),
    ({"is_marlin_format": True}, r"not supported: is_marlin_format true"),
    ({"frobnicate": 1}, r"not supported: unknown keys frobnicate"),
    ({"group_size": 0}, r"group_size must be -1 or a positive integer, got 0"),
])
def test_unsupported_quantization_configs(source, tmp_path, change, pattern):
    _edit_json(str(source / "quantize_config.json"), lambda d: d.update(change))
    _refused(source, tmp_path / "ms", "config: .*" + pattern)


def test_awq_other_packings_are_refused(tmp_path):
    make_llama(str(tmp_path / "hf"), "awq", 4, 32, False, False, where="file")
    _edit_json(str(tmp_path / "hf" / "quant_config.json"), lambda d: d.update(version="gemv"))
    _refused(tmp_path / "hf", tmp_path / "ms", r"version 'gemv' is not supported \(AWQ GEMM packing only\)")


def test_disagreeing_descriptions(source, tmp_path):
    _edit_json(str(source / "config.json"), lambda d: d.update(quantization_config=qp.quant_config(
        "gptq", 4, 64, True, False)))
    _refused(source, tmp_path / "ms", r"quantize_config.json and .*config.json: quantization_config disagree on "
                                      r"group_size \(group_size: 32 vs 64\)")


def test_dequantize_needs_a_quantized_source(tmp_path):
    config = TelechatConfig.preset("tiny_llama2_gqa")
    state, _ = qp.llama_state(config)
    qp.write_checkpoint(str(tmp_path / "hf"), config.to_hf_config(), state, {}, where="none")
    _refused(tmp_path / "hf", tmp_path / "deq", r"--dequantize: .* is not a quantized checkpoint", dequantize=True)


def test_ms2hf_refuses_a_corrupt_quantized_directory(converted, tmp_path):
    d, _ = converted["gptq4_g32_act_asym"]
    broken = tmp_path / "ms"
    shutil.copytree(d["ms"], broken)
    shard = next(p for p in broken.iterdir() if p.suffix == ".safetensors")
    state = load_file(str(shard))
    state["model.layers.1.attention.wq.perm"][0] = state["model.layers.1.attention.wq.perm"][1]
    state["model.layers.0.feed_forward.w1.offset"][0, 0] = 0.5
    save_file(state, str(shard), metadata={"format": "ms"})
    with pytest.raises(ConvertError, match=r"w1\.offset' .*offset: offsets must be whole numbers(.|\n)*"
                                           r"wq\.perm' .*perm must be a permutation of 0\.\.63"):
        convert_ms_to_hf(str(broken), str(tmp_path / "back"))
    assert not os.path.exists(tmp_path / "back")
    with pytest.raises(ConvertError, match=r"--dequantize: the model config of .* has no quantization"):
        convert_ms_to_hf(converted["gptq4_g32_act_asym"][0]["deq"], str(tmp_path / "x"), dequantize=True)


def test_cli_error_is_one_line_exit_2(source, tmp_path):
    _edit_json(str(source / "quantize_config.json"), lambda d: d.update(bits=3))
    proc = subprocess.run([sys.executable, f"{REPO}/convert/hf2ms.py", "--src", str(source), "--dst",
                           str(tmp_path / "ms")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: config: ") and proc.stderr.count("\n") == 1
    assert not os.path.exists(tmp_path / "ms")


def test_cli_dequantize_flags(converted, tmp_path):
    from telechat_ms.convert.cli import hf2ms_main, ms2hf_main   # pylint: disable=import-outside-toplevel
    d, _ = converted["awq4_g32"]
    assert hf2ms_main(["--src", d["hf"], "--dst", str(tmp_path / "a"), "--dequantize", "--no-progress"]) == 0
    assert ms2hf_main(["--src", d["ms"], "--dst", str(tmp_path / "b"), "--dequantize", "--dtype", "float32",
                       "--no-progress"]) == 0
    assert weights(str(tmp_path / "a"))["model.layers.0.attention.wq.weight"].dtype == np.float16
    assert weights(str(tmp_path / "b"))["model.layers.0.self_attn.q_proj.weight"].dtype == np.float32


def test_conversion_memory_is_bounded_by_one_layer(tmp_path):
    """Peak traced memory ~ a few times the largest projection held as fp32 (K x N x 4 bytes), far below the
    checkpoint: tensors are unpacked / dequantized one at a time, floats stream in chunks."""
    import tracemalloc   # pylint: disable=import-outside-toplevel
    config = TelechatConfig.preset("tiny_llama2", hidden_size=256, ffn_hidden_size=512, num_layers=8,
                                   vocab_size=8192)
    qp.make_llama(str(tmp_path / "hf"), config, "gptq", 4, 64, True, False)
    largest = 256 * 512 * 4
    peaks = []
    for run in (lambda: convert_hf_to_ms(str(tmp_path / "hf"), str(tmp_path / "ms"), chunk_bytes=2**18),
                lambda: convert_hf_to_ms(str(tmp_path / "hf"), str(tmp_path / "deq"), dequantize=True,
                                         dtype="float32", chunk_bytes=2**18),
                lambda: convert_ms_to_hf(str(tmp_path / "ms"), str(tmp_path / "back"), chunk_bytes=2**18)):
        tracemalloc.start()
        try:
            run()
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    written = sum(os.path.getsize(tmp_path / "deq" / name) for name in os.listdir(tmp_path / "deq"))
    assert written > 30 * 2**20 and max(peaks) < 5 * largest, (peaks, largest)


def test_ckpt_output_round_trips(converted, tmp_path):
    d, _ = converted["gptq8_g32_act_sym"]
    convert_hf_to_ms(d["hf"], str(tmp_path / "ms"), fmt="ckpt")
    convert_ms_to_hf(str(tmp_path / "ms"), str(tmp_path / "back"))
    source, back = weights(d["hf"]), weights(str(tmp_path / "back"))
    assert sorted(source) == sorted(back) and all(source[k].tobytes() == back[k].tobytes() for k in source)


def test_weights_file_named_by_model_file_base_name(tmp_path, converted):
    """Older AutoGPTQ / TheBloke repos: gptq_model-4bit-32g.safetensors named by quantize_config.json."""
    d, _ = converted["gptq4_g32_act_asym"]
    src = tmp_path / "thebloke"
    shutil.copytree(d["hf"], src)
    os.rename(src / "model.safetensors", src / "gptq_model-4bit-32g.safetensors")
    _edit_json(str(src / "quantize_config.json"), lambda c: c.update(model_file_base_name="gptq_model-4bit-32g"))
    convert_hf_to_ms(str(src), str(tmp_path / "ms"))
    ours, want = weights(str(tmp_path / "ms")), weights(d["ms"])
    assert sorted(ours) == sorted(want) and all(ours[k].tobytes() == want[k].tobytes() for k in want)
