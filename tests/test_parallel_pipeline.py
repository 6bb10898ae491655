"""Pipeline stages from offsets, recompute flags per layer, cell placement and the micro-batch wrapper."""
import pytest

from telechat_ms import ConfigError, TelechatConfig, TelechatForCausalLM
from telechat_ms.config.parallel import ParallelConfig
from telechat_ms.parallel.pipeline import (auto_parallel_context, configure_pipeline, layer_placements,
                                           stage_layers, wrap_pipeline)

OFFSET_115B = [[-1, -1, 0, 0, 0, 0, 0, 0], [-1, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1, -1]]


def test_official_35b_offsets_give_15_17_17_15():
    par = ParallelConfig(model_parallel=4, pipeline_stage=4, micro_batch_num=32, offset=[-1, 1, 1, -1])
    assert stage_layers(64, par) == [[15, 17, 17, 15]]


def test_official_115b_interleaved_offsets():
    par = ParallelConfig(data_parallel=8, model_parallel=8, pipeline_stage=8, micro_batch_num=8,
                         pp_interleave_num=3, offset=OFFSET_115B, select_recompute=True,
                         select_comm_recompute=[8, 8, 10, 11, 10, 7, 5, 4])
    counts = stage_layers(96, par)
    assert [sum(col) for col in zip(*counts)] == [10, 11, 12, 13, 13, 13, 13, 11]
    places = layer_placements(96, par)
    # chunk-major order: chunk 0 of stage 0 (3 layers), of stage 1 (3), of stage 2 (4), ...
    assert [p.stage for p in places[:10]] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert places[-1].stage == 7 and places[-1].chunk == 2
    comm = [sum(p.comm_recompute for p in places if p.stage == s) for s in range(8)]
    assert comm == [8, 8, 10, 11, 10, 7, 5, 4]
    assert all(p.select_recompute for p in places)


def test_recompute_counts_are_the_first_layers_of_each_stage():
    par = ParallelConfig(pipeline_stage=2, micro_batch_num=4, recompute=[3, 0])
    places = layer_placements(30, par)
    assert [p.layer for p in places if p.full_recompute] == [0, 1, 2]
    assert [p.stage for p in places] == [0] * 15 + [1] * 15


@pytest.mark.parametrize("changes,layers,message", [
    ({"offset": [1, 1]}, 8, r"offset \[1, 1\] gives 10 layers .* but num_layers is 8"),
    ({"offset": [-4, 4]}, 8, "leaves 0 layers on stage 0"),
    ({}, 1, r"num_layers \(1\) < pipeline_stage \(2\)"),
    ({}, 7, "the offsets must sum to 1"),
    ({"recompute": [5, 0]}, 8, "recompute asks for 5 layers on stage 0 chunk 0, which holds only 4"),
])
def test_stage_errors_name_the_field(changes, layers, message):
    par = ParallelConfig(pipeline_stage=2, micro_batch_num=2, **changes)
    with pytest.raises(ConfigError, match=message):
        layer_placements(layers, par)


def test_remainder_layers_go_where_the_offsets_say():
    par = ParallelConfig(pipeline_stage=3, micro_batch_num=3, offset=[0, 1, 0])
    assert stage_layers(7, par) == [[2, 3, 2]]


def test_configure_pipeline_places_cells_and_wraps():
    model = TelechatForCausalLM(TelechatConfig.preset("tiny", num_layers=4))
    par = ParallelConfig(pipeline_stage=2, micro_batch_num=4, offset=[1, -1], recompute=[1, 0], select_recompute=True)
    places = configure_pipeline(model, par)
    assert [layer.pipeline_stage for layer in model.model.layers] == [0, 0, 0, 1]
    assert model.model.tok_embeddings.pipeline_stage == 0
    assert model.lm_head.pipeline_stage == 1 and model.loss.pipeline_stage == 1
    assert model.model.norm_out.pipeline_stage == 1
    assert [p.full_recompute for p in places] == [True, False, False, False]
    assert model.model.layers[1].attention.core.softmax.attrs.get("recompute") is True
    wrapped = wrap_pipeline(model, par)
    assert type(wrapped).__name__ == "PipelineCell" and wrapped.micro_size == 4
    assert wrap_pipeline(model, ParallelConfig()) is model


def test_auto_parallel_context_arguments():
    par = ParallelConfig(data_parallel=8, model_parallel=8, pipeline_stage=8, micro_batch_num=8,
                         enable_parallel_optimizer=True, optimizer_weight_shard_size=2)
    ctx = auto_parallel_context(par)
    assert ctx["parallel_mode"] == "semi_auto_parallel" and ctx["device_num"] == 512
    assert ctx["pipeline_stages"] == 8
    assert ctx["parallel_optimizer_config"]["optimizer_weight_shard_size"] == 2
