"""Activation memory of the training graph on CPU, measured, against the planner's plain-path model.

For each shape, two fresh processes compile and run forward + backward (GRAPH_MODE, fp32, batch 1, plain ops)
at the shape's sequence length and at 16 tokens; the difference of their peak RSS is the activation memory
(weights, gradients, runtime and compiled kernels cancel out). The planner's estimate is
telechat_ms.parallel.memory for one device with Workload(fused_kernels=False, activation_bytes=4,
flash_attention=False): the saved activations of every layer, the loss edge and the backward working set.
Peak RSS does not depend on machine load, so this runs on a busy machine too (slowly).
tests/test_perf_memory.py holds the figures this printed; re-run after a model change and update them.

Usage: python bench/activation_memory.py [--shapes A,B,C,D]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys

from common import machine_facts, peak_rss_bytes

# name: (layers, hidden, heads, kv heads, ffn, vocab, seq)
SHAPES = {"A": (4, 512, 8, 8, 1536, 8192, 512), "B": (2, 768, 12, 12, 2048, 8192, 1024),
          "C": (6, 256, 4, 2, 1024, 16384, 256), "D": (2, 512, 8, 8, 1536, 8192, 2048)}
BASE_SEQ = 16


def shape_config(layers, hidden, heads, kv_heads, ffn, vocab, seq):
    from telechat_ms import TelechatConfig
    return dataclasses.replace(TelechatConfig.preset("tiny"), num_layers=layers, hidden_size=hidden,
                               num_heads=heads, num_kv_heads=kv_heads, ffn_hidden_size=ffn, vocab_size=vocab,
                               training_seqlen=seq, base_seqlen=seq, seq_length=seq, compute_dtype="float32",
                               param_dtype="float32")


def _child(dims) -> int:
    import numpy as np
    import mindspore as ms
    from telechat_ms import TelechatForCausalLM
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    config = shape_config(*dims)
    model = TelechatForCausalLM(config)
    ids = ms.Tensor(np.random.default_rng(0).integers(0, config.vocab_size, (1, config.seq_length)).astype(np.int32))
    grad = ms.value_and_grad(model, None, model.trainable_params())
    for _ in range(2):                       # the second step shows any growth after the first
        grad(ids, ids)[0].asnumpy()
    print(f"PEAK {peak_rss_bytes()}")
    return 0


def _measure(dims) -> int:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *map(str, dims)],
                         capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("PEAK ")]
    if out.returncode or not lines:
        sys.stderr.write(out.stdout[-2000:] + out.stderr[-4000:])
        raise SystemExit(f"error: measuring {dims} failed (exit {out.returncode})")
    return int(lines[-1].split()[1])


def planner_bytes(dims) -> float:
    """Activations + loss edge of the single stage the planner sees for this shape on one device."""
    from telechat_ms.config.parallel import ParallelConfig
    from telechat_ms.parallel.memory import GB, Hardware, Workload, estimate_layout
    from telechat_ms.parallel.pipeline import layer_placements
    config, parallel = shape_config(*dims), ParallelConfig()
    work = Workload(seq_len=config.seq_length, micro_batch_size=1, flash_attention=False, fused_kernels=False,
                    activation_bytes=4)
    stage = estimate_layout(config, parallel, work, Hardware(), layer_placements(config.num_layers, parallel)).stages[0]
    return (stage.activations_gb + stage.edge_gb) * GB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated names of SHAPES")
    parser.add_argument("--child", nargs=7, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args.child)
    names = [n.strip() for n in args.shapes.split(",") if n.strip()]
    bad = [n for n in names if n not in SHAPES]
    if bad:
        print(f"error: --shapes: unknown {', '.join(bad)} (known: {', '.join(SHAPES)})", file=sys.stderr)
        return 2
    print(machine_facts())
    print(f"{'shape':5} {'layers/hidden/heads/kv/ffn/vocab/seq':38} {'measured MB':>12} "
          f"{'planner MB':>11} {'ratio':>6}")
    for name in names:
        dims = SHAPES[name]
        measured = _measure(dims) - _measure(dims[:-1] + (BASE_SEQ,))
        estimate = planner_bytes(dims)
        print(f"{name:5} {'/'.join(map(str, dims)):38} {measured / 1e6:12.1f} {estimate / 1e6:11.1f} "
              f"{estimate / measured:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
