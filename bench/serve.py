"""Loopback load test of `telechat-ms serve`: continuous batching vs one-at-a-time serving, same model.

Two server processes are started in turn on 127.0.0.1 (a free port each): `--max-batch 1` answering requests
sent one after another, then `--max-batch N` answering N concurrent clients. Every request is a greedy chat
completion of --tokens tokens (distinct questions). Reported per mode: requests/s, p50 / p99 latency, generated
tokens/s, plus the machine's cores and load average (the numbers are only comparable on an idle machine).

Bounded: --requests per mode, --time-limit seconds per mode (no new request after it), a per-request timeout;
the servers are always stopped. Loopback only. Not a test.
usage: python bench/serve.py [--model DIR] [--concurrency 4] [--requests 32] [--tokens 32] [--time-limit 120]
       (without --model a tiny random TeleChat2 checkpoint is made in a temp directory)
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _tiny_checkpoint(root: str, seq_length: int) -> str:
    for cmd in ([sys.executable, f"{REPO}/scripts/make_tiny_hf_checkpoint.py", f"{root}/hf", "--seq-length",
                 str(seq_length)],
                [sys.executable, f"{REPO}/convert/hf2ms.py", "--src", f"{root}/hf", "--dst", f"{root}/ms"]):
        subprocess.run(cmd, check=True, capture_output=True, cwd=root)
    return f"{root}/ms"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(port: int, body: dict, timeout: float) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data}")
        return data
    finally:
        conn.close()


class Server:
    """`telechat-ms serve` in a subprocess; stopped (SIGTERM, then kill) on exit."""

    def __init__(self, model: str, slots: int, max_len: int, log: str):
        self.port = _free_port()
        self.log = open(log, "w", encoding="utf-8")  # pylint: disable=consider-using-with
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [sys.executable, "-m", "telechat_ms.cli", "serve", "--model", model, "--served-model-name", "bench",
             "--port", str(self.port), "--max-batch", str(slots), "--max-len", str(max_len),
             "--log-level", "warning"], stdout=self.log, stderr=subprocess.STDOUT, cwd=os.path.dirname(log))

    def __enter__(self):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); see {self.log.name}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the server did not answer /health within 120 s")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _run_mode(port: int, concurrency: int, args) -> dict:
    """`concurrency` client threads take questions until --requests are sent or --time-limit passes."""
    latencies, tokens, errors = [], [0], []
    lock = threading.Lock()
    counter = iter(range(args.requests))
    deadline = time.monotonic() + args.time_limit

    def client():
        while time.monotonic() < deadline:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            body = {"model": "bench", "max_tokens": args.tokens, "temperature": 0,
                    "messages": [{"role": "user", "content": f"第{index}个问题：生抽与老抽的区别是什么？"}]}
            start = time.perf_counter()
            try:
                usage = _post(port, body, timeout=args.time_limit)["usage"]
            except (OSError, RuntimeError) as exc:
                with lock:
                    errors.append(str(exc))
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
                tokens[0] += usage["completion_tokens"]

    start = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.time_limit + 60)
    wall = time.perf_counter() - start
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")  # noqa: E731
    return {"requests": len(latencies), "errors": len(errors), "seconds": wall,
            "requests_per_s": len(latencies) / wall, "tokens_per_s": tokens[0] / wall,
            "p50": pick(0.50), "p99": pick(0.99), "first_error": errors[0] if errors else None}


def _warm_up(port: int, concurrency: int, tokens: int) -> None:
    """Compile the prefill and decode graphs before timing (one request, then a full batch at once)."""
    body = {"model": "bench", "max_tokens": min(tokens, 4), "temperature": 0,
            "messages": [{"role": "user", "content": "预热：生抽与老抽的区别是什么？"}]}
    _post(port, body, 600)
    threads = [threading.Thread(target=_post, args=(port, body, 600)) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="converted directory (default: a tiny random checkpoint)")
    parser.add_argument("--concurrency", type=int, default=4, help="slots and concurrent clients of the batched run")
    parser.add_argument("--requests", type=int, default=32, help="requests per mode")
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens of every request")
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per mode")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as root:
        model = args.model or _tiny_checkpoint(root, args.max_len)
        results = {}
        for name, slots in (("one at a time", 1), (f"batched x{args.concurrency}", args.concurrency)):
            with Server(model, slots, args.max_len, os.path.join(root, f"server_{slots}.log")) as server:
                _warm_up(server.port, slots, args.tokens)
                results[name] = _run_mode(server.port, slots, args)
    print(f"cores {os.cpu_count()}, load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
          f"{args.requests} requests x {args.tokens} tokens per mode, limit {args.time_limit:.0f} s")
    print(f"{'mode':16} {'done':>5} {'req/s':>7} {'tok/s':>8} {'p50 s':>7} {'p99 s':>7}")
    for name, r in results.items():
        print(f"{name:16} {r['requests']:5d} {r['requests_per_s']:7.2f} {r['tokens_per_s']:8.1f} {r['p50']:7.3f} "
              f"{r['p99']:7.3f}" + (f"  errors {r['errors']}: {r['first_error']}" if r["errors"] else ""))
    one, batched = results.values()
    if one["requests_per_s"] > 0:
        print(f"batched / one at a time: {batched['requests_per_s'] / one['requests_per_s']:.2f}x requests/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
