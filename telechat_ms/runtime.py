"""Process-wide MindSpore set-up shared by every entry point (forward, chat, eval, serve, train, both engines).

Host dispatch on CPU: by default MindSpore hands graph launches and eager ops to a worker thread
("frontend_queue") and the calling Python thread waits for it in a busy loop (runtime::AsyncRQueue::Wait), while
the worker spins on sched_yield between tasks. On the 2-core CPU machines this project runs on, those two
threads compete with the two compute threads (ActorThread_0 / KernelThread_0): measured with perf on
`value_and_grad` of the bench model, the Python thread spent 29 % of all samples in that wait and a forward +
backward took 713 ms; with MS_DEV_HOST_BLOCKING_RUN=1 (MindSpore's documented switch: tasks run in the calling
thread) it takes 457 ms, same values (docs/performance.md). Ascend keeps the multi-threaded dispatch, which
overlaps host work with the device.
"""
from __future__ import annotations

import os

HOST_BLOCKING_RUN = "MS_DEV_HOST_BLOCKING_RUN"
DEVICE_TARGETS = ("CPU", "Ascend", "GPU")


def host_dispatch_for(device_target: str) -> str | None:
    """Single-threaded host dispatch on CPU unless the user set MS_DEV_HOST_BLOCKING_RUN (then theirs is kept).

    MindSpore reads the variable once, when the first task is queued, so entry points call this before their first
    MindSpore op. Returns the value in effect (None: MindSpore's default)."""
    if device_target not in DEVICE_TARGETS:
        raise ValueError(f"device_target must be one of {', '.join(DEVICE_TARGETS)}, got {device_target!r}")
    if device_target == "CPU":
        os.environ.setdefault(HOST_BLOCKING_RUN, "1")
    return os.environ.get(HOST_BLOCKING_RUN)


def set_up(device_target: str, mode: str = "graph") -> None:
    """Host dispatch, execution mode ("graph" | "pynative") and device, in that order."""
    if mode not in ("graph", "pynative"):
        raise ValueError(f"mode must be 'graph' or 'pynative', got {mode!r}")
    host_dispatch_for(device_target)
    import mindspore as ms   # pylint: disable=import-outside-toplevel
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    if ms.get_context("device_target") != device_target:   # fixed once used (e.g. by a TP worker's init())
        ms.set_device(device_target)
