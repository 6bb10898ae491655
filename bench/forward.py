"""Forward and forward+backward tokens/s on CPU: telechat_ms (GRAPH_MODE) vs the HF-equivalent torch reference.

Same weights, same inputs, same machine, same run; prints the ratio ours / torch (> 1 means we are faster).
Not a test: numbers depend on the machine. Usage: python bench/forward.py [--layers 4 --hidden 512 --seq 512]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from common import add_model_args, build_pair, machine_facts, round_medians, warn_if_busy


def _timeit(fn, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def _alternate(ours, ref, repeat: int, rounds: int) -> list[tuple[float, float]]:
    """Seconds per call of each side, `rounds` times, ours and torch alternating (a slow spell of the machine then
    hits both sides, and the spread of the per-round ratios shows it)."""
    ours(), ref()                                              # warm-up (and graph compile for ours)
    return [(_timeit(ours, repeat), _timeit(ref, repeat)) for _ in range(rounds)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_model_args(parser)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5, help="calls per timing")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timings of each side")
    args = parser.parse_args()

    import mindspore as ms
    import torch
    from tests.reference.torch_telechat import reference_forward

    config, ours, ref = build_pair(args, args.seq)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (args.batch, args.seq)).astype(np.int32)
    ms_ids = ms.Tensor(ids)
    grad_fn = ms.value_and_grad(ours, grad_position=None, weights=ours.trainable_params())

    def torch_fwd():
        with torch.no_grad():
            reference_forward(ref, ids)

    def torch_fwd_bwd():
        ref.zero_grad(set_to_none=True)
        reference_forward(ref, ids, labels=ids).loss.backward()

    results = {
        "forward": _alternate(lambda: ours(ms_ids).asnumpy(), torch_fwd, args.repeat, args.rounds),
        "forward+backward": _alternate(lambda: grad_fn(ms_ids, ms_ids)[0].asnumpy(), torch_fwd_bwd, args.repeat,
                                       args.rounds),
    }
    tokens = args.batch * args.seq
    print(machine_facts())
    print(f"config: {args.layers} layers, hidden {args.hidden}, heads {args.heads}, ffn {args.ffn}, vocab {args.vocab}, "
          f"batch {args.batch} x seq {args.seq}, fp32, {os.cpu_count()} CPU threads; {args.rounds} alternating rounds "
          f"of {args.repeat} calls")
    print(f"{'pass':18} {'ours tok/s':>11} {'torch tok/s':>12} {'ratio':>7} {'ratio min-max':>14}")
    for name, timings in results.items():
        t_ours, t_ref, low, high = round_medians(timings)
        print(f"{name:18} {tokens / t_ours:11.1f} {tokens / t_ref:12.1f} {t_ref / t_ours:6.2f}x {low:6.2f}-{high:.2f}x")
    warn_if_busy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
