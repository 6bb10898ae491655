"""Shared by the benchmarks: the model-shape flags, the pair of models (ours in GRAPH_MODE on CPU, the torch
reference) holding the same random weights, and the machine facts every benchmark prints with its ratios."""
from __future__ import annotations

import dataclasses
import os
import resource
import sys
from importlib import metadata

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

BUSY_LOAD = 1.5     # a 1-minute load average above this (on the 2-core CI machine) makes timings unreliable


def add_model_args(parser) -> None:
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=None, help="default: --heads (MHA)")
    parser.add_argument("--ffn", type=int, default=1536)
    parser.add_argument("--vocab", type=int, default=8192)


def machine_facts() -> str:
    """One line: cores, load average, versions -- printed by every benchmark next to its ratios."""
    load = os.getloadavg()
    versions = []
    for package in ("mindspore", "torch", "transformers"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"machine: {os.cpu_count()} cores ({usable} usable), load average {load[0]:.2f} / {load[1]:.2f} / "
            f"{load[2]:.2f} (1/5/15 min); {', '.join(versions)}")


def warn_if_busy() -> None:
    """Timings taken on a loaded machine are not comparable (docs/performance.md): say so after the table."""
    load = os.getloadavg()[0]
    if load > BUSY_LOAD:
        print(f"WARNING: load average {load:.2f} > {BUSY_LOAD}: other jobs share the CPU, throughput and compile "
              "times above are not valid figures (peak RSS is)")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bench_config(args, seq_len: int):
    """The TelechatConfig of the model-shape flags; NTK stays off up to seq_len."""
    from telechat_ms import TelechatConfig
    return dataclasses.replace(TelechatConfig.preset("tiny"), num_layers=args.layers, hidden_size=args.hidden,
                               num_heads=args.heads, num_kv_heads=args.kv_heads or args.heads,
                               ffn_hidden_size=args.ffn, vocab_size=args.vocab, training_seqlen=seq_len,
                               base_seqlen=seq_len, seq_length=seq_len)


def save_state(config, path: str) -> None:
    """Random HF-named weights (the test reference's generator) to an .npz both sides load."""
    import numpy as np
    from tests.reference.torch_telechat import random_hf_state
    np.savez(path, **random_hf_state(config, seed=0, std=0.02))


def load_state(path: str) -> dict:
    import numpy as np
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def build_pair(args, seq_len: int):
    """(config, ours, reference) for the flags of add_model_args."""
    import mindspore as ms
    import torch
    from tests.reference.ms_loading import ms_model_from_hf_state
    from tests.reference.torch_telechat import build_reference, random_hf_state

    torch.set_num_threads(os.cpu_count() or 1)
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    config = bench_config(args, seq_len)
    state = random_hf_state(config, seed=0, std=0.02)
    return config, ms_model_from_hf_state(config, state), build_reference(config, state)
