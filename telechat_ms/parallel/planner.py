"""Preflight planner: does a layout fit in HBM, how fast is it (estimate), and which layout is best.

`evaluate(...)` judges one ParallelConfig stage by stage (parallel/memory.py). `solve(...)` searches
dp / mp / pp / ep and, per layout, the per-stage layer counts (offsets) and full-recompute counts that
minimise the slowest stage under the HBM limit -- a bottleneck search: for a time bound T every stage
takes as many layers as fit under the memory limit (with the fewest recomputed layers) within T; the
smallest T whose stages cover all layers wins, and surplus layers come off the slowest stages.
The CLI lives in parallel/plan_cli.py (`telechat-ms plan`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..config.base import ConfigError
from ..config.parallel import ParallelConfig
from .memory import Hardware, LayoutEstimate, Workload, estimate_layout, stage_estimate
from .pipeline import layer_placements
from .validate import check_layout


@dataclass
class Plan:
    parallel: ParallelConfig
    estimate: LayoutEstimate
    notes: list = field(default_factory=list)


def evaluate(config, parallel: ParallelConfig, work: Workload, hw: Hardware) -> Plan:
    """Memory / time of exactly this layout (offsets and recompute as configured)."""
    _training_only(config)
    batch = parallel.data_parallel * work.micro_batch_size * parallel.micro_batch_num
    check_layout(config, parallel, batch, work.seq_len)
    return Plan(parallel, estimate_layout(config, parallel, work, hw, layer_placements(config.num_layers, parallel)))


def _training_only(config) -> None:
    if config.quantization is not None:
        raise ConfigError("a weight-only-quantized model (model_config quantization) is inference-only: plan it "
                          "with a run_mode: predict yaml")


# ----------------------------------------------------------------------------- per-layout stage solver
@dataclass
class _Linear:
    """A stage's memory (GB) and time (s) as intercept + per-kept-layer + per-recomputed-layer slopes
    (exact: every term of stage_estimate is linear in the layer counts once the stage has a layer)."""

    mem0: float
    mem_keep: float
    mem_rc: float
    time0: float
    time_keep: float
    time_rc: float

    def mem(self, n: int, r: int) -> float:
        return self.mem0 + (n - r) * self.mem_keep + r * self.mem_rc

    def time(self, n: int, r: int) -> float:
        return self.time0 + (n - r) * self.time_keep + r * self.time_rc


def _linear_stage(config, parallel, work, hw, stage: int, select: bool) -> _Linear:
    keep = (False, select, False)
    one = stage_estimate(config, parallel, work, hw, stage, {keep: 1})
    two = stage_estimate(config, parallel, work, hw, stage, {keep: 2})
    rc = stage_estimate(config, parallel, work, hw, stage, {(True, False, False): 1})
    mem_keep, time_keep = two.total_gb - one.total_gb, two.time_s - one.time_s
    mem0, time0 = one.total_gb - mem_keep, one.time_s - time_keep
    return _Linear(mem0, mem_keep, rc.total_gb - mem0, time0, time_keep, rc.time_s - time0)


def _min_recompute(lin: _Linear, n: int, limit: float) -> int | None:
    """Fewest fully recomputed layers for n layers to fit, or None."""
    if lin.mem(n, 0) <= limit:
        return 0
    saving = lin.mem_keep - lin.mem_rc
    if saving <= 0 or lin.mem(n, n) > limit:
        return None
    r = max(0, math.ceil((lin.mem(n, 0) - limit) / saving - 1e-9))
    while r <= n and lin.mem(n, r) > limit:
        r += 1
    return r if r <= n else None


def _greedy(lins, total: int, limit: float, bound: float):
    """Max layers per stage within time `bound`; None if the stages cannot hold `total` layers."""
    counts = []
    for lin in lins:
        best = 0
        for n in range(1, total + 1):
            r = _min_recompute(lin, n, limit)
            if r is None or lin.time(n, r) > bound:
                break
            best = n
        if best == 0:
            return None
        counts.append(best)
    return counts if sum(counts) >= total else None


def _trim(lins, counts, total: int, limit: float) -> list[int]:
    """Remove surplus layers from the currently slowest stages (keeps the bound, improves balance)."""
    counts = list(counts)
    while sum(counts) > total:
        times = [lin.time(n, _min_recompute(lin, n, limit)) if n > 1 else -1.0 for lin, n in zip(lins, counts)]
        counts[times.index(max(times))] -= 1
    return counts


def solve_stages(config, parallel: ParallelConfig, work: Workload, hw: Hardware, select: bool) -> Plan | None:
    """Offsets + per-stage recompute counts for a fixed dp/mp/pp/ep layout (1F1B, no interleave)."""
    pp, total, limit = parallel.pipeline_stage, config.num_layers, hw.hbm_gb
    lins = [_linear_stage(config, parallel, work, hw, s, select) for s in range(pp)]
    bounds = sorted({lin.time(n, r) for lin in lins for n in range(1, total + 1)
                     for r in [_min_recompute(lin, n, limit)] if r is not None})
    lo, hi, found = 0, len(bounds) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        counts = _greedy(lins, total, limit, bounds[mid])
        if counts is None:
            lo = mid + 1
        else:
            found, hi = counts, mid - 1
    if found is None:
        return None
    counts = _trim(lins, found, total, limit)
    recompute = [_min_recompute(lin, n, limit) for lin, n in zip(lins, counts)]
    base = total // pp
    solved = parallel.replace(offset=[n - base for n in counts] if pp > 1 else 0,
                              recompute=recompute if any(recompute) else False, select_recompute=select)
    return evaluate(config, solved, work, hw)


# ----------------------------------------------------------------------------- layout search
def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_layouts(config, devices: int, work: Workload, hw: Hardware, fixed: dict) -> list[ParallelConfig]:
    """dp/mp/pp/ep combinations for `devices` that pass the config-level checks."""
    out = []
    for mp in [fixed["mp"]] if fixed.get("mp") else [d for d in _divisors(devices) if d <= hw.devices_per_node]:
        for pp in [fixed["pp"]] if fixed.get("pp") else _divisors(devices // mp if devices % mp == 0 else 1):
            if devices % (mp * pp) or pp > config.num_layers:
                continue
            dp = devices // (mp * pp)
            if fixed.get("dp") and fixed["dp"] != dp:
                continue
            eps = [fixed["ep"]] if fixed.get("ep") else (_divisors(dp) if config.is_moe else [1])
            for ep in eps:
                layout = _layout(config, dp, mp, pp, ep, fixed)
                if layout is not None:
                    out.append(layout)
    return out


def _even_offset(num_layers: int, pp: int):
    """Offsets that make pp stages add up to num_layers (the remainder on the last stages), so that a pp not
    dividing the layer count (Aquila2-34B: 60 layers, pp 8) is still a candidate; solve_stages re-solves them."""
    extra = num_layers % pp
    return [0] * (pp - extra) + [1] * extra if extra else 0


def _layout(config, dp, mp, pp, ep, fixed) -> ParallelConfig | None:
    mbn = fixed.get("micro_batch_num") or (4 * pp if pp > 1 else 1)
    try:
        parallel = ParallelConfig(
            offset=_even_offset(config.num_layers, pp),
            data_parallel=dp, model_parallel=mp, pipeline_stage=pp, expert_parallel=ep, micro_batch_num=max(mbn, pp),
            use_seq_parallel=mp > 1 and fixed.get("seq_parallel", True), vocab_emb_dp=mp == 1,
            ep_extend_tp=config.is_moe and fixed.get("ep_extend_tp", True),
            enable_parallel_optimizer=fixed.get("parallel_optimizer", True) and dp > 1,
            optimizer_weight_shard_size=fixed.get("shard_size", -1) if dp > 1 else -1)
        batch = dp * fixed.get("micro_batch_size", 1) * parallel.micro_batch_num
        check_layout(config, parallel, batch, fixed.get("seq_len", config.seq_length))
    except ConfigError:
        return None
    return parallel


def solve(config, devices: int, work: Workload, hw: Hardware, fixed: dict | None = None, top: int = 5) -> list[Plan]:
    """Fitting plans, best estimated throughput first (at most `top`)."""
    _training_only(config)
    fixed = dict(fixed or {}, seq_len=work.seq_len, micro_batch_size=work.micro_batch_size)
    plans = []
    for layout in candidate_layouts(config, devices, work, hw, fixed):
        for select in (False, True):
            plan = solve_stages(config, layout, work, hw, select)
            if plan is not None and plan.estimate.fits:
                plans.append(plan)
    plans.sort(key=lambda p: (-p.estimate.tokens_per_device_s, p.parallel.pipeline_stage))
    return plans[:top]


def closest(config, devices: int, work: Workload, hw: Hardware, fixed: dict | None = None) -> Plan | None:
    """When nothing fits: the valid layout with the lowest peak memory under full recompute."""
    fixed = dict(fixed or {}, seq_len=work.seq_len, micro_batch_size=work.micro_batch_size)
    plans = [evaluate(config, layout.replace(recompute=True), work, hw)
             for layout in candidate_layouts(config, devices, work, hw, fixed)]
    return min(plans, key=lambda p: p.estimate.peak_gb, default=None)
