"""Decoder-layer cell reuse (mindspore.lazy_inline) selected by device: Ascend compiles one layer graph and reuses
it; CPU keeps the plain layer (MindSpore 2.9's CPU backend rejects reused cells). The Ascend graph itself is not
run here (no Ascend device): only the selection, the math in PYNATIVE mode (where lazy_inline is inert), the
inherited shard plan and the CPU refusal are tested."""
import dataclasses

import mindspore as ms
import numpy as np
import pytest

from telechat_ms import TelechatConfig, TelechatForCausalLM
from telechat_ms.config.parallel import ParallelConfig
from telechat_ms.model import Kernels
from telechat_ms.model.decoder import DecoderLayer, ReusedDecoderLayer
from telechat_ms.parallel.strategies import cell_kind, shard_model
from telechat_ms.parallel.validate import build_abstract_model, validate

from .conftest import set_mode

REUSE = dataclasses.replace(Kernels.plain(), cell_reuse=True)     # plain ops + cell reuse: runnable on CPU


def test_cell_reuse_is_selected_by_device():
    assert Kernels.for_device("Ascend").cell_reuse and not Kernels.for_device("CPU").cell_reuse
    ascend = build_abstract_model(TelechatConfig.preset("tiny"), Kernels.for_device("Ascend"))
    cpu = build_abstract_model(TelechatConfig.preset("tiny"), Kernels.for_device("CPU"))
    assert all(type(layer) is ReusedDecoderLayer for layer in ascend.model.layers)
    assert all(type(layer) is DecoderLayer for layer in cpu.model.layers)


def test_reused_layer_keeps_the_decoder_plan():
    """The lazy_inline subclass is planned and validated as a DecoderLayer (a 96-layer layout with reuse)."""
    model = build_abstract_model(TelechatConfig.preset("115b"), Kernels.for_device("Ascend"))
    assert cell_kind(model.model.layers[0]) == "DecoderLayer"
    par = ParallelConfig(data_parallel=8, model_parallel=8, pipeline_stage=8, micro_batch_num=8,
                         use_seq_parallel=True, vocab_emb_dp=False)
    ops = {op.path for op in validate(shard_model(model, par), par, batch=64, seq_len=8192).ops}
    assert "model.layers.95.add_mlp" in ops


def _pair():
    config = TelechatConfig.preset("tiny_gqa")
    ms.set_seed(0)
    plain = TelechatForCausalLM(config)
    ms.set_seed(0)
    reused = TelechatForCausalLM(config, REUSE)
    return config, plain, reused


def test_reused_layers_compute_the_plain_math_in_pynative():
    set_mode("pynative")
    try:
        config, plain, reused = _pair()
        ids = ms.Tensor(np.random.default_rng(0).integers(0, config.vocab_size, (2, 12)).astype(np.int32))
        assert np.array_equal(plain(ids).asnumpy(), reused(ids).asnumpy())
        assert plain(ids, ids).asnumpy() == reused(ids, ids).asnumpy()
    finally:
        set_mode("graph")


def test_cpu_graph_mode_rejects_reused_cells():
    """Why CPU takes the plain path: MindSpore 2.9's CPU backend cannot run a lazy_inline graph (if this test
    starts failing, MindSpore gained the support and Kernels.for_device("CPU") may enable it)."""
    set_mode("graph")
    _, _, reused = _pair()
    ids = ms.Tensor(np.ones((2, 8), np.int32))
    with pytest.raises(Exception, match="Primitive ValueNode"):
        reused(ids).asnumpy()
