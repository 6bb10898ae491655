"""telechat_ms/runtime.py: single-threaded host dispatch on CPU (no busy-waiting queue thread), the user's own
MS_DEV_HOST_BLOCKING_RUN kept, other devices left on MindSpore's default."""
import os
import subprocess
import sys

import pytest

from telechat_ms.runtime import HOST_BLOCKING_RUN, host_dispatch_for, set_up

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a value_and_grad call (the path whose launches go through MindSpore's frontend queue), then the names of this
# process's threads; the script must be a file: MindSpore's graph parser reads the source of construct()
SCRIPT = '''
import os, sys
from telechat_ms.runtime import set_up
if sys.argv[1] == "set_up":
    set_up("CPU", "graph")
import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, Tensor
ms.set_context(mode=ms.GRAPH_MODE)

class Net(nn.Cell):
    def __init__(self):
        super().__init__()
        self.w = Parameter(Tensor(np.ones((8, 8), np.float32)), name="w")
        self.mm = ops.MatMul(transpose_b=True)

    def construct(self, x):
        return self.mm(x, self.w).sum()

net = Net()
grad = ms.value_and_grad(net, None, net.trainable_params())
loss, _ = grad(Tensor(np.ones((4, 8), np.float32)))
assert float(loss.asnumpy()) == 256.0
names = {open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")}
print("QUEUE_THREAD", "frontend_queue" in names)
'''


def _queue_thread(tmp_path, how: str, env_value: str | None) -> bool:
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != HOST_BLOCKING_RUN}
    if env_value is not None:
        env[HOST_BLOCKING_RUN] = env_value
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, str(script), how], capture_output=True, text=True, env=env, check=False,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("QUEUE_THREAD")][-1]
    return line.split()[1] == "True"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads thread names from /proc")
def test_cpu_set_up_runs_host_tasks_in_the_calling_thread(tmp_path):
    # control: MindSpore's default starts the queue thread (whose waits spin, docs/performance.md)
    assert _queue_thread(tmp_path, "default", None)
    assert not _queue_thread(tmp_path, "set_up", None)
    # the user's own setting wins
    assert _queue_thread(tmp_path, "set_up", "0")


def test_host_dispatch_only_changes_cpu(monkeypatch):
    monkeypatch.delenv(HOST_BLOCKING_RUN, raising=False)
    assert host_dispatch_for("Ascend") is None
    assert HOST_BLOCKING_RUN not in os.environ
    assert host_dispatch_for("CPU") == "1"
    monkeypatch.setenv(HOST_BLOCKING_RUN, "0")
    assert host_dispatch_for("CPU") == "0"


def test_bad_device_and_mode_are_refused():
    with pytest.raises(ValueError, match="device_target must be one of CPU, Ascend, GPU, got 'cpu'"):
        host_dispatch_for("cpu")
    with pytest.raises(ValueError, match="mode must be 'graph' or 'pynative', got 'eager'"):
        set_up("CPU", "eager")
