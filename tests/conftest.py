"""Shared test setup: MindSpore on CPU, scratch cwd (mindformers writes ./output on import)."""
import os

import mindspore as ms
import pytest


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
