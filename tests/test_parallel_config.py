"""ParallelConfig: mindformers names, run-yaml sections, validation errors that name fields and values."""
import pytest

from telechat_ms import ConfigError
from telechat_ms.config.parallel import ParallelConfig


def test_defaults_are_stand_alone():
    par = ParallelConfig()
    assert par.device_num == 1 and par.stage_device_num == 1 and par.seq_split == 1 and par.optimizer_shard == 1
    assert par.offsets() == [[0]] and par.stage_counts("recompute") is False


def test_flat_mindformers_names():
    par = ParallelConfig.from_dict({"data_parallel": 2, "model_parallel": 4, "pipeline_stage": 2,
                                    "micro_batch_num": 4, "use_seq_parallel": True, "vocab_emb_dp": False,
                                    "gradient_aggregation_group": 4, "context_parallel": 1})
    assert par.device_num == 16 and par.stage_device_num == 8 and par.seq_split == 4
    assert par.extra == {"context_parallel": 1}      # accepted mindformers key, no effect on the layout


def test_from_run_config_gathers_the_official_sections():
    run = {
        "parallel_config": {"data_parallel": 128, "model_parallel": 4, "pipeline_stage": 2, "expert_parallel": 2,
                            "micro_batch_num": 4, "use_seq_parallel": True, "vocab_emb_dp": False},
        "recompute_config": {"recompute": [3, 0], "select_recompute": False, "mp_comm_recompute": True,
                             "parallel_optimizer_comm_recompute": False, "recompute_slice_activation": True},
        "parallel": {"parallel_mode": 1, "enable_parallel_optimizer": True,
                     "parallel_optimizer_config": {"optimizer_weight_shard_size": 2, "parallel_optimizer_threshold": 64}},
        "model": {"model_config": {"offset": 0, "hidden_size": 4096}},
        "moe_config": {"expert_num": 16},
    }
    par = ParallelConfig.from_run_config(run)
    assert (par.data_parallel, par.model_parallel, par.pipeline_stage, par.expert_parallel) == (128, 4, 2, 2)
    assert par.recompute == [3, 0] and par.stage_counts("recompute") == [[3, 0]]
    assert par.enable_parallel_optimizer and par.optimizer_shard == 2
    # mindformers' MoEConfig defaults ep_extend_tp to True when the section does not set it
    assert par.ep_extend_tp is True
    assert ParallelConfig.from_run_config({"parallel_config": {}}).ep_extend_tp is False


def test_run_config_round_trip():
    par = ParallelConfig(data_parallel=8, model_parallel=8, pipeline_stage=8, micro_batch_num=8,
                         use_seq_parallel=True, select_recompute=True, select_comm_recompute=[8, 8, 10, 11, 10, 7, 5, 4],
                         pp_interleave_num=3, offset=[[-1, -1, 0, 0, 0, 0, 0, 0], [-1, 0, 0, 0, 0, 0, 0, 0],
                                                      [0, 0, 0, 1, 1, 1, 1, -1]], enable_parallel_optimizer=True)
    assert ParallelConfig.from_run_config(par.to_run_config()) == par
    assert "moe_config" not in par.to_run_config(moe=False)


@pytest.mark.parametrize("changes,field,value", [
    ({"data_parallel": 0}, "data_parallel", "0"),
    ({"model_parallel": 2.0}, "model_parallel", "2.0"),
    ({"use_seq_parallel": "yes"}, "use_seq_parallel", "'yes'"),
    ({"pipeline_stage": 4, "micro_batch_num": 2}, "micro_batch_num", "(2)"),
    ({"data_parallel": 8, "optimizer_weight_shard_size": 3}, "optimizer_weight_shard_size", "(3)"),
    ({"optimizer_weight_shard_size": 0}, "optimizer_weight_shard_size", "0"),
    ({"pipeline_stage": 2, "micro_batch_num": 2, "offset": [1, 0, -1]}, "offset", "[1, 0, -1]"),
    ({"pipeline_stage": 2, "micro_batch_num": 2, "recompute": [1, -1]}, "recompute", "[1, -1]"),
    ({"pipeline_stage": 2, "micro_batch_num": 2, "pp_interleave_num": 2, "offset": [0, 0]}, "offset", "[0, 0]"),
    ({"pp_interleave_num": 2}, "pp_interleave_num", "2"),
    ({"select_recompute": "all"}, "select_recompute", "'all'"),
])
def test_errors_name_field_and_value(changes, field, value):
    with pytest.raises(ConfigError) as err:
        ParallelConfig(**changes)
    assert field in str(err.value) and value in str(err.value)


def test_unknown_key_is_rejected_with_its_name():
    with pytest.raises(ConfigError, match="unknown config key 'data_paralel'"):
        ParallelConfig.from_dict({"data_paralel": 2})


def test_interleaved_recompute_list_is_one_row_per_stage():
    par = ParallelConfig(pipeline_stage=2, micro_batch_num=2, pp_interleave_num=2, offset=[[0, 0], [0, 0]],
                         select_comm_recompute=[3, 1], recompute=[[1, 0], [0, 1]])
    assert par.stage_counts("select_comm_recompute") == [[3, 1]]     # spread over chunks by the pipeline
    assert par.stage_counts("recompute") == [[1, 0], [0, 1]]


def test_optimizer_shard_size():
    assert ParallelConfig(data_parallel=8, enable_parallel_optimizer=True).optimizer_shard == 8
    assert ParallelConfig(data_parallel=8, enable_parallel_optimizer=True,
                          optimizer_weight_shard_size=2).optimizer_shard == 2
    assert ParallelConfig(data_parallel=8).optimizer_shard == 1
