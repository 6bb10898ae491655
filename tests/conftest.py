"""Shared test setup: MindSpore on CPU, scratch cwd (mindformers writes ./output on import)."""
import os

from telechat_ms.runtime import host_dispatch_for

# as every CPU entry point does, before MindSpore queues its first task (telechat_ms/runtime.py)
host_dispatch_for("CPU")

import mindspore as ms  # noqa: E402  pylint: disable=wrong-import-position
import pytest  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(autouse=True, scope="session")
def _cpu_and_scratch_cwd(tmp_path_factory):
    ms.set_device("CPU")
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(old)


def set_mode(mode: str) -> None:
    """Tests set the execution mode explicitly: another module may have changed it."""
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
