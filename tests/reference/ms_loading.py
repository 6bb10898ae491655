"""Build our MindSpore model from an HF-named numpy state through the production name table."""
from __future__ import annotations

import numpy as np
import mindspore as ms

from telechat_ms import TelechatForCausalLM
from telechat_ms.convert.names import hf_to_ms


def ms_model_from_hf_state(config, hf_state: dict[str, np.ndarray], kernels=None) -> TelechatForCausalLM:
    model = TelechatForCausalLM(config, kernels)
    params = {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in hf_to_ms(hf_state, config).items()}
    not_loaded, unused = ms.load_param_into_net(model, params, strict_load=True)
    assert not not_loaded and not unused, (not_loaded, unused)
    return model
