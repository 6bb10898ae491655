"""Streaming (bounded memory), exact dtype casts, and the .ckpt / safetensors writers against MindSpore's."""
from __future__ import annotations

import ast
import glob
import os
import tracemalloc

import numpy as np
import pytest
import torch

import mindspore as ms

from telechat_ms.config import TelechatConfig
from telechat_ms.convert import ConvertError, convert_hf_to_ms, convert_ms_to_hf, hf_to_ms
from telechat_ms.io import writer
from telechat_ms.io.ckpt_io import scan_ckpt
from telechat_ms.io.dtypes import cast, parse_size
from telechat_ms.io.sources import Source
from tests.hf_checkpoint import load_safetensors_dir, random_state, write_hf_checkpoint

CHUNK = 256 * 1024


@pytest.fixture(name="medium_moe", scope="module")
def _medium_moe(tmp_path_factory):
    """~45 MB fp32 MoE checkpoint in 3 shards: big enough that holding it, a shard or a stacked expert
    tensor would show, small enough for CI."""
    config = TelechatConfig.preset("tiny_moe", vocab_size=16384, hidden_size=256, ffn_hidden_size=512,
                                   num_experts=8)
    path = tmp_path_factory.mktemp("stream") / "hf"
    source = write_hf_checkpoint(str(path), config, "sharded")
    return path, sum(t.numel() * 4 for t in source.values()), source


def test_conversion_holds_one_chunk_at_a_time(medium_moe, tmp_path, monkeypatch):
    path, total, source = medium_moe
    reads = []
    original = Source.read
    monkeypatch.setattr(Source, "read", lambda self, key, a, b: reads.append(b - a) or original(self, key, a, b))
    tracemalloc.start()
    try:
        convert_hf_to_ms(str(path), str(tmp_path / "ms"), dtype="bfloat16", chunk_bytes=CHUNK)
        _, peak_to_ms = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        convert_ms_to_hf(str(tmp_path / "ms"), str(tmp_path / "back"), dtype="float32", chunk_bytes=CHUNK)
        _, peak_to_hf = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    largest_tensor = max(t.numel() * 4 for t in source.values())
    assert total > 40 * 2**20 and largest_tensor >= 16 * 2**20
    assert max(reads) * 4 <= CHUNK                      # never more than a chunk requested from the files
    assert CHUNK < max(peak_to_ms, peak_to_hf) < 8 * CHUNK, (peak_to_ms, peak_to_hf)   # << largest tensor, << shard
    out, _ = load_safetensors_dir(str(tmp_path / "back"))
    assert all(torch.equal(out[k], v.to(torch.bfloat16).float()) for k, v in source.items())


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_cast_matches_torch_bit_for_bit():
    rng = np.random.default_rng(0)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-40, 3.4028235e38, 65504.0,
                         65520.0, 1e-8, 5.96e-8, 1.0 + 2**-8, 1.0 + 3 * 2**-8], np.float32)
    ties = (rng.integers(0, 2**16, 2000, dtype=np.uint32) << 16 | 0x8000).view(np.float32)   # exact halfway
    scaled = rng.normal(0, 1, 5000) * 10.0 ** rng.integers(-30, 30, 5000)      # |x| < 3e38: finite in fp32
    values = np.concatenate([specials, ties, scaled.astype(np.float32)])
    want_bf16 = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    got_bf16 = cast(values, "float32", "bfloat16")
    nan = np.isnan(values)
    np.testing.assert_array_equal(got_bf16[~nan], want_bf16[~nan])
    assert np.isnan(cast(got_bf16, "bfloat16", "float32")[nan]).all()
    np.testing.assert_array_equal(cast(got_bf16[~nan], "bfloat16", "float32"),
                                  torch.from_numpy(values[~nan]).to(torch.bfloat16).float().numpy())
    half = values[~nan]
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(cast(half, "float32", "float16"),
                                      torch.from_numpy(half).half().numpy())
    from_half = cast(cast(half, "float32", "float16"), "float16", "bfloat16")
    np.testing.assert_array_equal(from_half, torch.from_numpy(half).half().to(torch.bfloat16).view(
        torch.int16).numpy().view(np.uint16))


def test_parse_size():
    assert parse_size("4GB") == 4 * 10**9 and parse_size("500MiB") == 500 * 2**20 and parse_size(123) == 123
    with pytest.raises(ConvertError, match="invalid size"):
        parse_size("4 gigs")


def test_ckpt_writer_slices_and_scanner_read_mindspore_files(tmp_path, monkeypatch):
    config = TelechatConfig.preset("tiny_gqa")
    state = random_state(config)
    write_hf_checkpoint(str(tmp_path / "hf"), config, "single", state=state)
    # tiny slices: every big tensor is written as many consecutive Values, which MindSpore must join
    monkeypatch.setattr(writer, "COPY_BYTES", 4096)
    convert_hf_to_ms(str(tmp_path / "hf"), str(tmp_path / "ms"), fmt="ckpt", chunk_bytes=4096)
    infos = scan_ckpt(str(tmp_path / "ms/model.ckpt"))
    assert len(infos["lm_head.weight"].extents) == 512 * 64 * 4 // 4096
    loaded = ms.load_checkpoint(str(tmp_path / "ms/model.ckpt"))
    expected = hf_to_ms(state, config)
    for key, value in expected.items():
        np.testing.assert_array_equal(loaded[key].asnumpy(), value)
    # a MindSpore-written .ckpt with crc trailer and non-float entries is scanned the same way
    items = [{"name": k, "data": ms.Tensor(v)} for k, v in expected.items()]
    items.append({"name": "global_step", "data": ms.Tensor(np.array([3], np.int32))})
    ms.save_checkpoint(items, str(tmp_path / "crc.ckpt"), crc_check=True)
    infos = scan_ckpt(str(tmp_path / "crc.ckpt"))
    assert infos["global_step"].dtype == "int32" and infos["global_step"].shape == (1,)
    source = Source(infos, "crc.ckpt", "ms-ckpt")
    for key, value in expected.items():
        np.testing.assert_array_equal(source.read(key, 0, value.size).reshape(value.shape), value)
    source.close()


@pytest.mark.parametrize("fmt", ["safetensors", "ckpt"])
def test_kernel_copy_and_read_write_paths_give_identical_files(tmp_path, monkeypatch, fmt):
    config = TelechatConfig.preset("tiny_moe")
    write_hf_checkpoint(str(tmp_path / "hf"), config, "sharded")
    convert_hf_to_ms(str(tmp_path / "hf"), str(tmp_path / "copy"), fmt=fmt, max_shard_size="100KB")
    monkeypatch.setitem(writer._COPY, "supported", False)       # pylint: disable=protected-access
    convert_hf_to_ms(str(tmp_path / "hf"), str(tmp_path / "read"), fmt=fmt, max_shard_size="100KB",
                     chunk_bytes=1000)
    names = sorted(n for n in os.listdir(tmp_path / "copy") if n.endswith((".safetensors", ".ckpt", ".json")))
    assert len(names) > 2 and names == sorted(n for n in os.listdir(tmp_path / "read")
                                              if n.endswith((".safetensors", ".ckpt", ".json")))
    for name in names:
        if name != "convert_meta.json":
            assert (tmp_path / "copy" / name).read_bytes() == (tmp_path / "read" / name).read_bytes(), name


def test_writer_output_is_readable_by_the_safetensors_package(tmp_path):
    from safetensors.numpy import load_file
    config = TelechatConfig.preset("tiny")
    state = random_state(config)
    write_hf_checkpoint(str(tmp_path / "hf"), config, "single", state=state)
    convert_hf_to_ms(str(tmp_path / "hf"), str(tmp_path / "ms"), dtype="float16")
    loaded = {}
    for shard in glob.glob(str(tmp_path / "ms/*.safetensors")):
        loaded.update(load_file(shard))
    for key, value in hf_to_ms(state, config).items():
        np.testing.assert_array_equal(loaded[key], value.astype(np.float16))


def test_package_never_imports_torch_or_mindspore_at_module_level():
    """torch is optional (only .bin), mindspore only for load_pretrained: both imports must be deferred."""
    package = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "telechat_ms", "convert")
    for path in glob.glob(os.path.join(package, "*.py")):
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
        for node in tree.body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("torch", "mindspore") for n in names), (path, names)
