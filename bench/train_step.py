"""Training step (forward + backward + AdamW) on CPU: telechat_ms (GRAPH_MODE, the native training step of
telechat_ms/train/step.py) vs the HF-equivalent torch reference (torch.optim.AdamW), same weights, same inputs.

Prints tokens/s, the compile time of the first step (first step minus a steady step), the peak RSS of each
side's process, and the ratios ours / torch. Each side runs in its own fresh process (so one side's imports
and allocator do not count against the other), one after the other. Not a test: numbers depend on the machine.

Usage: python bench/train_step.py [--layers 4 --hidden 512 --seq 512 --steps 6] [--only ours|torch]
       python bench/train_step.py --layers 2 --only ours       # peak RSS of one shape (for the planner check)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import add_model_args, bench_config, load_state, machine_facts, peak_rss_bytes, save_state, warn_if_busy

GB = 1e9


def _ours(args, state, ids) -> dict:
    import mindspore as ms
    from telechat_ms.config.train import OptimizerConfig
    from telechat_ms.train.optim import AdamW
    from telechat_ms.train.step import build_steps
    from tests.reference.ms_loading import ms_model_from_hf_state

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    config = bench_config(args, args.seq)
    model = ms_model_from_hf_state(config, state)
    del state
    model.set_train(True)
    run = build_steps(model, AdamW(model.trainable_params(), OptimizerConfig()), 1.0, 1)
    batch = (ms.Tensor(ids), ms.Tensor(ids), None, None)
    return _time_steps(lambda: run([batch], 1.0, 1e-4)[0], args.steps)


def _torch(args, state, ids) -> dict:
    import torch
    from tests.reference.torch_telechat import build_reference, reference_forward

    torch.set_num_threads(os.cpu_count() or 1)
    config = bench_config(args, args.seq)
    ref = build_reference(config, state)
    del state
    ref.train()
    optimizer = torch.optim.AdamW(ref.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = reference_forward(ref, ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        optimizer.step()
        return float(loss.detach())
    return _time_steps(step, args.steps)


def _time_steps(step, steps: int) -> dict:
    start = time.perf_counter()
    first_loss = step()                                   # ours: graph compile + one step
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    steady = float(np.median(times))
    return {"first_s": first, "step_s": steady, "step_min_s": min(times), "step_max_s": max(times),
            "compile_s": max(first - steady, 0.0), "first_loss": first_loss, "peak_rss": peak_rss_bytes()}


def _child(args) -> int:
    state = load_state(args.state)
    ids = np.load(args.ids)
    result = (_ours if args.side == "ours" else _torch)(args, state, ids)
    print("RESULT " + json.dumps(result))
    return 0


def _run_side(side: str, args, state_path: str, ids_path: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--state", state_path, "--ids", ids_path,
           "--steps", str(args.steps), "--seq", str(args.seq), "--batch", str(args.batch), "--layers", str(args.layers),
           "--hidden", str(args.hidden), "--heads", str(args.heads), "--ffn", str(args.ffn), "--vocab", str(args.vocab)]
    if args.kv_heads:
        cmd += ["--kv-heads", str(args.kv_heads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        sys.stderr.write(out.stdout[-2000:] + out.stderr[-4000:])
        raise SystemExit(f"error: the {side} side failed (exit {out.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6, help="timed steps after the first (compiling) one")
    parser.add_argument("--only", choices=("ours", "torch"), default=None)
    parser.add_argument("--side", choices=("ours", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return _child(args)

    print(machine_facts())
    config = bench_config(args, args.seq)
    sides = [args.only] if args.only else ["ours", "torch"]
    with tempfile.TemporaryDirectory() as tmp:
        state_path, ids_path = os.path.join(tmp, "state.npz"), os.path.join(tmp, "ids.npy")
        save_state(config, state_path)
        rng = np.random.default_rng(0)
        np.save(ids_path, rng.integers(0, config.vocab_size, (args.batch, args.seq)).astype(np.int32))
        results = {side: _run_side(side, args, state_path, ids_path) for side in sides}
    tokens = args.batch * args.seq
    print(f"config: {args.layers} layers, hidden {args.hidden}, heads {config.num_heads}/{config.num_kv_heads} kv, "
          f"ffn {args.ffn}, vocab {args.vocab}, batch {args.batch} x seq {args.seq}, fp32; "
          f"step = forward + backward + clip + AdamW, median of {args.steps}")
    print(f"{'side':6} {'tok/s':>8} {'step s (min-max)':>20} {'compile s':>10} {'peak RSS GB':>12} {'first loss':>11}")
    for side, r in results.items():
        spread = f"{r['step_s']:.3f} ({r['step_min_s']:.3f}-{r['step_max_s']:.3f})"
        print(f"{side:6} {tokens / r['step_s']:8.1f} {spread:>20} {r['compile_s']:10.2f} "
              f"{r['peak_rss'] / GB:12.3f} {r['first_loss']:11.5f}")
    if len(results) == 2:
        ours, ref = results["ours"], results["torch"]
        print(f"ratio ours/torch: throughput {ref['step_s'] / ours['step_s']:.2f}x, "
              f"peak RSS {ours['peak_rss'] / ref['peak_rss']:.2f}x")
    warn_if_busy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
