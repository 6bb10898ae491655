"""Static validation of a sharded TelechatForCausalLM: every strategy against the real input shapes.

    model = build_abstract_model(TelechatConfig.preset("115b"))     # lazy parameters: no weight memory
    model.shard(parallel)
    report = validate(model, parallel, batch=64, seq_len=8192)       # raises StrategyError on the first failure

Two layers of checks: (1) layout checks that need only the configs (device product, micro batches, batch
and sequence divisibility, heads / kv heads / ffn / vocab / experts by their splits, stage layer counts);
(2) a walk over every cell: every primitive that runs (parallel/shapes.py) must have a planned strategy --
none is left to MindSpore's default --, the strategies set on its primitives must equal the plan derived
from the ParallelConfig, and each call's input shapes must satisfy parallel/rules.py. A cell class without a
plan that holds primitives is refused. parallel/trace.py proves on compiled tiny models that nothing else
runs (no functional op outside the table).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from ..config.base import ConfigError
from .pipeline import layer_placements, stage_of_path
from .rules import StrategyError, check_call
from .shapes import AXES, ShapeContext, op_calls
from .strategies import PARAM_INPUTS, UNITS, plan_for, resolve, walk_cells


@contextlib.contextmanager
def lazy_parameters():
    """Build Cells without materialising initializer-created parameters (as mindspore's deprecated
    nn.utils.no_init_parameters): a 115B model then costs a few hundred MB of host memory."""
    from mindspore import Parameter   # pylint: disable=import-outside-toplevel
    old = getattr(Parameter, "init_param", True)
    Parameter.init_param = False
    try:
        yield
    finally:
        Parameter.init_param = old


def build_abstract_model(config, kernels=None):
    """A TelechatForCausalLM whose parameters stay uninitialised (shapes and dtypes only)."""
    from ..model import Kernels, TelechatForCausalLM   # pylint: disable=import-outside-toplevel
    with lazy_parameters():
        return TelechatForCausalLM(config, kernels or Kernels.plain())


@dataclass
class OpReport:
    path: str
    kind: str
    stage: int
    strategy: tuple
    out_strategy: tuple | None
    calls: list
    devices: int

    def line(self) -> str:
        shapes = "; ".join(" x ".join(str(tuple(map(int, s))) for s in call) for call in self.calls[:2])
        more = f" (+{len(self.calls) - 2} calls)" if len(self.calls) > 2 else ""
        out = f" out={self.out_strategy}" if self.out_strategy else ""
        return f"[stage {self.stage}] {self.path} {self.kind} {self.strategy}{out} on {shapes}{more} -> {self.devices} dev"


@dataclass
class ValidationReport:
    parallel: object
    batch: int
    seq_len: int
    checks: list = field(default_factory=list)
    ops: list = field(default_factory=list)

    def to_text(self, limit: int | None = 40) -> str:
        lines = [f"layout {self.parallel.describe()}, batch {self.batch}, seq {self.seq_len}: "
                 f"{len(self.ops)} sharded ops valid"]
        lines += [f"  ok: {c}" for c in self.checks]
        shown = self.ops if limit is None else self.ops[:limit]
        lines += ["  " + op.line() for op in shown]
        if len(shown) < len(self.ops):
            lines.append(f"  ... {len(self.ops) - len(shown)} more ops")
        return "\n".join(lines)


def _need(ok: bool, op: str, message: str, *fields: str) -> None:
    if not ok:
        raise StrategyError(op, message, fields)


def check_layout(config, parallel, batch: int, seq_len: int) -> list[str]:
    """Config-level checks; returns the list of what was checked (for the report)."""
    dp, mp, pp, mbn = parallel.data_parallel, parallel.model_parallel, parallel.pipeline_stage, parallel.micro_batch_num
    _need(mbn >= pp, "layout", f"micro_batch_num ({mbn}) must be >= pipeline_stage ({pp})",
          "micro_batch_num", "pipeline_stage")
    _need(batch % (dp * mbn) == 0, "layout", f"batch ({batch}) must be divisible by data_parallel ({dp}) x "
          f"micro_batch_num ({mbn}) = {dp * mbn}", "data_parallel", "micro_batch_num")
    for name in ("num_heads", "num_kv_heads"):
        _need(getattr(config, name) % mp == 0, "layout", f"{name} ({getattr(config, name)}) must be divisible by "
              f"model_parallel ({mp}): attention is split by whole heads", "model_parallel")
    moe_mp = 1 if (config.is_moe and parallel.ep_extend_tp) else mp
    _need(config.ffn_hidden_size % moe_mp == 0, "layout", f"ffn_hidden_size ({config.ffn_hidden_size}) must be "
          f"divisible by model_parallel ({mp})", "model_parallel")
    _need(parallel.vocab_emb_dp or config.vocab_size % mp == 0, "layout", f"vocab_size ({config.vocab_size}) "
          f"must be divisible by model_parallel ({mp}) for vocab-parallel embedding/head (or set vocab_emb_dp)",
          "model_parallel", "vocab_emb_dp")
    _need(not parallel.use_seq_parallel or seq_len % mp == 0, "layout", f"seq_len ({seq_len}) must be divisible "
          f"by model_parallel ({mp}) with use_seq_parallel", "use_seq_parallel", "model_parallel")
    _need(seq_len >= 2, "layout", f"seq_len ({seq_len}) must be >= 2 for the shifted loss")
    try:
        layer_placements(config.num_layers, parallel)
    except ConfigError as exc:
        raise StrategyError("layout", str(exc), ("offset", "pipeline_stage", "recompute")) from None
    checks = [f"devices dp{dp} x mp{mp} x pp{pp} = {parallel.device_num}, {dp * mp} per stage",
              f"micro_batch_num {mbn} >= pipeline_stage {pp}; batch {batch} = {batch // (dp * mbn)} x dp x mbn",
              f"heads {config.num_heads} / kv heads {config.num_kv_heads} / ffn {config.ffn_hidden_size} by mp {mp}",
              f"{config.num_layers} layers over {pp} stages x {parallel.pp_interleave_num} chunks"]
    checks += _check_moe_layout(config, parallel, batch // mbn, seq_len)
    return checks


def _check_moe_layout(config, parallel, micro_batch: int, seq_len: int) -> list[str]:
    if not config.is_moe:
        _need(parallel.expert_parallel == 1, "layout", f"expert_parallel ({parallel.expert_parallel}) needs an MoE "
              "model (num_experts > 0)", "expert_parallel")
        return []
    from .moe_layout import moe_layout   # pylint: disable=import-outside-toplevel
    try:
        lay = moe_layout(parallel, config)
    except ConfigError as exc:
        raise StrategyError("layout", str(exc), ("expert_parallel", "data_parallel", "model_parallel")) from None
    _need(seq_len % config.moe_chunks == 0, "layout", f"moe_chunks ({config.moe_chunks}) must divide seq_len "
          f"({seq_len})")
    chunk_tokens = micro_batch * seq_len // config.moe_chunks
    _need(chunk_tokens % lay.dp == 0, "layout", f"tokens per MoE chunk ({chunk_tokens} = batch {micro_batch} x "
          f"seq {seq_len} / moe_chunks {config.moe_chunks}) must be divisible by the MoE token split "
          f"{lay.dp.describe()}", *lay.dp.fields)
    return [f"experts {config.num_experts} by ep' {int(lay.ep)}, tokens by dp' {int(lay.dp)}, "
            f"expert FFN by mp' {int(lay.mp)}, capacity axis by {int(lay.slot)}"]


def _strategy_of(prim) -> tuple:
    attrs = prim.attrs
    return attrs.get("in_strategy"), attrs.get("out_strategy")


SHARD_HINT = "shard with telechat_ms.parallel.shard_model(model, parallel) first"


def _check_cell(path, cell, config, parallel, ctx, placements) -> list[OpReport]:
    try:
        plan = plan_for(cell, parallel)
    except ConfigError as exc:
        raise StrategyError(path or "model", f"not sharded ({exc}); {SHARD_HINT}") from None
    calls = op_calls(cell, config, ctx)
    for extra in set(calls) - set(plan):
        raise StrategyError(f"{path}.{extra}", "runs in construct but has no planned strategy")
    reports = []
    for name, op in plan.items():
        full = f"{path}.{name}" if path else name
        prim = resolve(cell, name)
        in_set, out_set = _strategy_of(prim)
        want_in, want_out = op.plain()
        if in_set is None:
            raise StrategyError(full, f"has no strategy: {SHARD_HINT}")
        if tuple(in_set) != want_in or (out_set is not None and tuple(out_set) != want_out):
            raise StrategyError(full, f"strategy set {in_set} / out {out_set} differs from the plan {want_in} / "
                                f"out {want_out} derived from the ParallelConfig")
        devices = 1
        for shapes in calls.get(name, []):
            devices = max(devices, check_call(full, prim, op.in_strategy, op.out_strategy, shapes,
                                              parallel.stage_device_num, AXES.get(name)))
        stage = stage_of_path(full, placements, parallel.pipeline_stage)
        reports.append(OpReport(full, type(prim).__name__, stage, want_in, want_out, calls.get(name, []), devices))
    return reports


# Primitives that carry no strategy of their own in MindSpore's semi-auto parallel: Reshape is laid out by
# redistribution between its neighbours, Cast takes the layout of its input.
LAYOUT_FREE = frozenset({"Reshape", "Cast"})


def _planned_ids(cell, plan) -> set:
    return {id(resolve(cell, name)) for name in plan}


def check_ops(model, parallel, ctx: ShapeContext) -> list[OpReport]:
    """Walk every cell; units (the MoE) are checked as a whole and their descendants skipped."""
    config = model.config
    placements = layer_placements(config.num_layers, parallel)
    reports: list[OpReport] = []
    planned: set = set()
    unknown = []
    for path, cell, kind in walk_cells(model):
        if kind not in UNITS and not _is_known(kind):
            unknown.append((path, cell))
            continue
        cell_reports = _check_cell(path, cell, config, parallel, ctx, placements)
        planned |= _planned_ids(cell, plan_for(cell, parallel))
        reports.extend(cell_reports)
    _check_unknown_cells(unknown, planned)
    _check_no_stray_strategies(model, planned)
    check_shared_parameters(model, parallel)
    return reports


def parameter_slices(model, parallel) -> dict:
    """{id(Parameter): [(op path, slice strategy of that input)]} for every Parameter an op reads (PARAM_INPUTS)."""
    out: dict = {}
    # the MoE plans its subtree as one unit; its weights are not shared
    for path, cell, kind in walk_cells(model):
        inputs = PARAM_INPUTS.get(kind)
        if not inputs:
            continue
        plan = plan_for(cell, parallel)
        for attr, (op, index) in inputs.items():
            param = getattr(cell, attr, None)
            if param is None or op not in plan:
                continue
            full = f"{path}.{op}" if path else op
            out.setdefault(id(param), []).append((full, plan[op].in_strategy[index]))
    return out


def check_shared_parameters(model, parallel) -> list[str]:
    """A Parameter read by several ops (tied embeddings: the embedding Gather's table and the lm_head MatMul's
    weight) has one layout in MindSpore, so every reader must slice it alike; returns what was checked."""
    checked = []
    for readers in parameter_slices(model, parallel).values():
        if len(readers) < 2:
            continue
        (first, want), rest = readers[0], readers[1:]
        for op, got in rest:
            if tuple(map(int, got)) != tuple(map(int, want)):
                fields = tuple(dict.fromkeys(f for s in tuple(want) + tuple(got) for f in getattr(s, "fields", ())))
                raise StrategyError(op, f"reads a Parameter shared with {first} (tied embeddings) sliced "
                                    f"{tuple(map(int, got))}, but {first} slices it {tuple(map(int, want))}: a "
                                    "shared Parameter has one layout", fields)
        checked.append(f"shared parameter sliced {tuple(map(int, want))} by " + ", ".join(op for op, _ in readers))
    return checked


def _is_known(kind: str) -> bool:
    from .strategies import PLANS   # pylint: disable=import-outside-toplevel
    return kind in PLANS


def _primitives(cell) -> dict:
    from mindspore.ops import Primitive   # pylint: disable=import-outside-toplevel
    return {name: prim for name, prim in vars(cell).items() if isinstance(prim, Primitive)}


def _check_unknown_cells(unknown, planned: set) -> None:
    """A cell class no plan covers (a containers such as CellList holds no primitive; nn.Dropout's primitive is
    planned by its parent) would run its primitives on MindSpore's default strategy: refuse it, naming it."""
    for path, cell in unknown:
        for name, prim in _primitives(cell).items():
            if id(prim) in planned or type(prim).__name__ in LAYOUT_FREE:
                continue
            raise StrategyError(f"{path}.{name}" if path else name, f"{type(prim).__name__} in a "
                                f"{type(cell).__name__}, a cell class without a shard plan (telechat_ms.parallel."
                                "strategies.PLANS): it would run on MindSpore's default strategy")


def _check_no_stray_strategies(model, planned: set) -> None:
    """A primitive carrying a strategy that no plan produced would escape validation: refuse it."""
    from mindspore.ops import Primitive   # pylint: disable=import-outside-toplevel
    for path, cell in model.cells_and_names():
        for name, prim in vars(cell).items():
            if isinstance(prim, Primitive) and prim.attrs.get("in_strategy") is not None and id(prim) not in planned:
                raise StrategyError(f"{path}.{name}" if path else name,
                                    "carries a strategy that no plan in telechat_ms.parallel.strategies derives")


def validate(model, parallel, batch: int, seq_len: int, training: bool = True, padded: bool = False,
             packed: bool = False) -> ValidationReport:
    """Check every sharded primitive of `model` for global `batch` (sequences per step, all micro-batches)
    and `seq_len`; `padded` / `packed`: the inputs include an attention_mask / position_ids + document_ids
    (their mask and rotary ops are then checked too). Returns a report, raises StrategyError (a ConfigError)
    on the first failure."""
    checks = check_layout(model.config, parallel, batch, seq_len)
    ctx = ShapeContext(batch // parallel.micro_batch_num, seq_len, training, padded, packed)
    report = ValidationReport(parallel, batch, seq_len, checks)
    report.ops = check_ops(model, parallel, ctx)
    report.checks += check_shared_parameters(model, parallel)
    return report
