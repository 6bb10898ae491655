"""`telechat-ms plan`: judge a training layout (or search for one) before spending cluster time.

    telechat-ms plan --model 115b --devices 512 --dp 8 --mp 8 --pp 8 --micro-batch-num 8 --seq-len 8192 --hbm-gb 64
    telechat-ms plan --config yaml_configs/finetune_telechat2_35b.yaml
    telechat-ms plan --model 35b --devices 16 --hbm-gb 57 --emit-yaml parallel_35b.yaml      (solver)

Exit status: 0 the layout fits (and its strategies validate), 1 it does not fit / no layout fits,
2 invalid configuration (the message names the field). Times and throughput are estimates.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import yaml

from ..config.base import ConfigError, atomic_write_text
from ..config.model import PRESETS, TelechatConfig
from ..config.parallel import ParallelConfig
from .inference import plan_predict
from .memory import Hardware, Workload, model_flops_per_token
from .planner import Plan, closest, evaluate, solve
from . import run_yaml


def _counts(text: str | None, flag: str):
    """"full"/"true" -> True, "none"/"false" -> False, "3,0" -> [3, 0], "1,1;0,2" -> [[1, 1], [0, 2]]."""
    if text is None:
        return None
    low = text.strip().lower()
    if low in ("full", "true", "all"):
        return True
    if low in ("none", "false", "off", ""):
        return False
    try:
        rows = [[int(x) for x in row.split(",")] for row in low.split(";")]
    except ValueError:
        raise ConfigError(f"{flag}: expected full, none or per-stage counts like '3,0' ('1,1;0,2' per interleave "
                          f"chunk), got {text!r}") from None
    return rows[0] if len(rows) == 1 else rows


# flags where 0 or a negative number is invalid input (never "unset": an unset flag is None)
_AT_LEAST_ONE = ("devices", "dp", "mp", "pp", "ep", "micro_batch_num", "micro_batch_size", "seq_len", "interleave")


def check_args(args) -> None:
    """Refuse impossible flag values before planning, naming every bad flag at once (exit 2): a 0 must not
    fall back to a default and a negative size must not give negative memory or 'does not fit'."""
    bad = []
    if args.model is None and args.config is None:
        bad.append(f"give --model (one of: {', '.join(sorted(PRESETS))}) or --config RUN_YAML")
    elif args.model is not None and args.config is not None:
        bad.append(f"give --model or --config, not both (the yaml {args.config} defines the model)")
    for name in _AT_LEAST_ONE:
        value = getattr(args, name)
        if value is not None and value < 1:
            bad.append(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name in ("hbm_gb", "peak_tflops"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            bad.append(f"--{name.replace('_', '-')} must be > 0, got {value:g}")
    if not (math.isfinite(args.reserve_gb) and args.reserve_gb >= 0):
        bad.append(f"--reserve-gb must be >= 0, got {args.reserve_gb:g}")
    if not 0 < args.efficiency <= 1:            # also refuses nan
        bad.append(f"--efficiency must be in (0, 1], got {args.efficiency:g} (a fraction of --peak-tflops)")
    if args.emit_yaml and not os.path.isdir(os.path.dirname(os.path.abspath(args.emit_yaml))):
        bad.append(f"--emit-yaml {args.emit_yaml}: directory {os.path.dirname(os.path.abspath(args.emit_yaml))} "
                   "does not exist")
    if bad:
        raise ConfigError("; ".join(bad))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="telechat-ms plan", description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(PRESETS), help="preset name (required unless --config)")
    p.add_argument("--config", help="a run yaml (yaml_configs/...): model, layout, HBM limit, batch from it")
    p.add_argument("--devices", type=int, help="total devices (default dp*mp*pp; the solver: 8)")
    for flag in ("dp", "mp", "pp", "ep"):
        p.add_argument(f"--{flag}", type=int)
    p.add_argument("--micro-batch-num", type=int)
    p.add_argument("--micro-batch-size", type=int, help="sequences per device per micro-batch (default 1)")
    p.add_argument("--seq-len", type=int)
    p.add_argument("--hbm-gb", type=float, help="memory limit per device (default: yaml max_device_memory or 64)")
    p.add_argument("--recompute", help="full | none | per-stage counts '3,0'")
    p.add_argument("--select-recompute", help="full | none | per-stage counts")
    p.add_argument("--select-comm-recompute", help="full | none | per-stage counts")
    p.add_argument("--offset", help="per-stage layer offsets '-1,1,1,-1' (';' between interleave chunks)")
    p.add_argument("--interleave", type=int, help="pp_interleave_num")
    p.add_argument("--no-seq-parallel", action="store_true")
    p.add_argument("--vocab-emb-dp", action="store_true")
    p.add_argument("--no-parallel-optimizer", action="store_true")
    p.add_argument("--shard-size", type=int, help="optimizer_weight_shard_size")
    p.add_argument("--no-ep-extend-tp", action="store_true")
    p.add_argument("--no-flash", action="store_true", help="plain attention (scores stored)")
    p.add_argument("--amp-o2", action="store_true", help="16-bit params with an fp32 master copy")
    p.add_argument("--peak-tflops", type=float, default=Hardware.peak_tflops)
    p.add_argument("--efficiency", type=float, default=Hardware.efficiency, help="assumed fraction of peak")
    p.add_argument("--reserve-gb", type=float, default=Hardware.reserve_gb)
    p.add_argument("--no-validate", action="store_true", help="skip the static strategy validation")
    p.add_argument("--emit-yaml", help="write the plan's parallel sections (mindformers format) here")
    # LoRA (issue 12): frozen base, adapter-only states (telechat_ms/lora/memory.py); a --config yaml's lora: /
    # pet_config is read too
    p.add_argument("--lora-rank", type=int, help="plan a LoRA finetune of this rank (with --lora-targets)")
    p.add_argument("--lora-targets", help="comma-separated LoRA target modules, our or the family's HF names "
                   "(default with --lora-rank: wq,wk_v,wo,w1,w2,w3)")
    p.add_argument("--lora-base-dtype", choices=("float32", "float16", "bfloat16"),
                   help="frozen base dtype (default: the model's compute dtype)")
    return p


def _model(args, run):
    if run is not None:
        return run_yaml.model_config_of(run, args.config)
    return TelechatConfig.preset(args.model, compute_dtype="bfloat16")


def _explicit_layout(args, run, config) -> ParallelConfig | None:
    """The layout to evaluate, or None to solve: no yaml, and --devices given without all of dp/mp/pp
    (those given are then held fixed by the solver)."""
    given = [x for x in (args.dp, args.mp, args.pp) if x is not None]
    if run is None and (not given or (args.devices is not None and len(given) < 3)):
        return None
    base = run_yaml.parallel_config_of(run, args.config) if run is not None else ParallelConfig(
        use_seq_parallel=not args.no_seq_parallel and (args.mp or 1) > 1, vocab_emb_dp=args.vocab_emb_dp,
        enable_parallel_optimizer=not args.no_parallel_optimizer and (args.dp or 1) > 1,
        ep_extend_tp=config.is_moe and not args.no_ep_extend_tp)
    changes = {k: v for k, v in {
        "data_parallel": args.dp, "model_parallel": args.mp, "pipeline_stage": args.pp, "expert_parallel": args.ep,
        "micro_batch_num": args.micro_batch_num, "recompute": _counts(args.recompute, "--recompute"),
        "select_recompute": _counts(args.select_recompute, "--select-recompute"),
        "select_comm_recompute": _counts(args.select_comm_recompute, "--select-comm-recompute"),
        "offset": _counts(args.offset, "--offset"),
        "pp_interleave_num": args.interleave, "optimizer_weight_shard_size": args.shard_size}.items()
        if v is not None}
    if "offset" in changes and isinstance(changes["offset"], bool):
        changes["offset"] = 0
    if run is None and "micro_batch_num" not in changes and (args.pp or 1) > 1:
        changes["micro_batch_num"] = 4 * args.pp
    return base.replace(**changes)


def _settings(args, run):
    # flags were checked (check_args): None is the only "unset"
    seq = args.seq_len if args.seq_len is not None else (
        run_yaml.model_config_of(run).seq_length if run is not None else TelechatConfig.preset(args.model).seq_length)
    mbs = args.micro_batch_size if args.micro_batch_size is not None else (
        run_yaml.micro_batch_size(run) if run is not None else 1)
    hbm = args.hbm_gb if args.hbm_gb is not None else (
        run_yaml.max_device_memory_gb(run) if run is not None else None) or 64.0
    work = Workload(seq_len=seq, micro_batch_size=mbs, flash_attention=not args.no_flash, amp_o2=args.amp_o2)
    hw = Hardware(hbm_gb=hbm, reserve_gb=args.reserve_gb, peak_tflops=args.peak_tflops, efficiency=args.efficiency)
    return work, hw


def format_plan(config, plan: Plan, work: Workload, hw: Hardware) -> str:
    e, par = plan.estimate, plan.parallel
    lines = [f"layout {par.describe()}: offset {par.offset}, recompute {par.recompute}, select_recompute "
             f"{par.select_recompute}, select_comm_recompute {par.select_comm_recompute}",
             f"{'stage':>5} {'layers':>6} {'full_rc':>7} {'sel_rc':>6} {'params':>8} {'states':>7} {'activ':>7} "
             f"{'edge':>6} {'total':>7} {'est_ms':>7}"]
    for s in e.stages:
        lines.append(f"{s.stage:5d} {s.layers:6d} {s.full_recompute:7d} {s.select_recompute:6d} {s.params / 1e9:7.2f}B "
                     f"{s.states_gb:6.1f}G {s.activations_gb:6.1f}G {s.edge_gb:5.1f}G {s.total_gb:6.1f}G "
                     f"{s.time_s * 1e3:7.0f}")
    mfu = model_flops_per_token(config, work.seq_len) * e.tokens_per_device_s / (hw.peak_tflops * 1e12)
    lines.append(f"peak {e.peak_gb:.1f} GB of {hw.hbm_gb:.1f} GB (incl. {hw.reserve_gb:.1f} GB reserve): "
                 f"{'FITS' if e.fits else 'DOES NOT FIT'}")
    lines.append(f"estimate (peak {hw.peak_tflops:.0f} TFLOPS x efficiency {hw.efficiency} assumed): step "
                 f"{e.step_time_s:.2f} s, {e.tokens_per_device_s:.0f} tokens/s/device, MFU {mfu:.0%}, slowest stage "
                 f"{e.imbalance():+.1%} vs mean")
    return "\n".join(lines)


def emit_yaml(path: str, plan: Plan, hw: Hardware, config) -> None:
    par = plan.parallel
    sections = par.to_run_config(moe=config.is_moe)
    sections["context"] = {"max_device_memory": f"{hw.hbm_gb:g}GB"}
    header = (f"# devices: {par.device_num} -- {par.describe()}, written by `telechat-ms plan` for "
              f"{config.num_layers} layers; peak {plan.estimate.peak_gb:.1f} GB (estimate).\n"
              "# Merge into a run yaml (mindformers `base_config`), e.g. base_config: [finetune_telechat2_35b.yaml]\n")
    try:
        atomic_write_text(path, header + yaml.safe_dump(sections, sort_keys=False))   # temp file + rename
    except OSError as exc:          # read-only or full disk: the temp file is gone, `path` untouched
        raise ConfigError(f"--emit-yaml {path}: cannot write: {exc.strerror or exc}") from None


def _validate(config, par: ParallelConfig, work: Workload) -> str:
    from ..model import Kernels   # pylint: disable=import-outside-toplevel
    from .strategies import shard_model   # pylint: disable=import-outside-toplevel
    from .validate import build_abstract_model, validate   # pylint: disable=import-outside-toplevel
    model = shard_model(build_abstract_model(config, Kernels.for_device("Ascend")), par)
    batch = par.data_parallel * work.micro_batch_size * par.micro_batch_num
    report = validate(model, par, batch, work.seq_len)
    return f"static validation (Ascend kernels): {len(report.ops)} sharded ops valid for batch {batch}, seq {work.seq_len}"


def _with_lora(args, run_cfg, config, work: Workload) -> Workload:
    """The Workload with LoRA memory when the yaml has lora: / pet_config or --lora-rank is given."""
    import dataclasses   # pylint: disable=import-outside-toplevel
    from ..lora.config import LoraConfig, lora_from_run   # pylint: disable=import-outside-toplevel
    from ..lora.memory import LoraMemory   # pylint: disable=import-outside-toplevel
    lora = lora_from_run(run_cfg, args.config) if run_cfg is not None else None
    if args.lora_rank is not None or args.lora_targets:
        targets = (args.lora_targets or "wq,wk_v,wo,w1,w2,w3").split(",")
        lora = LoraConfig(rank=args.lora_rank or (lora.rank if lora else 8), target_modules=targets,
                          source="--lora-rank/--lora-targets")
    if lora is None:
        return work
    return dataclasses.replace(work, lora=LoraMemory.from_config(config, lora, args.lora_base_dtype))


def run(args) -> int:
    check_args(args)
    run_cfg = run_yaml.load_run_yaml(args.config) if args.config else None
    config = _model(args, run_cfg)
    work, hw = _settings(args, run_cfg)
    work = _with_lora(args, run_cfg, config, work)
    layout = _explicit_layout(args, run_cfg, config)
    if layout is not None:
        if args.devices is not None and args.devices != layout.device_num:
            raise ConfigError(f"--devices {args.devices} != dp*mp*pp = {layout.device_num}")
        if run_cfg is not None and run_cfg.get("run_mode") == "predict":      # inference: no optimizer states
            return plan_predict(config, run_cfg, layout, work, hw, validate=not args.no_validate)
        plan = evaluate(config, layout, work, hw)
    else:
        fixed = {"dp": args.dp, "mp": args.mp, "pp": args.pp, "ep": args.ep, "micro_batch_num": args.micro_batch_num, "seq_parallel": not args.no_seq_parallel,
                 "parallel_optimizer": not args.no_parallel_optimizer, "ep_extend_tp": not args.no_ep_extend_tp}
        devices = 8 if args.devices is None else args.devices
        plans = solve(config, devices, work, hw, fixed)
        if not plans:
            near = closest(config, devices, work, hw, fixed)
            hint = f"; closest: {near.parallel.describe()} with full recompute needs {near.estimate.peak_gb:.1f} GB" \
                if near else ""
            print(f"no layout of {devices} devices fits {hw.hbm_gb:g} GB for this model{hint}")
            return 1
        print("best layouts (estimated tokens/s/device):")
        for p in plans:
            print(f"  {p.parallel.describe():45} {p.estimate.tokens_per_device_s:7.0f}  peak {p.estimate.peak_gb:.1f} GB")
        plan = plans[0]
    print(f"{config.family} {config.num_parameters() / 1e9:.2f}B params, seq {work.seq_len}, micro batch "
          f"{work.micro_batch_size}")
    if work.lora is not None:
        lora = work.lora
        print(f"LoRA r{lora.rank} on {len(lora.modules)} linears: {lora.trainable(config.num_layers, True) / 1e6:.1f}M "
              f"trainable params; frozen base at {lora.base_bytes} bytes/param")
    print(format_plan(config, plan, work, hw))
    if not args.no_validate:
        print(_validate(config, plan.parallel, work))
    if args.emit_yaml:
        emit_yaml(args.emit_yaml, plan, hw, config)
        print(f"wrote {args.emit_yaml}")
    return 0 if plan.estimate.fits else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
