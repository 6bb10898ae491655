"""`telechat-ms` command line: one entry, subcommands by concern.

Subcommands: `info` (presets and parameter counts), `forward` (build a model and run one forward pass),
`convert` (hf2ms / ms2hf / mf2ms, docs/convert.md), `plan` (docs/parallel.md),
`preprocess` (jsonl -> MindRecord, docs/data.md), `train` / `plot-loss` (docs/training.md), `chat` (docs/inference.md),
`eval` (perplexity, lm-evaluation-harness tasks, docs/evaluation.md),
`serve` (OpenAI-compatible HTTP API, docs/serving.md),
`merge-lora` (a PEFT LoRA adapter merged into a converted model, docs/training.md),
`verify` (re-hash a converted directory against its checksums.sha256, docs/convert.md).
Exit codes: 0 ok, 2 bad input (verify: 1 when files are corrupt or missing).
"""
from __future__ import annotations

import argparse
import sys
import time


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _cmd_info(args) -> int:
    from .config.model import PRESETS, TelechatConfig
    names = [args.model] if args.model else list(PRESETS)
    print(f"{'preset':22} {'family':12} {'layers':>6} {'hidden':>6} {'heads':>5} {'kv':>3} {'ffn':>6} {'experts':>7} "
          f"{'params':>16} {'active':>10}")
    for name in names:
        c = TelechatConfig.preset(name)
        experts = f"{c.num_experts}/{c.num_experts_per_tok}" if c.is_moe else "-"
        print(f"{name:22} {c.family:12} {c.num_layers:6d} {c.hidden_size:6d} {c.num_heads:5d} {c.num_kv_heads:3d} "
              f"{c.ffn_hidden_size:6d} {experts:>7} {c.num_parameters():>16,d} "
              f"{_count(c.num_parameters(active=True)):>10}")
    return 0


def _cmd_forward(args) -> int:
    import numpy as np
    import mindspore as ms
    from . import Kernels, TelechatConfig, TelechatForCausalLM
    from .runtime import set_up
    set_up(args.device_target, args.mode)
    ms.set_seed(args.seed)
    kernels = Kernels.for_device(args.device_target)
    if args.model_dir:
        model = TelechatForCausalLM.from_pretrained(args.model_dir, kernels)
    else:
        model = TelechatForCausalLM(TelechatConfig.preset(args.preset), kernels)
    config = model.config
    ids = np.random.default_rng(args.seed).integers(0, config.vocab_size, (args.batch, args.seq_len)).astype(np.int32)
    start = time.perf_counter()
    logits = model(ms.Tensor(ids)).asnumpy()
    loss = float(model(ms.Tensor(ids), ms.Tensor(ids)).asnumpy())
    elapsed = time.perf_counter() - start
    print(f"model: {args.model_dir or args.preset} ({config.num_parameters() / 1e6:.2f}M params, "
          f"{config.num_layers} layers, hidden {config.hidden_size})")
    print(f"input_ids {ids.shape} -> logits {logits.shape} float32, mean |logit| {np.abs(logits).mean():.4f}")
    print(f"loss on random tokens: {loss:.4f} (ln vocab = {np.log(config.vocab_size):.4f}); "
          f"2 passes incl. compile: {elapsed:.2f}s")
    return 0


def _cmd_verify(args) -> int:
    from .io.errors import ConvertError, summarize
    from .io.integrity import CHECKSUMS, describe_problems, verify_dir
    try:
        mismatched, missing, extra = verify_dir(args.dir)
    except (ConvertError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if extra:
        print(f"note: not covered by {CHECKSUMS} ({len(extra)}): {summarize(extra)}", file=sys.stderr)
    if mismatched or missing:
        print(f"corrupt: {describe_problems(args.dir, mismatched, missing)}", file=sys.stderr)
        return 1
    print(f"ok: {args.dir}: every file listed in {CHECKSUMS} matches")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telechat-ms", description="TeleChat2 on MindSpore (Ascend / CPU)")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="list presets with parameter counts")
    info.add_argument("--model", help="one preset name")
    info.set_defaults(func=_cmd_info)
    fwd = sub.add_parser("forward", help="build a model (preset or converted dir) and run a forward pass")
    fwd.add_argument("--preset", default="tiny")
    fwd.add_argument("--model-dir", help="converted directory (convert/hf2ms.py output)")
    fwd.add_argument("--batch", type=int, default=2)
    fwd.add_argument("--seq-len", type=int, default=16)
    fwd.add_argument("--mode", choices=("graph", "pynative"), default="graph")
    fwd.add_argument("--device-target", choices=("CPU", "Ascend", "GPU"), default="CPU")
    fwd.add_argument("--seed", type=int, default=0)
    fwd.set_defaults(func=_cmd_forward)
    ver = sub.add_parser("verify", help="re-hash a converted directory against its checksums.sha256 "
                                        "(exit 0 ok, 1 corrupt or missing files, 2 invalid input)")
    ver.add_argument("dir", help="directory written by telechat-ms convert")
    ver.set_defaults(func=_cmd_verify)
    conv = sub.add_parser("convert", help="weight conversion: hf2ms | ms2hf | mf2ms (see --help of each)",
                          add_help=False)
    conv.add_argument("direction", choices=("hf2ms", "ms2hf", "mf2ms"))
    conv.set_defaults(func=None)
    sub.add_parser("train", help="finetune / pretrain from a yaml (docs/training.md)", add_help=False)
    sub.add_parser("plot-loss", help="loss-curve PNG from a training log", add_help=False)
    sub.add_parser("chat", help="chat / generate with a converted model (docs/inference.md)", add_help=False)
    sub.add_parser("eval", help="perplexity or lm-evaluation-harness tasks of a converted model "
                                "(docs/evaluation.md)", add_help=False)
    sub.add_parser("serve", help="OpenAI-compatible HTTP API for a converted model (docs/serving.md)",
                   add_help=False)
    # LoRA (issue 12): telechat_ms/lora/cli.py
    sub.add_parser("merge-lora", help="merge a LoRA adapter (PEFT format) into a converted model (docs/training.md)",
                   add_help=False)
    sub.add_parser("plan", help="memory/time plan and solver for a parallel layout (docs/parallel.md)",
                   add_help=False)
    sub.add_parser("preprocess", help="jsonl (official or mindformers format) -> packed MindRecord (docs/data.md)",
                   add_help=False)
    return parser


# subcommands implemented by their own module's main(argv) -> exit code (imported only when used)
ROUTED = {"train": ("train.cli", "train_main"), "plot-loss": ("train.cli", "plot_loss_main"),
          "eval": ("eval.cli", "main"),
          "chat": ("infer.cli", "main"), "serve": ("serve.cli", "main"), "plan": ("parallel.plan_cli", "main"),
          "preprocess": ("data.preprocess", "main"), "convert hf2ms": ("convert.cli", "hf2ms_main"),
          "convert ms2hf": ("convert.cli", "ms2hf_main"), "convert mf2ms": ("convert.cli", "mf2ms_main"),
          "merge-lora": ("lora.cli", "merge_main")}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for words in (2, 1):
        key = " ".join(argv[:words])
        if len(argv) >= words and key in ROUTED:
            import importlib
            module, func = ROUTED[key]
            return getattr(importlib.import_module(f".{module}", __package__), func)(argv[words:])
    args = build_parser().parse_args(argv)
    from .config.base import ConfigError
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
