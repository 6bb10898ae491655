"""Model behaviour that needs no reference: execution modes, padding, kernel selection, rotary tables."""
import math

import mindspore as ms
import numpy as np
import pytest
import torch

from telechat_ms import Kernels, TelechatConfig, TelechatForCausalLM
from telechat_ms.config.model import ntk_alpha, ntk_mscale
from telechat_ms.model.rotary import RopeSpec, rotary_tables

from .conftest import set_mode
from .reference.torch_telechat import TelechatRotary


def _model(preset="tiny_gqa", seed=0):
    ms.set_seed(seed)
    return TelechatForCausalLM(TelechatConfig.preset(preset))


def test_public_api_shapes_and_dtypes():
    set_mode("graph")
    model = _model()
    ids = ms.Tensor(np.arange(2 * 10, dtype=np.int32).reshape(2, 10))
    logits = model(ids)
    assert logits.shape == (2, 10, 512) and logits.dtype == ms.float32
    loss = model(ids, labels=ids)
    assert loss.shape == () and np.isfinite(loss.asnumpy())


def test_graph_and_pynative_give_same_logits():
    ids = ms.Tensor(np.random.default_rng(0).integers(0, 512, (2, 40)).astype(np.int32))
    set_mode("graph")
    model = _model()
    graph = model(ids).asnumpy()
    graph_loss = model(ids, ids).asnumpy()
    set_mode("pynative")
    try:
        assert np.abs(model(ids).asnumpy() - graph).max() <= 1e-5
        assert abs(model(ids, ids).asnumpy() - graph_loss) <= 1e-6
    finally:
        set_mode("graph")


def test_right_padding_does_not_change_real_tokens():
    set_mode("graph")
    model = _model()
    real = np.random.default_rng(1).integers(0, 512, (1, 12)).astype(np.int32)
    padded = np.concatenate([real, np.full((1, 6), 3, np.int32)], axis=1)
    mask = np.concatenate([np.ones((1, 12)), np.zeros((1, 6))], axis=1).astype(np.int32)
    alone = model(ms.Tensor(real)).asnumpy()
    with_pad = model(ms.Tensor(padded), None, ms.Tensor(mask)).asnumpy()
    assert np.abs(with_pad[:, :12] - alone).max() <= 1e-5


def test_masked_positions_content_is_ignored():
    """Left padding: whatever ids sit under attention_mask=0, the other positions' logits do not change."""
    set_mode("graph")
    model = _model()
    ids = np.random.default_rng(2).integers(0, 512, (2, 16)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[:, :5] = 0
    other = ids.copy()
    other[:, :5] = np.random.default_rng(3).integers(0, 512, (2, 5))
    a = model(ms.Tensor(ids), None, ms.Tensor(mask)).asnumpy()
    b = model(ms.Tensor(other), None, ms.Tensor(mask)).asnumpy()
    assert np.abs(a[:, 5:] - b[:, 5:]).max() <= 1e-5


def test_packed_documents_equal_separate_runs():
    """A row packing two documents (positions restart, document ids differ) gives each document the logits
    it has alone: no attention across the boundary, positions from 0 (docs/data.md contract)."""
    set_mode("graph")
    model = _model()
    rng = np.random.default_rng(4)
    first, second = rng.integers(4, 512, (1, 9)).astype(np.int32), rng.integers(4, 512, (1, 7)).astype(np.int32)
    packed = np.concatenate([first, second, np.full((1, 4), 3, np.int32)], axis=1)          # + right padding
    positions = np.concatenate([np.arange(9), np.arange(7), np.zeros(4)]).astype(np.int32)[None]
    documents = np.concatenate([np.full(9, 1), np.full(7, 2), np.zeros(4)]).astype(np.int32)[None]
    got = model(ms.Tensor(packed), None, None, None, ms.Tensor(positions), ms.Tensor(documents)).asnumpy()
    assert np.abs(got[:, :9] - model(ms.Tensor(first)).asnumpy()).max() <= 1e-5
    assert np.abs(got[:, 9:16] - model(ms.Tensor(second)).asnumpy()).max() <= 1e-5


def test_kernels_are_selected_by_device():
    assert Kernels.for_device("CPU") == Kernels.plain()
    ascend = Kernels.for_device("Ascend")
    assert ascend.flash_attention and ascend.fused_rms_norm and ascend.fused_rope
    with pytest.raises(ValueError, match="device_target"):
        Kernels.for_device("TPU")
    # the model holds the Ascend primitives only when asked (CPU builds never reference them)
    model = TelechatForCausalLM(TelechatConfig.preset("tiny"), Kernels.for_device("Ascend"))
    layer = model.model.layers[0]
    assert hasattr(layer.attention.core, "flash_attention") and layer.attention_norm.fused
    assert not hasattr(_model().model.layers[0].attention.core, "flash_attention")


@pytest.mark.parametrize("length", [1, 31, 32, 33, 64, 65, 100, 128, 129, 1000])
def test_ntk_alpha_and_mscale_follow_hf_formula(length):
    tr, base = 32, 32
    seq = max(length, tr)
    hf_alpha = max(2 ** math.ceil(math.log(seq / base, 2) + 1) - 1, 1)
    assert ntk_alpha(length, tr, base) == hf_alpha
    assert ntk_mscale(length, tr) == (1.0 if seq / tr <= 1 else 0.1 * math.log(seq / tr) + 1.0)


def test_ntk_alpha_when_base_shorter_than_training():
    """base_seqlen < training_seqlen: alpha > 1 even for short inputs (spec §2.5 example: 8192/32768 -> 7)."""
    assert ntk_alpha(10, 32768, 8192) == 7
    assert ntk_mscale(10, 32768) == 1.0


@pytest.mark.parametrize("length", [20, 40, 70, 300])
def test_rotary_tables_match_hf_arithmetic(length):
    ref = TelechatRotary(16, 32, 32)
    cos_ref, sin_ref = ref(torch.zeros(1), torch.arange(length).unsqueeze(0))
    cos, sin = rotary_tables(RopeSpec(16, "telechat2", 10000.0, 32, 32, True), length, 0, length)
    for ours, theirs in ((cos, cos_ref[0].numpy()), (sin, sin_ref[0].numpy())):
        # torch's fp32 cos is not correctly rounded; near a fp16 rounding boundary (mostly tiny values,
        # angles near pi/2) it can round the other way: at most one fp16 ulp, on well under 1% of entries
        assert np.abs(ours - theirs).max() <= 1e-3
        assert np.mean(ours == theirs) >= 0.995
