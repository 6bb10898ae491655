"""Non-finite logits stop generation with one clear error instead of an arbitrary or empty answer."""
import mindspore as ms
import numpy as np
import pytest

from telechat_ms import ConfigError, TelechatConfig, TelechatForCausalLM
from telechat_ms.config.generation import GenerationConfig
from telechat_ms.infer.generate import generate

from .conftest import set_mode


def test_nan_weights_are_an_error_not_an_empty_answer():
    set_mode("pynative")
    model = TelechatForCausalLM(TelechatConfig.preset("tiny"))
    weight = model.lm_head.weight
    data = weight.asnumpy()
    data[7, 3] = np.nan
    weight.set_data(ms.Tensor(data))
    with pytest.raises(ConfigError, match=r"non-finite logits \(NaN/Inf\) at generated token 0 for batch rows \[0\]"):
        generate(model, [[1, 2, 3]], GenerationConfig(max_new_tokens=4))
