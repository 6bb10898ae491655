"""`telechat-ms chat` / scripts/run_predict.py: prompts, jsonl batches or an interactive chat.

Exit status: 0 done, 2 bad input (one `error:` line), 130 --prompt / --input interrupted (Ctrl-C or SIGTERM;
nothing is written). --interactive: Ctrl-C during an answer stops that answer; Ctrl-C, Ctrl-D or /exit at the
prompt end the chat with 0.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys

from ..config.base import ConfigError, atomic_write_text, output_path_problems
from ..config.generation import GenerationConfig
from ..io.errors import ConvertError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="telechat-ms chat", description="Chat with / generate from a converted model.")
    p.add_argument("--model", required=True, help="converted directory (convert/hf2ms.py output)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="one user message")
    src.add_argument("--input", help='jsonl: one {"prompt": ...} or {"messages": [...]} per line')
    p.add_argument("--output", help="jsonl answers for --input (default: stdout); an existing file is refused")
    p.add_argument("--overwrite", action="store_true", help="let --output replace an existing file")
    p.add_argument("--interactive", action="store_true", help="chat in the terminal, keeping the history")
    p.add_argument("--system", help="system prompt (default: the TeleChat2 default)")
    p.add_argument("--chat-template", help="built-in template name or jinja file (default: the checkpoint's "
                   "chat_template, else the model family's default; names in docs/data.md)")
    p.add_argument("--template", choices=("chat", "mindformers"), default=None,
                   help="TeleChat2 shorthand: chat = the official template, mindformers = the MindFormers SFT layout")
    p.add_argument("--tokenizer", help="tokenizer file or dir (default: the model dir)")
    p.add_argument("--tokenizer-kind", choices=("telechat2", "sentencepiece", "hf", "auto"), default=None,
                   help="default: the model family's kind")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--max-length", type=int,
                   help="KV cache size = prompt + answer tokens (default: the model's seq_length)")
    p.add_argument("--do-sample", action="store_true", default=None)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-stream", action="store_true")
    p.add_argument("--device-target", choices=("CPU", "Ascend", "GPU"), default="CPU")
    p.add_argument("--mode", choices=("graph", "pynative"), default="graph")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (launch with msrun, one worker per rank)")
    p.add_argument("--tools", help="JSON file: a list of OpenAI tool descriptions rendered by the chat template; the "
                   "answer's <tool_call> blocks are printed as `tool_call: {...}` lines (--interactive: answer "
                   "with `/tool RESULT`)")
    # LoRA (issue 12): the adapter's layers wrap the base linears; nothing is merged (docs/training.md)
    p.add_argument("--adapter", help="LoRA adapter directory (PEFT format, e.g. a LoRA training step) applied to "
                   "--model without merging")
    return p


def check_args(args) -> None:
    """Refuse impossible flags before anything is loaded (a 0 is never "the default")."""
    bad = [f"--{name.replace('_', '-')} must be >= 1, got {value}"
           for name in ("max_length", "tp") if (value := getattr(args, name)) is not None and value < 1]
    if args.adapter and args.tp > 1:
        bad.append("--adapter is single-device; with --tp merge it first (telechat-ms merge-lora)")
    elif args.adapter and not os.path.isfile(os.path.join(args.adapter, "adapter_config.json")):
        bad.append(f"--adapter {args.adapter}: no adapter_config.json (expected a PEFT LoRA adapter directory)")
    if args.template and args.chat_template:
        bad.append("--template and --chat-template both name a template: pass one")
    if args.tools and args.input:
        bad.append("--tools is for --prompt / --interactive")
    elif args.tools:
        try:
            _read_tools(args.tools)
        except ConfigError as exc:
            bad.append(str(exc))
    if args.output and not args.input:
        bad.append("--output is for --input (answers to --prompt / --interactive go to stdout)")
    elif args.output:
        bad += output_path_problems("--output", args.output, args.overwrite)
    if bad:
        raise ConfigError("; ".join(bad))


def _write_output(path: str, text: str, overwrite: bool) -> None:
    """Atomic (temp file + rename); checked again here: the file may have appeared during generation."""
    if os.path.lexists(path) and not overwrite:
        raise ConfigError(f"--output {path} already exists; pass --overwrite to replace it")
    try:
        atomic_write_text(path, text)
    except OSError as exc:          # read-only or full disk: the temp file is removed, `path` untouched
        raise ConfigError(f"--output {path}: cannot write: {exc.strerror or exc}") from None


def _warn_if_cut(result, row: int, max_new_tokens: int, prompt: str, max_length: int, where: str = "") -> None:
    """The KV cache (prompt + answer <= max_length) ended the answer before max_new_tokens: say so on stderr
    (the answer is still printed / written; a warning, not an error: most answers end well before the cap)."""
    got = len(result.tokens[row])
    if result.stop_reason[row] == "length" and got < max_new_tokens:
        print(f"warning: {where}answer cut at {got} of --max-new-tokens {max_new_tokens} tokens: {prompt} and the "
              f"answer must fit --max-length {max_length} (the KV cache size); raise --max-length or shorten the "
              "prompt", file=sys.stderr)


def generation_config(args, model_config=None) -> GenerationConfig:
    """generation_config.json of the model dir (if any; else eos from the model config), then command-line
    overrides; the model family's stop strings (e.g. Aquila2's [UNK], </s>) come before --stop."""
    path = os.path.join(args.model, "generation_config.json")
    if os.path.isfile(path):
        config = GenerationConfig.from_json(path)
    else:
        config = GenerationConfig() if model_config is None else GenerationConfig(
            eos_token_id=[model_config.eos_token_id])
    stops = list(_family(model_config).stop_strings) if model_config is not None else []
    stops += list(args.stop or config.stop_strings or [])
    overrides = {k: v for k, v in dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                       repetition_penalty=args.repetition_penalty, stop_strings=stops or None,
                                       seed=args.seed).items() if v is not None}
    return dataclasses.replace(config, **overrides)


def _family(model_config):
    from ..families import get   # pylint: disable=import-outside-toplevel
    return get(model_config.family)


def chat_template(args, model_config):
    """--chat-template / --template, else the checkpoint's chat_template, else the family default."""
    from ..data.chat_template import resolve_template   # pylint: disable=import-outside-toplevel
    name = args.chat_template or args.template
    return resolve_template(name, tokenizer_dir=args.tokenizer or args.model,
                            default=_family(model_config).default_template)


def _load(args):
    from ..data.tokenizer import load_tokenizer
    from ..model import Kernels, TelechatForCausalLM
    from ..runtime import set_up
    set_up(args.device_target, args.mode)
    kernels = Kernels.for_device(args.device_target)
    if args.tp > 1:
        from .tp import load_tensor_parallel
        model = load_tensor_parallel(args.model, args.tp, kernels)
    else:
        model = TelechatForCausalLM.from_pretrained(args.model, kernels)
        if args.adapter:
            from ..lora import load_adapter
            load_adapter(model, args.adapter)
    model.set_train(False)
    kind = args.tokenizer_kind or _family(model.config).tokenizer_kind
    return model, load_tokenizer(args.tokenizer or args.model, kind=None if kind == "auto" else kind)


def _is_lead(model) -> bool:
    """Rank 0 of a tensor-parallel job (or the only process) prints and writes; the other ranks compute."""
    return getattr(model, "tp_rank", 0) == 0


def _report(result, out) -> None:
    print(f"[prefill {result.prompt_tokens} tokens: {result.prefill_tokens_per_s:.1f} tokens/s | decode "
          f"{result.decode_steps} steps: {result.decode_tokens_per_s:.1f} tokens/s]", file=out)


def _run_batch(args, model, tokenizer, config) -> int:
    from ..data.chat_template import render_ids
    from .chat import complete
    template = chat_template(args, model.config)
    rows, prompts, linenos = [], [], []
    with open(args.input, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                messages = row["messages"] if "messages" in row else [{"role": "user", "content": row["prompt"]}]
                if messages[0].get("role") != "system" and args.system:
                    messages = [{"role": "system", "content": args.system}] + messages
                prompts.append(render_ids(tokenizer, messages, template, add_generation_prompt=True))
            except (json.JSONDecodeError, KeyError, TypeError, IndexError, ConfigError) as exc:
                raise ConfigError(f"{args.input}:{lineno}: expected {{\"prompt\": str}} or {{\"messages\": "
                                  f"[...]}}: {exc}") from None
            rows.append(row)
            linenos.append(lineno)
    if not prompts:
        raise ConfigError(f"{args.input}: no prompts")
    max_length = model.config.seq_length if args.max_length is None else args.max_length
    answers, result = complete(model, tokenizer, prompts, config, max_length)
    if not _is_lead(model):
        return 0
    longest = max(map(len, prompts))       # left padding: every row of the batch has the room of the longest
    for row, lineno in enumerate(linenos):
        _warn_if_cut(result, row, config.max_new_tokens, f"the batch's longest prompt ({longest} tokens)",
                     max_length, f"{args.input}:{lineno}: ")
    text = "".join(json.dumps({**row, "answer": ans}, ensure_ascii=False) + "\n" for row, ans in zip(rows, answers))
    if args.output:
        _write_output(args.output, text, args.overwrite)
    else:
        sys.stdout.write(text)
    _report(result, sys.stderr)
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def _interruptible():
    """Ctrl-C must reach Python as KeyboardInterrupt. MindSpore's graph runtime installs, at every graph run, a
    C SIGINT handler that sends the process SIGTERM (mindspore DefaultIntHandler), so SIGTERM is taken as
    Ctrl-C while the command runs (and therefore also stops only the current answer in --interactive)."""
    old_term, old_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)   # also takes SIGINT back from MindSpore's C handler


def _read_question() -> str | None:
    """The next interactive question; None ends the chat: /exit, EOF (Ctrl-D) or Ctrl-C at the prompt."""
    signal.signal(signal.SIGINT, signal.default_int_handler)    # no graph runs here: Python's handler stays
    try:
        question = input("\nuser> ")
    except (EOFError, KeyboardInterrupt):
        print()                                 # leave the terminal on a fresh line
        return None
    return None if question.strip() in ("/exit", "/quit") else question


def _read_tools(path: str | None) -> list | None:
    """--tools: a JSON list of tool descriptions (OpenAI `{"type": "function", "function": {...}}`)."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            tools = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--tools {path}: cannot read a JSON list of tools: {exc}") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise ConfigError(f"--tools {path}: expected a JSON list of tool objects")
    return tools


def _print_tool_calls(session) -> None:
    """The parsed calls of the last answer (serve/tools.py); an invalid block stays in the printed text."""
    for call in session.last_tool_calls:
        print("tool_call: " + json.dumps({"name": call.name, "arguments": json.loads(call.arguments)},
                                         ensure_ascii=False))
    if session.last_tool_error:
        print(f"warning: invalid tool call, printed as text: {session.last_tool_error}", file=sys.stderr)


def _run_chat(args, model, tokenizer, config) -> int:
    from .chat import ChatSession
    session = ChatSession(model, tokenizer, config, system=args.system, max_length=args.max_length,
                          template=chat_template(args, model.config), tools=_read_tools(args.tools))
    lead = _is_lead(model)
    # with tools the answer is printed once parsed: streamed text would show the raw <tool_call> blocks
    stream = None if args.no_stream or args.tools or not lead else (lambda t: print(t, end="", flush=True))
    questions = [args.prompt] if args.prompt else None
    while True:
        if questions is not None:
            if not questions:
                return 0
            question = questions.pop(0)
        elif (question := _read_question()) is None:
            return 0
        kept = len(session.messages)
        role = "tool" if session.tools and question.startswith("/tool ") else "user"
        try:
            answer, result = session.ask(question[len("/tool "):] if role == "tool" else question, stream, role)
            if lead:
                print("" if stream else answer or "")
                _print_tool_calls(session)
                _report(result, sys.stderr)
                _warn_if_cut(result, 0, config.max_new_tokens, f"the prompt with the conversation so far "
                             f"({result.prompt_tokens} tokens)", session.max_length)
        except KeyboardInterrupt:
            if questions is not None:           # --prompt: Ctrl-C ends the run (main reports it)
                raise
            # Ctrl-C during an answer stops that answer only; a turn is kept whole or not at all
            del session.messages[kept:]
            print("\n[answer interrupted; this question is not kept in the conversation]", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.prompt or args.input or args.interactive):
        print("error: give --prompt, --input or --interactive", file=sys.stderr)
        return 2
    if args.interactive and args.tp > 1:
        # every rank must run the same steps, but only one process can read the terminal
        print("error: --interactive is single-process; with --tp use --prompt or --input", file=sys.stderr)
        return 2
    try:
        check_args(args)
        from ..io.checkpoint import read_config   # pylint: disable=import-outside-toplevel
        config = generation_config(args, read_config(args.model))
        with _interruptible():
            model, tokenizer = _load(args)
            if args.input:
                return _run_batch(args, model, tokenizer, config)
            return _run_chat(args, model, tokenizer, config)
    except (ConfigError, ConvertError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:                   # Ctrl-C or SIGTERM; --output is written only at the end
        print("interrupted", file=sys.stderr)
        return 130
