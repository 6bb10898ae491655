"""Shipped yaml_configs: mindformers reads them as we do, their device comments match, they validate."""
import glob
import os

import pytest

from telechat_ms import TelechatConfig
from telechat_ms.config.model import PRESETS
from telechat_ms.model import Kernels
from telechat_ms.parallel import run_yaml
from telechat_ms.parallel.moe_layout import shard_moe
from telechat_ms.parallel.strategies import shard_model
from telechat_ms.parallel.validate import build_abstract_model, validate

ROOT = os.path.join(os.path.dirname(__file__), "..", "yaml_configs")
SIZES = ["3b", "7b", "35b", "115b", "39b_a12b"]
# yaml_configs/<family>/{finetune,predict}_<preset>.yaml for the main sizes of every other family (issue 10)
FAMILY_YAMLS = {
    "telechat1": ["telechat1_7b", "telechat1_12b"], "telechat52b": ["telechat_52b"],
    "teleflm": ["teleflm_52b", "flm2_52b"], "aquila2": ["aquila2_7b", "aquila2_34b", "aquila2_70b"],
    "llama2": ["llama2_7b", "llama2_13b", "llama2_70b"], "firefly": ["firefly_llama2_7b"],
}
NO_YAML = {"teleflm_1t"}    # 1T: no shipped layout (docs/parallel.md, Families); validated below under mp8 x pp8
TOP_YAMLS = sorted(glob.glob(os.path.join(ROOT, "*.yaml")))
FAMILY_RUN_YAMLS = sorted(p for fam in FAMILY_YAMLS for p in glob.glob(os.path.join(ROOT, fam, "*.yaml")))
RUN_YAMLS = TOP_YAMLS + FAMILY_RUN_YAMLS
NAME = os.path.basename


def preset_of(path: str) -> str:
    """finetune_telechat2_7b.yaml -> 7b (TeleChat2 presets are bare sizes); aquila2/predict_aquila2_34b -> aquila2_34b."""
    stem = NAME(path)[:-5].split("_", 1)[1]
    return stem[len("telechat2_"):] if stem.startswith("telechat2_") else stem


def test_every_size_has_finetune_pretrain_and_predict():
    names = {NAME(p) for p in RUN_YAMLS}
    for size in SIZES:
        for kind in ("finetune", "pretrain", "predict"):
            assert f"{kind}_telechat2_{size}.yaml" in names


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def test_mindformers_resolves_base_config_like_we_do():
    """MindFormerConfig (run_mindformer's loader) and our reader give the same merged dict, and
    mindformers' parallel / recompute / MoE config classes accept the sections."""
    pytest.importorskip("mindformers")
    from mindformers.modules.transformer import TransformerOpParallelConfig, TransformerRecomputeConfig
    from mindformers.modules.transformer.moe import MoEConfig
    from mindformers.tools.register.config import MindFormerConfig
    for path in RUN_YAMLS:
        run = run_yaml.load_run_yaml(path)
        assert _plain(MindFormerConfig._file2dict(path)) == run, NAME(path)
        recompute = TransformerRecomputeConfig(**run.get("recompute_config", {}))
        TransformerOpParallelConfig(recompute=recompute, **run["parallel_config"])
        if "moe_config" in run:
            MoEConfig(**run["moe_config"])


@pytest.mark.parametrize("path", RUN_YAMLS, ids=NAME)
def test_device_comment_and_model_match(path):
    run = run_yaml.load_run_yaml(path)
    par = run_yaml.parallel_config_of(run, path)
    assert run_yaml.device_count_comment(path) == par.device_num
    config = run_yaml.model_config_of(run, path)
    preset = TelechatConfig.preset(preset_of(path))
    for field in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "ffn_hidden_size", "vocab_size",
                  "num_experts", "num_experts_per_tok", "rms_norm_eps"):
        assert getattr(config, field) == getattr(preset, field), (NAME(path), field)


@pytest.mark.parametrize("path", RUN_YAMLS, ids=NAME)
def test_strategies_validate_for_every_shipped_yaml(path):
    """Abstract (unallocated) model with the Ascend kernels, sharded by the yaml's layout, every op checked
    at the yaml's global batch (dp x batch_size x micro_batch_num) and seq_length."""
    run = run_yaml.load_run_yaml(path)
    config, par = run_yaml.model_config_of(run, path), run_yaml.parallel_config_of(run, path)
    model = shard_model(build_abstract_model(config, Kernels.for_device("Ascend")), par)
    if config.is_moe:                      # until MoE.shard is wired to shard_moe (harmless afterwards)
        for layer in model.model.layers:
            shard_moe(layer.feed_forward, par)
    batch = par.data_parallel * run_yaml.micro_batch_size(run) * par.micro_batch_num
    report = validate(model, par, batch, config.seq_length, training="predict" not in NAME(path))
    assert report.ops


@pytest.mark.parametrize("size", SIZES)
def test_training_yamls_read_by_the_native_trainer_config(size):
    """One file drives mindformers and `telechat-ms train`: the native TrainConfig accepts the merged dict."""
    train = pytest.importorskip("telechat_ms.config.train")
    for kind in ("finetune", "pretrain"):
        path = os.path.join(ROOT, f"{kind}_telechat2_{size}.yaml")
        cfg = train.TrainConfig.from_dict(run_yaml.load_run_yaml(path), source=path)
        assert cfg.batch_size == 1 and cfg.device_target == "Ascend"


def test_base_config_merge_semantics(tmp_path):
    (tmp_path / "a.yaml").write_text("x: {p: 1, q: 2}\ny: [1, 2]\n")
    (tmp_path / "b.yaml").write_text("z: 3\n")
    (tmp_path / "c.yaml").write_text("base_config: ['a.yaml', 'b.yaml']\nx: {q: 5}\ny: [9]\n")
    assert run_yaml.load_run_yaml(str(tmp_path / "c.yaml")) == {"x": {"p": 1, "q": 5}, "y": [9], "z": 3}


# ----------------------------------------------------------------------------- families (issue 10)
def test_every_family_main_size_has_finetune_and_predict():
    for fam, presets in FAMILY_YAMLS.items():
        names = {NAME(p) for p in glob.glob(os.path.join(ROOT, fam, "*.yaml"))}
        assert names == {f"{kind}_{p}.yaml" for p in presets for kind in ("finetune", "predict")}, fam
        for preset in presets:
            assert PRESETS[preset]["family"] == fam


def test_every_real_size_preset_has_a_yaml_layout():
    """Every non-tiny preset of every family ships a finetune yaml (validated by the test above), except the
    ones listed in NO_YAML (validated under an explicit layout below)."""
    shipped = {preset_of(p) for p in RUN_YAMLS if NAME(p).startswith("finetune_")}
    real = {name for name in PRESETS if not name.startswith("tiny")}
    assert real - shipped == NO_YAML


@pytest.mark.parametrize("path", FAMILY_RUN_YAMLS, ids=lambda p: f"{os.path.basename(os.path.dirname(p))}/{NAME(p)}")
def test_family_yaml_model_is_exactly_the_preset(path):
    """model.model_config carries every field of the preset (family, biases, tying, multipliers, rotary variant,
    token ids): only the dtypes are the run's (bf16 compute; fp32 params to train, bf16 to predict)."""
    run = run_yaml.load_run_yaml(path)
    config = run_yaml.model_config_of(run, path)
    predict = NAME(path).startswith("predict_")
    want = TelechatConfig.preset(preset_of(path), compute_dtype="bfloat16",
                                 param_dtype="bfloat16" if predict else "float32")
    assert config == want
    assert config.family == os.path.basename(os.path.dirname(path))
    assert run["run_mode"] == ("predict" if predict else "finetune")


@pytest.mark.parametrize("preset", sorted(p for ps in FAMILY_YAMLS.values() for p in ps))
def test_family_finetune_yaml_read_by_the_native_trainer_config(preset):
    train = pytest.importorskip("telechat_ms.config.train")
    fam = PRESETS[preset]["family"]
    path = os.path.join(ROOT, fam, f"finetune_{preset}.yaml")
    cfg = train.TrainConfig.from_dict(run_yaml.load_run_yaml(path), source=path)
    assert cfg.batch_size == 1 and cfg.device_target == "Ascend"


def test_teleflm_1t_validates_under_mp8_pp8():
    """No yaml ships for Tele-FLM-1T; its strategies still validate at real shapes (160 heads by mp 8, the 1/40
    logit multiplier on the last of 8 stages, 140 layers 17 x 4 + 18 x 4)."""
    from telechat_ms.config.parallel import ParallelConfig
    config = TelechatConfig.preset("teleflm_1t", compute_dtype="bfloat16")
    par = ParallelConfig(data_parallel=16, model_parallel=8, pipeline_stage=8, micro_batch_num=32,
                         use_seq_parallel=True, vocab_emb_dp=False, offset=[0, 0, 0, 0, 1, 1, 1, 1])
    model = shard_model(build_abstract_model(config, Kernels.for_device("Ascend")), par)
    report = validate(model, par, batch=512, seq_len=config.seq_length)
    mul = next(op for op in report.ops if op.path == "mul_logits")
    assert mul.stage == 7 and mul.strategy == ((16, 1, 8), ())
