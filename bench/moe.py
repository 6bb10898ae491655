"""MoE layer forward+backward throughput on CPU: capacity dispatch vs a naive per-expert loop, chunks 1/2/4,
token groups 1/4.

    python bench/moe.py [--tokens 512] [--hidden 256] [--ffn 384] [--experts 16] [--topk 4] [--steps 10]

Prints tokens/s per variant and ratios to the capacity-based layer (graph mode, chunks 1, dropping).
The naive loop gathers each expert's tokens with a data-dependent count (nonzero) and scatter-adds the
weighted outputs back: the textbook formulation, which a static graph cannot express, so it runs in
PyNative; the capacity layer is also timed in PyNative for a like-for-like comparison.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from common import machine_facts, warn_if_busy
from telechat_ms.config.model import TelechatConfig
from telechat_ms.model.moe import MoE


class NaiveMoE(nn.Cell):
    """Per-expert loop over a MoE cell's parameters: gather routed tokens, SwiGLU, weighted scatter-add."""

    def __init__(self, moe: MoE):
        super().__init__()
        self.moe = moe      # shares router / expert parameters and the aux loss with the capacity layer

    def construct(self, x):
        bsz, seq, hidden = x.shape
        flat = x.reshape(bsz * seq, hidden)                                           # (N, H)
        logits, probs, weights, experts = self.moe.router(flat)                       # (N, E), (N, k)
        aux = self.moe.aux_loss(logits, probs, experts)
        ffn = self.moe.ffn
        out = ops.zeros_like(flat)
        for e in range(self.moe.num_experts):
            where = ops.nonzero(experts == e)                                          # (n_e, 2) [token, rank]
            tokens = where[:, 0]
            x_e = ops.gather(flat, tokens, 0)                                          # (n_e, H)
            h = ops.silu(ops.matmul(x_e, ffn.w1.weight[e].T)) * ops.matmul(x_e, ffn.w3.weight[e].T)
            y_e = ops.matmul(h, ffn.w2.weight[e].T) + ffn.w2.bias[e]                   # (n_e, H)
            w = ops.gather_nd(weights, where).reshape(-1, 1)                           # (n_e, 1)
            out = ops.index_add(out, tokens.astype(ms.int32), y_e * w, 0)
        return out.reshape(bsz, seq, hidden), aux                                      # (B, S, H)


class Objective(nn.Cell):
    """A scalar so forward+backward touches every output: mean(y^2) + aux."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def construct(self, x):
        y, aux = self.layer(x)
        return (y * y).mean() + aux


def make_step(layer, x, mode):
    """value_and_grad over the layer's parameters, compiled (graph) or eager (pynative); first call warms up."""
    ms.set_context(mode=mode)
    obj = Objective(layer)
    grad_fn = ms.value_and_grad(obj, None, obj.trainable_params())
    if mode == ms.GRAPH_MODE:
        grad_fn = ms.jit(grad_fn)
    grad_fn(x)[0].asnumpy()
    return grad_fn


def time_step(grad_fn, x, steps: int, mode) -> float:
    """Tokens/s of `steps` forward+backward calls (outputs synchronised at the end)."""
    ms.set_context(mode=mode)
    start = time.perf_counter()
    for _ in range(steps):
        loss, grads = grad_fn(x)
    loss.asnumpy()
    _ = [g.asnumpy() for g in grads]
    return steps * x.shape[0] * x.shape[1] / (time.perf_counter() - start)


def build(config, training: bool, state=None, groups: int = 1) -> MoE:
    cell = MoE(config, groups=groups)
    if state is not None:
        for p in cell.get_parameters():
            p.set_data(state[p.name].copy())
    cell.set_train(training)
    return cell


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512, help="batch 4 x tokens/4 sequence")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--ffn", type=int, default=384)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--topk", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats; the median is reported")
    args = parser.parse_args(argv)
    ms.set_device("CPU")
    ms.set_seed(0)
    config = TelechatConfig.preset("tiny_moe", hidden_size=args.hidden, ffn_hidden_size=args.ffn, num_heads=4,
                                   num_experts=args.experts, num_experts_per_tok=args.topk)
    x = ms.Tensor(np.random.default_rng(0).normal(0, 1, (4, args.tokens // 4, args.hidden)).astype(np.float32))
    state = {p.name: p.clone() for p in MoE(config).get_parameters()}
    variants = []   # (name, mode, grad_fn)

    def add(name, cfg, training, mode, naive=False, groups=1):
        layer = build(cfg, training, state, groups)
        variants.append((name, mode, make_step(NaiveMoE(layer) if naive else layer, x, mode)))

    print(machine_facts())
    print(f"N={args.tokens} tokens, H={args.hidden}, F={args.ffn}, E={args.experts}, k={args.topk}, "
          f"capacity factor {config.moe_capacity_factor}; forward+backward, median of {args.repeats} "
          f"interleaved repeats x {args.steps} steps", flush=True)
    for chunks in (1, 2, 4):
        add(f"capacity (dropping), graph, chunks {chunks}", dataclasses.replace(config, moe_chunks=chunks),
            True, ms.GRAPH_MODE)
    add("capacity (dropping), graph, groups 4", config, True, ms.GRAPH_MODE, groups=4)
    add("capacity dropless (C = N), graph", config, False, ms.GRAPH_MODE)
    add("capacity (dropping), pynative", config, True, ms.PYNATIVE_MODE)
    add("naive per-expert loop (dropless), pynative", config, False, ms.PYNATIVE_MODE, naive=True)
    add("naive per-expert loop (dropless), graph", config, False, ms.GRAPH_MODE, naive=True)
    # round-robin repeats: load changes on a shared machine then hit every variant alike
    rates = {name: [] for name, _, _ in variants}
    for _ in range(args.repeats):
        for name, mode, grad_fn in variants:
            rates[name].append(time_step(grad_fn, x, args.steps, mode))
    rows = [(name, float(np.median(r))) for name, r in rates.items()]
    for name, rate in rows:
        print(f"{name:<46s} {rate:10.0f} tokens/s   (min {min(rates[name]):.0f}, max {max(rates[name]):.0f})")
    base = rows[0][1]
    print("\nratio to 'capacity (dropping), graph, chunks 1':")
    for name, rate in rows:
        print(f"  {name:<46s} {rate / base:6.2f}x")
    _check_naive_matches(config, state, x)
    warn_if_busy()


def _check_naive_matches(config, state, x):
    """Sanity: in dropless eval the naive loop and the capacity layer compute the same function."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    layer = build(config, False, state)
    y, aux = layer(x)
    y_naive, aux_naive = NaiveMoE(layer)(x)
    print(f"\nnaive vs capacity (dropless): max |dy| = {np.abs(y.asnumpy() - y_naive.asnumpy()).max():.2e}, "
          f"|d aux| = {abs(float(aux.asnumpy()) - float(aux_naive.asnumpy())):.2e}")


if __name__ == "__main__":
    main()
