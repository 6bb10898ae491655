"""`telechat-ms serve`: an OpenAI-compatible HTTP server for a converted model directory (docs/serving.md).

Exit status: 0 after a clean shutdown (Ctrl-C / SIGTERM), 2 bad input (one `error:` line: flags, model
directory, tokenizer, a port that cannot be bound).
"""
from __future__ import annotations

import argparse
import os
import socket
import sys

from ..config.base import ConfigError
from ..io.errors import ConvertError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="telechat-ms serve", description="OpenAI-compatible HTTP API for a converted "
                                "model: /v1/chat/completions, /v1/completions, /v1/models, /health")
    p.add_argument("--model", required=True, help="converted directory (convert/hf2ms.py output)")
    p.add_argument("--adapter", help="LoRA adapter directory (PEFT format, e.g. a LoRA training step) applied to "
                   "--model without merging")
    p.add_argument("--served-model-name", help="the model id clients send (default: the directory's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=4, help="KV-cache slots = sequences decoded together")
    p.add_argument("--max-len", type=int, help="tokens per slot, prompt + answer (default: the model's seq_length)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot before 503")
    p.add_argument("--prefill-chunk", type=int, default=256, help="prompt tokens per slot and step")
    p.add_argument("--device-target", choices=("CPU", "Ascend", "GPU"), default="CPU")
    p.add_argument("--mode", choices=("graph", "pynative"), default="graph")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    return p


def check_args(args) -> None:
    """Refuse impossible flags before anything is loaded."""
    bad = [f"--{name.replace('_', '-')} must be >= 1, got {value}"
           for name in ("max_batch", "max_len", "prefill_chunk") if (value := getattr(args, name)) is not None
           and value < 1]
    if args.max_queue < 0:
        bad.append(f"--max-queue must be >= 0, got {args.max_queue}")
    if not 0 <= args.port <= 65535:
        bad.append(f"--port must be in 0..65535, got {args.port}")
    if args.adapter and not os.path.isfile(os.path.join(args.adapter, "adapter_config.json")):
        bad.append(f"--adapter {args.adapter}: no adapter_config.json (expected a PEFT LoRA adapter directory)")
    if bad:
        raise ConfigError("; ".join(bad))


def bind(host: str, port: int) -> socket.socket:
    """Bind before loading the model: a busy port is one error line, not a traceback after minutes of loading."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise ConfigError(f"--host {host} --port {port}: cannot listen: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        sock = bind(args.host, args.port)
        import uvicorn  # pylint: disable=import-outside-toplevel
        from .app import create_app  # pylint: disable=import-outside-toplevel
        from .scheduler import Engine  # pylint: disable=import-outside-toplevel
        from .served import load_served  # pylint: disable=import-outside-toplevel
        from ..runtime import set_up  # pylint: disable=import-outside-toplevel
        set_up(args.device_target, args.mode)
        served = load_served(args.model, args.served_model_name, args.max_len, args.device_target, args.adapter)
        engine = Engine(served.model, served.tokenizer, args.max_batch, served.max_len, args.max_queue,
                        args.prefill_chunk)
    except (ConfigError, ConvertError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    print(f"serving {served.name} ({served.family.name}, {args.max_batch} slots x {served.max_len} tokens) on "
          f"http://{host}:{port}/v1", file=sys.stderr, flush=True)
    config = uvicorn.Config(create_app(served, engine), log_level=args.log_level, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
