"""A training yaml through MindFormers' own config machinery and ours, without training (tests, `check_yaml`).

MindFormers' side: MindFormerConfig (base_config resolution), build_parallel_config (TransformerOpParallelConfig,
TransformerRecomputeConfig, TransformerSwapConfig, MoEConfig: their constructors refuse unknown keys), its static
rule checks (recompute lists vs pipeline stages, fine_grain_interleave, swap), the registered TelechatConfig
(MFTelechatConfig: model_config keys), the layout MindFormers would hand our model (parallel_of) and the lr
schedule class. Ours: the strict reader of both engines (train/trainer.load_run). The strategies of each layout
are validated statically by tests/test_parallel_yaml.py.
"""
from __future__ import annotations

import copy


def check_yaml(path: str) -> dict:
    """Raise on anything MindFormers or telechat_ms would refuse; returns a summary."""
    from mindformers import MindFormerConfig   # pylint: disable=import-outside-toplevel
    from mindformers.core.lr import build_lr   # pylint: disable=import-outside-toplevel
    from mindformers.core.parallel_config import build_parallel_config   # pylint: disable=import-outside-toplevel
    from mindformers.tools import check_rules   # pylint: disable=import-outside-toplevel
    from mindformers.tools.register import (   # pylint: disable=import-outside-toplevel
        MindFormerModuleType, MindFormerRegister)
    from ..config.train_keys import check_moe_config   # pylint: disable=import-outside-toplevel
    from ..train.trainer import load_run   # pylint: disable=import-outside-toplevel
    from . import mindformers as _registered   # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    from .mf_layout import parallel_of   # pylint: disable=import-outside-toplevel

    ours, _overrides, _parallel, run = load_run(path, with_run=True)
    config = MindFormerConfig(path)
    build_parallel_config(config)
    check_rules._check_recompute(config)          # pylint: disable=protected-access
    check_rules._check_config_campacity(config)   # pylint: disable=protected-access
    check_rules._check_swap(config)               # pylint: disable=protected-access
    model_config = MindFormerRegister.get_instance_from_cfg(copy.deepcopy(config.model.model_config),
                                                            MindFormerModuleType.CONFIG)
    model_config.parallel_config = config.parallel_config      # what MindFormers sets before building the model
    model_config.moe_config = config.moe_config
    layout = parallel_of(model_config)
    check_moe_config(run.get("moe_config") or {}, model_config.telechat)
    lr = copy.deepcopy(config.lr_schedule)
    if lr.total_steps in (None, -1):
        lr.total_steps = 1000
    build_lr(lr)
    return {"layout": layout.describe(), "model": model_config.telechat.num_parameters(),
            "mindformers_only": sorted(ours.mindformers_only)}
