"""Parallel layout of a training run: dp / mp / pp / ep, sequence parallel, recompute, optimizer sharding.

Field names are mindformers' (`parallel_config`, `recompute_config`, `parallel.parallel_optimizer_config`,
`model.model_config.offset`, `moe_config.ep_extend_tp`), so an official yaml maps field for field.
`ParallelConfig.from_run_config` gathers them from those sections; `to_run_config` writes them back.
Checks here need no model; shape checks (heads, vocab, batch, seq) live in telechat_ms.parallel.validate.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

from .base import ConfigError, check_positive, check_type, strict_from_dict

# per-stage layer counts: bool (all / none), [count per stage], or [[count per stage] per interleave chunk]
StageCounts = Union[bool, int, list]

# mindformers keys with no layout of their own here: accepted, kept in `extra` (docs/training.md)
IGNORED_PARALLEL_KEYS = frozenset({
    "mem_coeff",                 # MindFormers' memory coefficient for its own auto-recompute estimates
    "context_parallel_algo", "ulysses_degree_in_cp",   # only with context_parallel > 1, which is refused
    "optimizer_shard",           # deprecated in MindFormers (r0.7): "will not have any effect"
    "auto_parallel",
    "context_parallel", "seq_split_num",   # accepted at 1 only (NEUTRAL_ONLY_KEYS)
})
IGNORED_RECOMPUTE_KEYS = frozenset({"select_recompute_exclude", "select_comm_recompute_exclude"})
# ... of which these are refused at any value but the neutral one, naming the key and why
NEUTRAL_ONLY_KEYS = {
    "context_parallel": ((None, 1), "context parallelism has no shard plan for TelechatForCausalLM"),
    "seq_split_num": ((None, 1), "MindFormers' sequence pipeline (SequenceSplit) is not implemented for "
                                 "TelechatForCausalLM"),
    "select_recompute_exclude": ((None, False, {}, []), "per-op exclusions from select recompute name "
                                                        "MindFormers' own layer ops"),
    "select_comm_recompute_exclude": ((None, False, {}, []), "per-op exclusions from select recompute name "
                                                             "MindFormers' own layer ops"),
    "fine_grain_interleave": ((None, 1), "MindFormers' Llama-only split of each layer into interleaved halves; "
                                         "TelechatForCausalLM has no such layer"),
}


@dataclass
class ParallelConfig:
    """One training layout. Devices = data_parallel * model_parallel * pipeline_stage."""

    data_parallel: int = 1
    model_parallel: int = 1
    pipeline_stage: int = 1
    expert_parallel: int = 1
    use_seq_parallel: bool = False
    micro_batch_num: int = 1
    vocab_emb_dp: bool = True               # embedding/head replicated over mp (False: vocab-parallel)
    gradient_aggregation_group: int = 4
    ep_extend_tp: bool = False              # inside the MoE: ep' = ep * mp, mp' = 1 (spec §4.4)
    # recompute (mindformers recompute_config): True = every layer, list = first n layers of each stage
    recompute: StageCounts = False
    select_recompute: StageCounts = False
    select_comm_recompute: StageCounts = False
    mp_comm_recompute: bool = True
    # with full recompute: slice the stored layer outputs over model parallel (MindSpore Cell.recompute flag)
    recompute_slice_activation: bool = False
    # with full recompute: re-gather the parallel optimizer's sharded weights in the backward pass instead of
    # keeping the gathered copies (MindSpore Cell.recompute flag)
    parallel_optimizer_comm_recompute: bool = False
    # parallel optimizer (mindformers `parallel` section): shards weights + AdamW states over data parallel
    enable_parallel_optimizer: bool = False
    optimizer_weight_shard_size: int = -1   # -1: the whole data-parallel group
    gradient_accumulation_shard: bool = False
    # pipeline layout (mindformers model_config): layers of stage s = num_layers // (pp*v) + offset[s]
    offset: Union[int, list] = 0
    pp_interleave_num: int = 1
    extra: dict = field(default_factory=dict, repr=False, compare=False)   # unknown-but-ignored keys seen

    def __post_init__(self):
        for name in ("data_parallel", "model_parallel", "pipeline_stage", "expert_parallel", "micro_batch_num",
                     "gradient_aggregation_group", "pp_interleave_num"):
            check_positive(name, getattr(self, name))
        for name in ("use_seq_parallel", "vocab_emb_dp", "ep_extend_tp", "mp_comm_recompute",
                     "recompute_slice_activation", "parallel_optimizer_comm_recompute", "enable_parallel_optimizer",
                     "gradient_accumulation_shard"):
            check_type(name, getattr(self, name), bool)
        check_type("optimizer_weight_shard_size", self.optimizer_weight_shard_size, int)
        self._check_relations()
        for name in ("recompute", "select_recompute", "select_comm_recompute"):
            self.stage_counts(name)          # raises on a malformed list
        self.offsets()

    def _check_relations(self):
        pp, mbn = self.pipeline_stage, self.micro_batch_num
        if pp > 1 and mbn < pp:
            # 1F1B needs at least one micro-batch per stage in flight, or stages idle for the whole step
            raise ConfigError(f"micro_batch_num ({mbn}) must be >= pipeline_stage ({pp})")
        size = self.optimizer_weight_shard_size
        if size == 0 or size < -1:
            raise ConfigError(f"optimizer_weight_shard_size must be -1 (whole data-parallel group) or >= 1, got {size}")
        if size > 1 and self.data_parallel % size:
            raise ConfigError(f"optimizer_weight_shard_size ({size}) must divide data_parallel ({self.data_parallel})")
        if self.pp_interleave_num > 1 and pp == 1:
            raise ConfigError(f"pp_interleave_num ({self.pp_interleave_num}) > 1 needs pipeline_stage > 1")

    # ----- derived -----
    @property
    def device_num(self) -> int:
        return self.data_parallel * self.model_parallel * self.pipeline_stage

    @property
    def stage_device_num(self) -> int:
        return self.data_parallel * self.model_parallel

    @property
    def seq_split(self) -> int:
        """Split of the sequence axis outside attention/MLP matmuls (norms, residual adds, dropout)."""
        return self.model_parallel if self.use_seq_parallel else 1

    @property
    def optimizer_shard(self) -> int:
        """How many data-parallel ranks share one copy of a (dense) weight and its AdamW states."""
        if not self.enable_parallel_optimizer:
            return 1
        return self.data_parallel if self.optimizer_weight_shard_size == -1 else self.optimizer_weight_shard_size

    def stage_counts(self, name: str) -> list[list[int]] | bool:
        """recompute-like field as [chunk][stage] counts, or True/False for every/no layer.

        With pp_interleave_num > 1 a flat list (one count per stage, as the official 115B yaml writes
        select_comm_recompute) comes back as a single row: pipeline.layer_placements spreads it over chunks.
        """
        value = getattr(self, name)
        if isinstance(value, bool):
            return value
        pp, v = self.pipeline_stage, self.pp_interleave_num
        return _per_chunk_stage(name, value, pp, v, allow_negative=False)

    def offsets(self) -> list[list[int]]:
        """Layer offsets as [chunk][stage]; an int offset 0 means an even split."""
        pp, v = self.pipeline_stage, self.pp_interleave_num
        if isinstance(self.offset, bool):
            raise ConfigError(f"offset must be an int or a list, got {self.offset!r}")
        if isinstance(self.offset, int):
            return [[self.offset] * pp for _ in range(v)]
        return _per_chunk_stage("offset", self.offset, pp, v, allow_negative=True)

    def replace(self, **changes) -> "ParallelConfig":
        return dataclasses.replace(self, **changes)

    # ----- (de)serialisation -----
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "parallel config") -> "ParallelConfig":
        """Flat mapping of field names (mindformers spelling); keys of the ignore lists are dropped."""
        ignored = IGNORED_PARALLEL_KEYS | IGNORED_RECOMPUTE_KEYS | set(NEUTRAL_ONLY_KEYS)
        for key, (neutral, why) in NEUTRAL_ONLY_KEYS.items():
            if key in data and data[key] not in neutral:
                raise ConfigError(f"{source}: {key}: {data[key]!r} is not supported ({why})")
        config = strict_from_dict(cls, data, source, ignored=ignored)
        config.extra = {k: v for k, v in data.items() if k in ignored}
        return config

    @classmethod
    def from_run_config(cls, run: Mapping[str, Any], source: str = "run config") -> "ParallelConfig":
        """Gather the layout from a mindformers run config (sections as in the official yamls)."""
        flat: dict[str, Any] = {}
        flat.update(_section(run, "parallel_config", source))
        flat.update(_section(run, "recompute_config", source))
        par = _section(run, "parallel", source)
        if "enable_parallel_optimizer" in par:
            flat["enable_parallel_optimizer"] = par["enable_parallel_optimizer"]
        opt = par.get("parallel_optimizer_config") or {}
        for key in ("optimizer_weight_shard_size", "gradient_accumulation_shard"):
            if key in opt:
                flat[key] = opt[key]
        model_cfg = (_section(run, "model", source).get("model_config") or {})
        for key in ("offset", "pp_interleave_num", "fine_grain_interleave"):
            if key in model_cfg:
                flat[key] = model_cfg[key]
        if "moe_config" in run:
            # mindformers' MoEConfig defaults ep_extend_tp to True: a moe_config section without it means True
            flat["ep_extend_tp"] = _section(run, "moe_config", source).get("ep_extend_tp", True)
        return cls.from_dict(flat, source)

    def to_run_config(self, moe: bool = True) -> dict[str, Any]:
        """The mindformers sections this config owns, ready to merge into a run yaml (`moe`: write moe_config)."""
        par = {k: getattr(self, k) for k in ("data_parallel", "model_parallel", "pipeline_stage", "expert_parallel",
                                              "use_seq_parallel", "micro_batch_num", "vocab_emb_dp",
                                              "gradient_aggregation_group")}
        rec = {k: getattr(self, k) for k in ("recompute", "select_recompute", "select_comm_recompute",
                                              "mp_comm_recompute", "recompute_slice_activation",
                                              "parallel_optimizer_comm_recompute")}
        opt = {"optimizer_weight_shard_size": self.optimizer_weight_shard_size,
               "gradient_accumulation_shard": self.gradient_accumulation_shard}
        out = {
            "parallel_config": par, "recompute_config": rec,
            "parallel": {"enable_parallel_optimizer": self.enable_parallel_optimizer,
                         "parallel_optimizer_config": opt},
            "model": {"model_config": {"offset": self.offset, "pp_interleave_num": self.pp_interleave_num}},
        }
        if moe:
            out["moe_config"] = {"ep_extend_tp": self.ep_extend_tp}
        return out

    def describe(self) -> str:
        sp = " sp" if self.use_seq_parallel and self.model_parallel > 1 else ""
        ep = f" ep{self.expert_parallel}{'(x mp)' if self.ep_extend_tp else ''}" if self.expert_parallel > 1 else ""
        return (f"dp{self.data_parallel} mp{self.model_parallel} pp{self.pipeline_stage}{ep}{sp} "
                f"mbn{self.micro_batch_num} ({self.device_num} devices)")


def _section(run: Mapping[str, Any], key: str, source: str) -> Mapping[str, Any]:
    value = run.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: section '{key}' must be a mapping, got {type(value).__name__}")
    return value


def _int_list(name: str, values: Any, length: int, allow_negative: bool) -> list[int]:
    if not isinstance(values, (list, tuple)) or len(values) != length:
        raise ConfigError(f"{name} must list one value per pipeline stage ({length}), got {values!r}")
    for value in values:
        check_type(name, value, int)
        if value < 0 and not allow_negative:
            raise ConfigError(f"{name} counts must be >= 0, got {values!r}")
    return [int(v) for v in values]


def _per_chunk_stage(name: str, value: Any, pp: int, v: int, allow_negative: bool) -> list[list[int]]:
    """[count per stage] (one chunk) or [[count per stage] per chunk] -> [chunk][stage]."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0 and not allow_negative:
            raise ConfigError(f"{name} must be >= 0, got {value}")
        return [[value] * pp for _ in range(v)]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name} must be a bool, an int or a list, got {value!r}")
    nested = bool(value) and isinstance(value[0], (list, tuple))
    if not nested and (v == 1 or not allow_negative):
        # with interleaving, a flat recompute list counts the first n layers of each stage over its chunks
        return [_int_list(name, value, pp, allow_negative)]
    if not nested or len(value) != v:
        raise ConfigError(f"{name} with pp_interleave_num={v} must be {v} lists of {pp} values, got {value!r}")
    return [_int_list(name, row, pp, allow_negative) for row in value]
