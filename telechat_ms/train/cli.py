"""`telechat-ms train` and `telechat-ms plot-loss` (wired into telechat_ms/cli.py).

train flags follow MindFormers' run_mindformer.py (--config, --run_mode, --load_checkpoint, --train_dataset_dir,
--use_parallel, --resume_training, --output_dir, --seed, --epochs, --batch_size, --gradient_accumulation_steps,
--device_target) plus --train_dataset (alias), --amp_level, --stop_step, --overwrite_output_dir and --engine.
Exit codes: 0 ok (also "nothing to do"), 2 bad config / input, or a run stopped on non-finite values (one
`error:` line on stderr naming the file and key or the step).
"""
from __future__ import annotations

import argparse
import sys

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _bool(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _resume(text: str):
    """--resume_training alone = True; true/false; any other value names the step directory to resume from."""
    if text.lower() in _TRUE + _FALSE:
        return _bool(text)
    return text


def build_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="telechat-ms train", description="Train / finetune TeleChat2 from a "
                                "MindFormers-format run yaml (docs/training.md)")
    p.add_argument("--config", required=True, help="run yaml (yaml_configs/...)")
    p.add_argument("--run_mode", choices=("train", "finetune"))
    p.add_argument("--load_checkpoint", help="converted model dir (convert/hf2ms.py), a training step dir, "
                   "or a .ckpt/.safetensors file of model weights")
    p.add_argument("--train_dataset", "--train_dataset_dir", dest="dataset_dir", help="MindRecord file or dir")
    p.add_argument("--use_parallel", type=_bool, help="data parallel over msrun workers")
    p.add_argument("--resume_training", nargs="?", const=True, type=_resume,
                   help="resume from the newest checkpoint (or the named step directory)")
    p.add_argument("--output_dir")
    p.add_argument("--overwrite_output_dir", nargs="?", const=True, type=_bool,
                   help="a fresh run may delete the checkpoints an earlier run left in output_dir")
    p.add_argument("--seed", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch_size", type=int)
    p.add_argument("--gradient_accumulation_steps", type=int)
    p.add_argument("--stop_step", type=int, help="stop after this many optimizer steps")
    p.add_argument("--amp_level", choices=("O0", "O1", "O2"))
    p.add_argument("--device_target", choices=("CPU", "Ascend", "GPU"))
    p.add_argument("--engine", choices=("native", "mindformers"), default="native",
                   help="native loop (default) or MindFormers' Trainer (telechat_ms/integrations/mindformers.py)")
    return p


_OVERRIDES = ("run_mode", "load_checkpoint", "dataset_dir", "use_parallel", "resume_training", "output_dir", "seed",
              "epochs", "batch_size", "gradient_accumulation_steps", "stop_step", "amp_level", "device_target",
              "overwrite_output_dir")


def train_main(argv: list[str] | None = None) -> int:
    args = build_train_parser().parse_args(argv)
    from ..config.base import ConfigError   # pylint: disable=import-outside-toplevel
    from ..io.errors import ConvertError   # pylint: disable=import-outside-toplevel
    from .trainer import TrainingError   # pylint: disable=import-outside-toplevel
    overrides = {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None}
    try:
        if args.engine == "mindformers":
            from ..integrations.mf_engine import run_yaml   # pylint: disable=import-outside-toplevel
            run_yaml(args.config, overrides, printer=lambda line: print(line, flush=True))
            return 0
        return _train_native(args.config, overrides)
    except (ConfigError, ConvertError, TrainingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _train_native(path: str, overrides: dict) -> int:
    from .trainer import Trainer, load_run   # pylint: disable=import-outside-toplevel
    config, model_overrides, parallel = load_run(path)
    trainer = Trainer(config.replace(**overrides), model_overrides, parallel,
                      printer=lambda line: print(line, flush=True))
    result = trainer.train()
    if result.losses:
        print(f"done: steps {result.start_step}->{result.end_step}, loss {result.losses[0]:.4f} -> "
              f"{result.losses[-1]:.4f}; checkpoint {result.checkpoint}", flush=True)
    return 0


def build_plot_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="telechat-ms plot-loss", description="loss-curve PNG from a training log")
    p.add_argument("--log", required=True, help="train_log.jsonl, or a text log (stdout / msrun worker log)")
    p.add_argument("--output", required=True, help="PNG file to write")
    p.add_argument("--width", type=int, default=800)
    p.add_argument("--height", type=int, default=480)
    return p


def plot_loss_main(argv: list[str] | None = None) -> int:
    args = build_plot_parser().parse_args(argv)
    from .plot_loss import PlotError, plot_loss_file   # pylint: disable=import-outside-toplevel
    try:
        steps, first, last = plot_loss_file(args.log, args.output, args.width, args.height)
    except PlotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {steps} steps, loss {first:.4f} -> {last:.4f}")
    return 0
