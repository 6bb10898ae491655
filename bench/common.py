"""Shared by the benchmarks: the model-shape flags, the pair of models (ours in GRAPH_MODE on CPU, the torch
reference) holding the same random weights, and the machine facts every benchmark prints with its ratios."""
from __future__ import annotations

import dataclasses
import os
import resource
import sys
import time
from importlib import metadata

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from telechat_ms.runtime import HOST_BLOCKING_RUN, host_dispatch_for  # noqa: E402

# what every CPU entry point of the package does, before MindSpore is used (telechat_ms/runtime.py)
host_dispatch_for("CPU")

# CPU time other processes may take during a benchmark (in cores, averaged over the run) before its timings
# are called invalid; the load average cannot tell, it counts the benchmark's own threads
BUSY_CORES = 0.2


def _machine_busy_s() -> float:
    """CPU seconds all processes of the machine have been busy since boot (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    idle = ticks[3] + ticks[4]                                  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def _own_busy_s() -> float:
    """CPU seconds of this process and its finished children (each benchmark side runs in one)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


_START = (time.monotonic(), _machine_busy_s(), _own_busy_s())


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
            f"{load[2]:.2f} (1/5/15 min); {', '.join(versions)}; {HOST_BLOCKING_RUN}="
            f"{os.environ.get(HOST_BLOCKING_RUN)}")


def other_load() -> float:
    """Cores other processes kept busy on average since this benchmark started."""
    wall, machine, own = time.monotonic() - _START[0], _machine_busy_s() - _START[1], _own_busy_s() - _START[2]
    return max(machine - own, 0.0) / max(wall, 1e-9)


def warn_if_busy() -> None:
    """Timings taken while other jobs ran are not comparable (docs/performance.md): print the CPU other processes
    used during this run, and a warning above BUSY_CORES."""
    other = other_load()
    print(f"other processes during this run: {other:.2f} cores on average")
    if other > BUSY_CORES:
        print(f"WARNING: other processes used {other:.2f} cores > {BUSY_CORES} during this run: throughput and "
              "compile times above are not valid figures (peak RSS is)")


def round_medians(rounds) -> tuple[float, float, float, float]:
    """(ours, reference) seconds per alternating round -> (median ours, median reference, lowest and highest
    per-round ratio reference / ours)."""
    import numpy as np
    ratios = [ref / ours for ours, ref in rounds]
    return (float(np.median([ours for ours, _ in rounds])), float(np.median([ref for _, ref in rounds])),
            min(ratios), max(ratios))


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
