"""Command lines of the converters; convert/hf2ms.py, ms2hf.py, mf2ms.py and `telechat-ms convert` call these.

Each main(argv) returns an exit code: 0 on success, 2 on any invalid input (printed as `error: ...`).
"""
from __future__ import annotations

import argparse
import sys

from ..config.base import ConfigError
from ..families import all_families
from ..io.dtypes import OUTPUT_DTYPES
from ..io.errors import ConvertError, summarize
from .pipeline import FORMATS, convert_hf_to_ms, convert_mindformers_to_ms, convert_ms_to_hf


def _common(parser: argparse.ArgumentParser, formats: bool) -> None:
    parser.add_argument("--dst", required=True, help="output directory (written atomically)")
    parser.add_argument("--dtype", choices=OUTPUT_DTYPES, default=None,
                        help="cast every weight to this dtype (default: keep the stored dtype)")
    if formats:
        parser.add_argument("--format", dest="fmt", choices=FORMATS, default="safetensors",
                            help="sharded safetensors + index (default) or one .ckpt (mindformers workflow)")
    parser.add_argument("--max-shard-size", default="4GB", help="safetensors shard size limit (default 4GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --dst")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _family_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--family", default=None,
                        help=f"model family ({', '.join(f.name for f in all_families())}); default: {what}")


def _dequantize_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--dequantize", action="store_true",
                        help=f"{what}; fp32 arithmetic, one rounding to --dtype (docs/quantization.md)")


def _hf2ms_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf2ms", description="HF checkpoint (TeleChat2, TeleChat v1, "
                                     "TeleChat-52B, Tele-FLM, Aquila2, Llama-2, ...) -> telechat_ms MindSpore")
    parser.add_argument("--src", required=True, help="HF model directory (config.json + safetensors or .bin)")
    _family_option(parser, "detected from config.json and the tensor names")
    parser.add_argument("--no-check-finite", dest="check_finite", action="store_false",
                        help="skip the read of every weight that refuses NaN / Inf before writing (on by default)")
    _dequantize_option(parser, "GPTQ / AWQ source: write exact float weights (default: keep them int4 / int8)")
    _common(parser, formats=True)
    return parser


def _ms2hf_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ms2hf", description="telechat_ms MindSpore checkpoint -> HF checkpoint "
                                     "in the family's own layout")
    parser.add_argument("--src", required=True,
                        help="converted directory, a .ckpt / .safetensors training checkpoint, or a merged "
                             "distributed checkpoint directory")
    parser.add_argument("--config", help="model_config.yaml or HF config.json (needed when --src has none)")
    _family_option(parser, "model_config.yaml's; detected when --config is an HF config.json")
    parser.add_argument("--router-key", choices=("router", "gate"), default=None,
                        help="MoE router HF key mlp.<router|gate>.weight (default: as the hf2ms source had it, "
                             "else router)")
    _dequantize_option(parser, "quantized directory: write exact float weights (default: its GPTQ / AWQ format)")
    _common(parser, formats=False)
    return parser


def _mf2ms_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mf2ms", description="official mindformers TeleChat2 checkpoint -> "
                                                              "telechat_ms MindSpore")
    parser.add_argument("--src", required=True, help=".ckpt / .safetensors file or a directory of them")
    parser.add_argument("--config", help="model_config.yaml or the model's HF config.json (required unless --src "
                                         "is a directory with model_config.yaml)")
    _common(parser, formats=True)
    return parser


def _run(parser: argparse.ArgumentParser, argv, convert) -> int:
    try:
        args = vars(parser.parse_args(argv))
    except SystemExit as exc:            # --help or a usage error: argparse already printed it
        return int(exc.code or 0)
    try:
        report = convert(**args)
    except (ConvertError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:            # the staged output is already removed (telechat_ms/io/output.py)
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    if report.dropped:
        print(f"dropped {len(report.dropped)} non-model entries: {summarize(report.dropped)}")
    for note in report.notes:
        print(note)
    print(report.summary())
    return 0


def hf2ms_main(argv=None) -> int:
    return _run(_hf2ms_parser(), argv, lambda src, dst, **kw: convert_hf_to_ms(src, dst, **kw))


def ms2hf_main(argv=None) -> int:
    return _run(_ms2hf_parser(), argv, lambda src, dst, **kw: convert_ms_to_hf(src, dst, **kw))


def mf2ms_main(argv=None) -> int:
    return _run(_mf2ms_parser(), argv, lambda src, dst, **kw: convert_mindformers_to_ms(src, dst, **kw))


COMMANDS = {"hf2ms": hf2ms_main, "ms2hf": ms2hf_main, "mf2ms": mf2ms_main}


def main(argv=None) -> int:
    """`telechat-ms convert {hf2ms,ms2hf,mf2ms} ...`"""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: convert {{{','.join(COMMANDS)}}} [options]  (--help after a command for its options)",
              file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    return COMMANDS[argv[0]](argv[1:])
