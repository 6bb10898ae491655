"""The planner's activation model against what the CPU measurably holds (issue 15): the plain-path estimate of
telechat_ms.parallel.memory must stay within 15 % of the activation memory measured by
`python bench/activation_memory.py` (peak RSS of forward + backward at the shape's length minus at 16 tokens,
GRAPH_MODE, fp32, batch 1; 2026-11-30, mindspore 2.9.0). Re-measure and update MEASURED_MB after a model change.
The Ascend (fused-kernel) estimate is not measurable here; it shares every term except the plain-path extras."""
import sys
import os

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from activation_memory import SHAPES, planner_bytes  # noqa: E402  pylint: disable=wrong-import-position

MEASURED_MB = {"A": 282.6, "B": 560.5, "C": 130.8, "D": 1270.9}


@pytest.mark.parametrize("name", sorted(MEASURED_MB))
def test_plain_path_activation_estimate_within_15_percent_of_measured(name):
    ratio = planner_bytes(SHAPES[name]) / 1e6 / MEASURED_MB[name]
    assert 0.85 <= ratio <= 1.15, f"{name}: planner / measured = {ratio:.2f}"


def test_fused_default_is_the_ascend_estimate():
    """The defaults describe Ascend training (fused kernels, 16-bit activations): the plain-path extras and the
    fp32 width only enter when asked for."""
    from telechat_ms.parallel.memory import Workload
    work = Workload()
    assert work.fused_kernels and work.activation_bytes == 2 and work.flash_attention
