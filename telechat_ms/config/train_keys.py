"""What each engine does with the MindFormers keys of a run yaml that TrainConfig does not read itself.

Every key is one of (docs/training.md, "Every yaml key", lists them all):
  inert     accepted with any value: it cannot change the numerics, memory or speed of a native run (it belongs to
            MindFormers' predict / task machinery, or only matters together with a key that is refused)
  mf_only   accepted by both engines at its neutral value ("off"); any other value is honoured by
            --engine mindformers and refused by the native loop with one line naming the key and why
  refused   accepted only at its neutral value; any other value is refused by both engines (neither applies it)
Keys no table names are unknown and fail (config/train.py), so nothing a yaml sets is silently dropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .base import ConfigError

INERT, MF_ONLY, REFUSED = "inert", "mf_only", "refused"


def _off(value) -> bool:
    return value in (None, False, 0, "", [], {})


def _one(value) -> bool:
    return value in (None, 1, 1.0)


def _on(value) -> bool:
    return value in (None, True)


def _no(key: str) -> Callable[[Any], bool]:
    """Neutral when the mapping does not set `key` (e.g. tensorboard without tensorboard_dir)."""
    return lambda value: value is None or (isinstance(value, Mapping) and _off(value.get(key)))


@dataclass(frozen=True)
class Rule:
    kind: str
    why: str
    neutral: Callable[[Any], bool] = _off


def inert(why: str) -> Rule:
    return Rule(INERT, why, lambda _v: True)


def mf_only(why: str, neutral: Callable[[Any], bool] = _off) -> Rule:
    return Rule(MF_ONLY, why, neutral)


def refused(why: str, neutral: Callable[[Any], bool] = _off) -> Rule:
    return Rule(REFUSED, why, neutral)


_PREDICT = inert("predict / inference setting; training does not read it")
_ONLY_WITH = "only read together with {}"

TOP = {
    "trainer": inert("MindFormers' task and model name (the task is causal language modelling either way)"),
    "model_name": inert("a name for logs"),
    "processor": inert("the tokenizer of MindFormers' predict; training reads token ids from the MindRecord"),
    "eval_dataset": inert(_ONLY_WITH.format("do_eval")), "eval_dataset_task": inert(_ONLY_WITH.format("do_eval")),
    "metric": inert(_ONLY_WITH.format("do_eval")), "eval_callbacks": inert(_ONLY_WITH.format("do_eval")),
    "eval_step_interval": inert(_ONLY_WITH.format("do_eval")),
    "eval_epoch_interval": inert(_ONLY_WITH.format("do_eval")),
    "do_eval": refused("evaluation during training is not wired for TelechatForCausalLM (MindFormers' metrics "
                       "expect its own models); evaluate the saved checkpoints instead"),
    "auto_trans_ckpt": inert("MindFormers: reshard a checkpoint of another layout onto this one on load; the native "
                             "loop loads whole checkpoints on every rank"),
    "transform_process_num": inert(_ONLY_WITH.format("auto_trans_ckpt")),
    "src_strategy_path_or_dir": mf_only("the strategy of a sharded load_checkpoint; the native loop loads only "
                                        "whole checkpoints (merge them first, docs/training.md)"),
    "only_save_strategy": mf_only("compile, write the strategy files and exit"),
    "remote_save_url": mf_only("ModelArts upload of the outputs"),
    "profile": mf_only("MindSpore profiler"),
    "profile_start_step": inert(_ONLY_WITH.format("profile")), "profile_stop_step": inert(_ONLY_WITH.format("profile")),
    "profile_communication": inert(_ONLY_WITH.format("profile")),
    "profile_memory": inert(_ONLY_WITH.format("profile")), "init_start_profile": inert(_ONLY_WITH.format("profile")),
    "layer_scale": refused("MindFormers 1.9 raises 'layer_scale is not supported'"),
    "layer_decay": refused("layer-wise lr decay: MindFormers 1.9 reads but never applies it", _one),
    "lr_scale": mf_only("scale the learning rate by global batch / lr_scale_factor"),
    "lr_scale_factor": inert(_ONLY_WITH.format("lr_scale")),
    "micro_batch_interleave_num": mf_only("MindFormers' MicroBatchInterleaved (two copies of the step overlap "
                                          "communication)", _one),
    "auto_tune": mf_only("dataset pipeline autotuning"),
    "filepath_prefix": inert(_ONLY_WITH.format("auto_tune")),
    "autotune_per_step": inert(_ONLY_WITH.format("auto_tune")),
    "load_ckpt_format": inert("MindFormers' reader of load_checkpoint (ckpt / safetensors; --engine mindformers sets "
                              "it from the files and refuses a value that contradicts them); the native loop reads "
                              "the format from the file name"),
    "load_ckpt_async": mf_only("load the checkpoint while the graph compiles"),
    "use_legacy": refused("use_legacy: False selects MindFormers' mcore models; TelechatForCausalLM is a "
                          "legacy-style model", _on),
    "use_legacy_format": refused("MindFormers' new checkpoint layout (checkpoint section, common.json) is not "
                                 "supported here; use the CheckpointMonitor callback", _on),
    "swap_config": refused("MindFormers' activation swap is applied by its own model classes, not "
                           "TelechatForCausalLM", _no("swap")),
    "monitor_config": mf_only("MindFormers' TrainingStateMonitor (local norms, dumps)", _no("monitor_on")),
    "print_separate_loss": inert("MindFormers mcore models print their loss parts; TelechatForCausalLM has one loss"),
    "calculate_per_token_loss": refused("TelechatForCausalLM returns the mean loss over the labelled tokens of its "
                                        "micro batch (docs/training.md, accumulation)"),
    "ignore_data_skip": mf_only("a resumed MindFormers run skips the data already seen unless this is set; the "
                                "native loop always continues the data at the resumed step"),
    "data_skip_steps": mf_only("skip this many steps of data on resume"),
    "train_precision_sync": mf_only("MindFormers' deterministic-computation switch"),
    "input_data": _PREDICT, "predict_batch_size": _PREDICT, "adapter_id": _PREDICT,
    "infer_precision_sync": _PREDICT, "postprocess_use_numpy": _PREDICT,
}
# context keys both engines apply with mindspore.set_context (the native loop itself, MindFormers' build_context)
CONTEXT_APPLIED = ("max_call_depth", "max_device_memory", "save_graphs", "save_graphs_path", "enable_graph_kernel",
                   "graph_kernel_flags", "jit_config", "memory_optimize_level", "runtime_num_threads",
                   "ascend_config", "deterministic", "mempool_block_size", "enable_compile_cache",
                   "compile_cache_path", "device_id")
# ... except on CPU, where MindFormers 1.9 mishandles them (mf_engine drops them too); both engines say so at start
CONTEXT_NOT_ON_CPU = ("max_device_memory", "jit_config", "ascend_config")
CONTEXT = {"affinity_cpu_list": mf_only("MindFormers binds the process to these CPU cores")}
RUNNER = {
    "sink_mode": mf_only("dataset sink mode (MindFormers on Ascend; on CPU it miscounts steps and --engine "
                         "mindformers turns it off, saying so)"),
    "sink_size": inert(_ONLY_WITH.format("sink_mode")),
    "initial_epoch": inert("set by MindFormers when it resumes; a yaml value is overwritten"),
    "initial_step": inert("set by MindFormers when it resumes; a yaml value is overwritten"),
}
WRAPPER = {
    "local_norm": mf_only("per-parameter-group gradient norms in the step outputs"),
    "calculate_per_token_loss": TOP["calculate_per_token_loss"],
    "use_skip_data_by_global_norm": mf_only("skip the update when the global norm exceeds "
                                            "global_norm_spike_threshold"),
    "global_norm_spike_threshold": inert(_ONLY_WITH.format("use_skip_data_by_global_norm")),
}
DATASET = {
    "python_multiprocessing": inert("the rows need no Python transforms, so there are no Python workers"),
    "drop_remainder": mf_only("the native loop always drops an epoch's incomplete last global batch", _on),
    "batch_size": inert("MindFormers overwrites it from runner_config"),
    "repeat": mf_only("repeat the dataset inside one epoch", _one),
    "numa_enable": mf_only("NUMA binding of the data workers"),
    "seed": mf_only("MindFormers' dataset seed; the native row order comes from the top-level seed",
                    lambda v: v in (None, 0)),
    "output_columns": refused("MindFormers projects the batch onto these columns; the model takes input_columns"),
    "construct_args_key": refused("the model's arguments are the input_columns names"),
    "eod_reset": refused("rebuilding positions and masks from eod tokens; the MindRecord carries position_ids and "
                         "document_ids already"),
    "eod_token_id": inert(_ONLY_WITH.format("eod_reset")),
    "dynamic_batch": refused("every row has seq_length + 1 tokens"),
    "pad_token_id": inert(_ONLY_WITH.format("dynamic_batch")), "divisor": inert(_ONLY_WITH.format("dynamic_batch")),
    "remainder": inert(_ONLY_WITH.format("dynamic_batch")),
    "auto_tune": mf_only("dataset pipeline autotuning"), "filepath_prefix": inert(_ONLY_WITH.format("auto_tune")),
    "autotune_per_step": inert(_ONLY_WITH.format("auto_tune")),
    "profile": mf_only("dataset profiling"),
}
LOADER = {
    "num_samples": mf_only("read only the first N rows"),
    "column_names": inert("MindFormers reads input_columns"),
}
CHECKPOINT = {
    "type": inert("CheckpointMonitor"),
    "integrated_save": inert("MindFormers, semi-auto parallel: gather the shards into each rank's file; the native "
                             "loop writes one whole checkpoint"),
    "checkpoint_format": inert("MindFormers writes ckpt or safetensors; the native loop always writes a model "
                               "directory with safetensors"),
    "embedding_local_norm_threshold": inert("MindFormers' checkpoint health monitor threshold"),
    "async_save": mf_only("save in a background thread"),
    "save_network_params": mf_only("an extra file with the network parameters only"),
    "save_trainable_params": mf_only("an extra file with the trainable parameters only"),
    "remove_redundancy": mf_only("save each replicated parameter once over the ranks"),
    "directory": mf_only("another checkpoint directory than <output_dir>/checkpoint"),
}
TENSORBOARD = {   # the `tensorboard` section besides tensorboard_dir (both engines write scalars there)
    "tensorboard_queue_size": inert("writer queue length"),
    "log_loss_scale_to_tensorboard": inert("MindFormers' switch for the loss-scale scalar; the native loop always "
                                           "writes it"),
    "log_timers_to_tensorboard": mf_only("MindFormers' timer scalars"),
    "log_expert_load_to_tensorboard": mf_only("MindFormers' MoE expert-load scalars"),
}
CALLBACKS_MF_ONLY = {
    "ObsMonitor": "ModelArts upload", "SummaryMonitor": "MindSpore summaries", "ProfileMonitor": "profiler",
    "TrainingStateMonitor": "MindFormers' training-state monitor", "EvalCallBack": "evaluation callback",
    "TrainCallBack": "MindFormers' stop/step callback",
}
# the `parallel` section (MindSpore auto-parallel context). With use_parallel the native loop trains data
# parallel (parallel_mode 0) and honours only that; without use_parallel both engines run stand-alone and no
# key of this section has an effect (MindFormers does not set the parallel context then).
PARALLEL_NATIVE = {"parallel_mode": lambda v: v in (0, "data_parallel", None),
                   "gradients_mean": lambda v: v in (True, None),
                   "enable_parallel_optimizer": _off}
PARALLEL_SEMI_AUTO = ("enable_alltoall", "full_batch", "search_mode", "strategy_ckpt_save_file",
                      "strategy_ckpt_load_file", "strategy_ckpt_config", "dataset_strategy",
                      "parallel_optimizer_config", "pipeline_config", "enable_parallel_optimizer",
                      "parallel_mode", "gradients_mean", "device_num", "loss_repeated_mean")


def check_section(rules: Mapping[str, Rule], section: Mapping, where: str, dotted: str, found: dict) -> dict:
    """Apply `rules` to the keys of `section` that they name: refused -> ConfigError; mf_only with a value that is
    not neutral -> recorded in `found` ({'dotted.key': why}). Returns the keys no rule names."""
    rest = {}
    for key, value in section.items():
        rule = rules.get(key)
        if rule is None:
            rest[key] = value
        elif rule.kind == REFUSED and not rule.neutral(value):
            raise ConfigError(f"{where}: {key}: {value!r} is not supported ({rule.why})")
        elif rule.kind == MF_ONLY and not rule.neutral(value):
            found[f"{dotted}.{key}" if dotted else key] = f"{value!r}: {rule.why}"
    return rest


def check_parallel_section(section: Mapping, where: str) -> dict:
    """{'parallel.key': why} of the settings the native loop cannot honour when use_parallel is true."""
    found = {}
    for key, value in section.items():
        if key not in PARALLEL_SEMI_AUTO:
            raise ConfigError(f"{where}: unknown key '{key}' (accepted: {', '.join(sorted(PARALLEL_SEMI_AUTO))})")
        neutral = PARALLEL_NATIVE.get(key)
        if neutral is not None and not neutral(value):
            found[f"parallel.{key}"] = f"{value!r}: semi-auto parallel / parallel optimizer (the native loop trains " \
                                       "data parallel: parallel_mode 0, gradients_mean True)"
    return found


# model.model_config keys that configure MindFormers, not the architecture
MODEL_RUN = {
    "type": inert("the registry name of the config class"),
    "auto_register": inert("run_mindformer.py's registry hook"),
    "offset": inert("pipeline layer offsets (parallel config; only with pipeline_stage > 1)"),
    "pp_interleave_num": inert("pipeline interleave chunks (parallel config; only with pipeline_stage > 1)"),
    "batch_size": _PREDICT, "is_dynamic": _PREDICT, "block_size": _PREDICT, "num_blocks": _PREDICT,
    "use_past": refused("the KV cache is for inference; training runs without it"),
    "checkpoint_name_or_path": refused("MindFormers does not load it for TelechatForCausalLM; use load_checkpoint"),
    "use_seq_parallel": refused("set parallel_config.use_seq_parallel (the layout reads that one)"),
    "fine_grain_interleave": refused("MindFormers' Llama-only split of each layer into interleaved halves to hide "
                                     "communication; TelechatForCausalLM has no such layer (the layout works "
                                     "without it)", _one),
    "pet_config": refused("LoRA / parameter-efficient tuning through MindFormers' pet is not wired for "
                          "TelechatForCausalLM"),
    "quantization_config": refused("MindFormers' quantizers do not know TelechatForCausalLM"),
    "use_flash_attention": inert("telechat_ms picks the kernel by device: FlashAttentionScore on Ascend, the "
                                 "plain path (same math) on CPU"),
}


def check_model_run_keys(section: Mapping, where: str, device_target: str, training: bool = True) -> None:
    """The MindFormers run keys of a model_config (both engines): refused ones raise; unknown keys raise.
    `training` False (a config MindFormers builds for any task) leaves use_past to MindFormers' own check."""
    for key, value in section.items():
        rule = MODEL_RUN.get(key)
        if rule is None:
            raise ConfigError(f"{where}: unknown key '{key}' (not a TelechatConfig field nor a MindFormers run key "
                              "telechat_ms knows; see docs/training.md)")
        if key == "use_past" and not training:
            continue
        if rule.kind == REFUSED and not rule.neutral(value):
            raise ConfigError(f"{where}.{key}: {value!r} is not supported ({rule.why})")
    if device_target == "Ascend" and section.get("use_flash_attention") is False:
        raise ConfigError(f"{where}.use_flash_attention: False is not supported (telechat_ms always uses "
                          "FlashAttentionScore on Ascend; the plain path would hold (S, S) scores per head)")


# moe_config keys and the model_config field each must agree with
MOE_FIELDS = {"expert_num": "num_experts", "num_experts_chosen": "num_experts_per_tok",
              "capacity_factor": "moe_capacity_factor", "norm_topk_prob": "norm_topk_prob"}


def check_moe_config(section: Mapping, model, where: str = "moe_config") -> None:
    """MindFormers' moe_config duplicates the MoE architecture, which telechat_ms reads from model_config: every key
    must agree with the model (or be ep_extend_tp, read by the parallel config)."""
    for key, value in section.items():
        if key == "ep_extend_tp":
            continue
        if key in MOE_FIELDS:
            ours = getattr(model, MOE_FIELDS[key])
            if ours != value:
                raise ConfigError(f"{where}.{key}: {value!r} disagrees with model_config.{MOE_FIELDS[key]} {ours!r} "
                                  "(the model reads model_config; make them equal or drop the moe_config key)")
        elif key == "router_dense_type":
            if value != "float32":
                raise ConfigError(f"{where}.router_dense_type: {value!r} is not supported (the router runs in float32)")
        elif key in ("aux_loss_types", "aux_loss_factors"):
            _check_aux(section, model, where)
        else:
            raise ConfigError(f"{where}.{key}: not supported (no counterpart in telechat_ms's MoE; the architecture "
                              "is model.model_config's, docs/moe.md)")


def _check_aux(section: Mapping, model, where: str) -> None:
    types, factors = section.get("aux_loss_types") or ["expert"], section.get("aux_loss_factors")
    if list(types) != ["expert"]:
        raise ConfigError(f"{where}.aux_loss_types: {types!r} is not supported (telechat_ms has the expert "
                          "load-balancing loss only)")
    coef = getattr(model, "router_aux_loss_coef", None)
    if factors is not None and [float(f) for f in factors] != [float(coef)]:
        raise ConfigError(f"{where}.aux_loss_factors: {factors!r} disagrees with model_config.router_aux_loss_coef "
                          f"{coef!r}")
