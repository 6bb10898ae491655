"""`telechat-ms merge-lora --base DIR --adapter DIR --dst DIR`: a PEFT LoRA adapter merged into a converted model.

Exit status: 0 written, 2 bad input (one `error:` line, nothing written), 130 interrupted (Ctrl-C; SIGTERM exits
143): the staged output is removed either way.
"""
from __future__ import annotations

import argparse
import sys

from ..config.base import ConfigError
from ..io.errors import ConvertError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="telechat-ms merge-lora",
                                description="merge a LoRA adapter (PEFT format) into a converted model directory")
    p.add_argument("--base", required=True, help="converted model directory (hf2ms output or a training step)")
    p.add_argument("--adapter", required=True, help="PEFT adapter directory (adapter_config.json + "
                   "adapter_model.safetensors), e.g. a LoRA training step or one trained with peft")
    p.add_argument("--dst", required=True, help="output model directory (written atomically)")
    p.add_argument("--max-shard-size", default="4GB", help="safetensors shard size limit (default 4GB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --dst")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def merge_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .merge import merge_lora   # pylint: disable=import-outside-toplevel
    try:
        merged = merge_lora(args.base, args.adapter, args.dst, args.overwrite, args.max_shard_size, args.progress)
    except (ConfigError, ConvertError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"merged {len(merged)} LoRA weights into {args.dst}")
    return 0
