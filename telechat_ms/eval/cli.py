"""`telechat-ms eval`: perplexity of a converted model on a text / jsonl file, or lm-evaluation-harness tasks.

    telechat-ms eval --model DIR --data wiki.txt --max-length 2048 --stride 512 --batch-size 4 --output ppl.json
    telechat-ms eval --model DIR --tasks ceval-valid,cmmlu --batch-size 8 --output results.json   # needs .[eval]

Exit codes: 0 ok, 2 bad input (one `error:` line; nothing written), 130 interrupted (nothing written).
The report is written once at the end, atomically (temp file + rename); an existing file needs --overwrite.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..config.base import ConfigError, atomic_write_text, output_path_problems
from ..io.errors import ConvertError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="telechat-ms eval", description="Perplexity (--data) or lm-evaluation-harness "
                                "tasks (--tasks) of a converted model (docs/evaluation.md)")
    p.add_argument("--model", required=True, help="converted directory (convert/hf2ms.py output or a training step)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", help=".txt (one document) or .jsonl (a text field, 'messages' or SFT rows per line)")
    what.add_argument("--tasks", help="comma-separated lm-evaluation-harness tasks (pip install -e .[eval])")
    p.add_argument("--max-length", type=int, help="tokens per window / request (default: the model's seq_length)")
    p.add_argument("--stride", type=int, help="perplexity: a window starts every STRIDE tokens (default: "
                   "--max-length, disjoint windows)")
    p.add_argument("--batch-size", type=int, default=1, help="rows per forward pass")
    p.add_argument("--pad-multiple", type=int, default=64, help="pad rows to a multiple of this many tokens "
                   "(fewer graph compiles; never changes the numbers)")
    p.add_argument("--text-key", default="text", help="jsonl field holding the text (default: text)")
    p.add_argument("--answers-only", action="store_true", help="chat rows: count only the assistant answers "
                   "(the tokens SFT trains on; perplexity = exp of the SFT loss)")
    p.add_argument("--chat-template", help="template for chat rows: built-in name or jinja file (default: the "
                   "checkpoint's, else the family's)")
    p.add_argument("--tokenizer", help="tokenizer file or directory (default: the model directory)")
    p.add_argument("--num-fewshot", type=int, help="--tasks: few-shot examples")
    p.add_argument("--limit", type=float, help="--tasks: examples per task (a fraction if < 1)")
    p.add_argument("--include-path", help="--tasks: directory of extra task yamls")
    p.add_argument("--max-gen-toks", type=int, default=256, help="--tasks: generate_until default length")
    p.add_argument("--output", help="JSON report (default: print only the summary)")
    p.add_argument("--overwrite", action="store_true", help="let --output replace an existing file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--device-target", choices=("CPU", "Ascend", "GPU"), default="CPU")
    p.add_argument("--mode", choices=("graph", "pynative"), default="graph")
    return p


def check_args(args) -> None:
    """Refuse impossible flags before the model is loaded."""
    bad = [f"--{name.replace('_', '-')} must be >= {low}, got {value}"
           for name, low in (("max_length", 2), ("stride", 1), ("batch_size", 1), ("pad_multiple", 1),
                             ("max_gen_toks", 1))
           if (value := getattr(args, name)) is not None and value < low]
    if args.stride is not None and args.max_length is not None and args.stride > args.max_length:
        bad.append(f"--stride {args.stride} must not exceed --max-length {args.max_length}")
    if args.data and not os.path.isfile(args.data):
        bad.append(f"--data {args.data}: no such file")
    if args.data and not args.data.endswith((".txt", ".jsonl")):
        bad.append(f"--data {args.data}: expected a .txt or .jsonl file")
    if args.output:
        bad += output_path_problems("--output", args.output, args.overwrite)
    if bad:
        raise ConfigError("; ".join(bad))


def load_for_eval(model_dir: str, device_target: str = "CPU", mode: str = "graph", tokenizer: str | None = None):
    """(model in eval mode, tokenizer) of a converted directory, any family."""
    from ..data.tokenizer import load_tokenizer   # pylint: disable=import-outside-toplevel
    from ..infer.chat import check_tokenizer_fits   # pylint: disable=import-outside-toplevel
    from ..model import Kernels, TelechatForCausalLM   # pylint: disable=import-outside-toplevel
    from ..runtime import set_up   # pylint: disable=import-outside-toplevel
    set_up(device_target, mode)
    model = TelechatForCausalLM.from_pretrained(model_dir, Kernels.for_device(device_target))
    model.set_train(False)
    tok = load_tokenizer(tokenizer or model_dir)
    check_tokenizer_fits(tok, model.config)
    return model, tok


def _template(args, model):
    from ..data.chat_template import resolve_template   # pylint: disable=import-outside-toplevel
    from ..families import get   # pylint: disable=import-outside-toplevel
    return resolve_template(args.chat_template, tokenizer_dir=args.tokenizer or args.model,
                            default=get(model.config.family).default_template)


def _run_perplexity(args) -> int:
    from .perplexity import perplexity, read_documents   # pylint: disable=import-outside-toplevel
    from .scoring import TokenScorer   # pylint: disable=import-outside-toplevel
    model, tokenizer = load_for_eval(args.model, args.device_target, args.mode, args.tokenizer)
    max_length = args.max_length or model.config.seq_length
    if args.stride is not None and args.stride > max_length:
        raise ConfigError(f"--stride {args.stride} must not exceed the window length {max_length}")
    documents, masks = read_documents(args.data, tokenizer, args.text_key, _template(args, model), args.answers_only)
    scorer = TokenScorer(model, args.batch_size, args.pad_multiple)
    report = perplexity(scorer, documents, max_length, args.stride, not args.no_progress, masks)
    report.answers_only = args.answers_only
    report.model, report.data = args.model, args.data
    if args.output:
        _write(args.output, report.to_json(), args.overwrite)
    print(report.summary(), flush=True)
    return 0


def _run_tasks(args) -> int:
    try:
        from .harness import run_tasks   # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        raise ConfigError(f"--tasks needs lm-evaluation-harness ({exc}); install it with "
                          "`pip install -e .[eval]`") from None
    results = run_tasks(args.model, [t for t in args.tasks.split(",") if t], batch_size=args.batch_size,
                        max_length=args.max_length, num_fewshot=args.num_fewshot, limit=args.limit,
                        include_path=args.include_path, device_target=args.device_target, mode=args.mode,
                        tokenizer=args.tokenizer, max_gen_toks=args.max_gen_toks,
                        pad_multiple=args.pad_multiple, progress=not args.no_progress)
    if args.output:
        _write(args.output, json.dumps(results, ensure_ascii=False, indent=2, default=str) + "\n", args.overwrite)
    for task, metrics in sorted(results.get("results", {}).items()):
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        print(f"{task}: {shown}", flush=True)
    return 0


def _write(path: str, text: str, overwrite: bool) -> None:
    if os.path.lexists(path) and not overwrite:     # may have appeared while we evaluated
        raise ConfigError(f"--output {path} already exists; pass --overwrite to replace it")
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise ConfigError(f"--output {path}: cannot write: {exc.strerror or exc}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        return _run_tasks(args) if args.tasks else _run_perplexity(args)
    except (ConfigError, ConvertError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
