"""Planner: the official layouts fit under their max_device_memory with their recompute settings, clearly
infeasible ones are rejected, and the solver finds balanced layouts that validate and fit."""
import os

import pytest
import yaml

from telechat_ms import TelechatConfig
from telechat_ms.config.parallel import ParallelConfig
from telechat_ms.model import Kernels
from telechat_ms.parallel.memory import Hardware, Workload
from telechat_ms.parallel.moe_layout import shard_moe
from telechat_ms.parallel.plan_cli import main
from telechat_ms.parallel.planner import evaluate, solve
from telechat_ms.parallel.validate import build_abstract_model, validate

WORK = Workload(seq_len=8192, micro_batch_size=1)       # every official finetune: seq 8192, batch 1 per device
BALANCE = 0.10      # solver promise: slowest stage within 10 % of the mean stage time


def model(size):
    return TelechatConfig.preset(size, compute_dtype="bfloat16")   # official: bf16 compute, fp32 params


def fits(size, par, hbm):
    return evaluate(model(size), par, WORK, Hardware(hbm_gb=hbm)).estimate


# ----------------------------------------------------------------------------- official layouts (spec §8)
def test_official_7b_dp8_fits_58gb_with_full_recompute():
    # 7.62B params, parallel optimizer over dp 8: weights 3.8 + AdamW 7.6 + reduce-scattered grads 3.8 GB;
    # full recompute keeps only each layer's input (30 x 64 MB); the fp32 logits of 8192 x 131072 dominate.
    par = ParallelConfig(data_parallel=8, use_seq_parallel=True, recompute=True, enable_parallel_optimizer=True,
                         vocab_emb_dp=False)
    est = fits("7b", par, 58)
    assert est.fits and 25 < est.peak_gb < 58
    # the same layout without recompute stores ~1.3 GB per layer (40 GB): over the limit, which is why the
    # official yaml recomputes
    assert not fits("7b", par.replace(recompute=False), 58).fits


def test_official_35b_mp4_pp4_fits_57gb():
    # dp 1 -> no optimizer sharding: 16 B/param x 2.25B params on a 17-layer stage = 36 GB of states;
    # full recompute: 3-4 micro-batches in flight x 17 layer inputs of 25 MB; edges on stage 0 / 3.
    par = ParallelConfig(model_parallel=4, pipeline_stage=4, micro_batch_num=32, use_seq_parallel=True,
                         recompute=True, offset=[-1, 1, 1, -1], enable_parallel_optimizer=True, vocab_emb_dp=False)
    est = fits("35b", par, 57)
    assert est.fits and [s.layers for s in est.stages] == [15, 17, 17, 15]


def test_official_115b_dp8_mp8_pp8_fits_54_5gb_with_select_recompute():
    # 13-layer stages hold 1.9B params (10 GB of states with grads accumulated in fp32); 3 interleaved
    # chunks keep up to 8 micro-batches x 13 layers of activations: select recompute (SwiGLU product) and
    # select-comm recompute (norm outputs) bring a layer from 470 MB to ~275 MB per micro-batch.
    par = ParallelConfig(data_parallel=8, model_parallel=8, pipeline_stage=8, micro_batch_num=8,
                         use_seq_parallel=True, select_recompute=True, select_comm_recompute=[8, 8, 10, 11, 10, 7, 5, 4],
                         pp_interleave_num=3, enable_parallel_optimizer=True, vocab_emb_dp=False,
                         offset=[[-1, -1, 0, 0, 0, 0, 0, 0], [-1, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1, -1]])
    est = fits("115b", par, 54.5)
    assert est.fits
    assert not fits("115b", par.replace(select_recompute=False, select_comm_recompute=False), 54.5).fits


def test_official_39b_a12b_fits_53gb():
    # experts split over ep' = ep x mp = 8 (ep_extend_tp): 2 of 16 experts per device; parallel optimizer
    # shard size 2; stage 0 holds 2 micro-batches in flight, so the official run recomputes 3 of its layers.
    par = ParallelConfig(data_parallel=128, model_parallel=4, pipeline_stage=2, expert_parallel=2, ep_extend_tp=True,
                         micro_batch_num=4, use_seq_parallel=True, recompute=[3, 0], enable_parallel_optimizer=True,
                         optimizer_weight_shard_size=2, vocab_emb_dp=False)
    est = fits("39b_a12b", par, 53)
    assert est.fits and est.stages[0].full_recompute == 3


def test_infeasible_115b_on_8_devices():
    # 113B params x 16 B (fp32 weights, grads, AdamW m and v) / 8 devices = 226 GB per device before any
    # activation: no dp/mp/pp split of 8 devices can fit 64 GB, whatever the recompute.
    assert solve(model("115b"), 8, WORK, Hardware(hbm_gb=64)) == []
    assert not fits("115b", ParallelConfig(model_parallel=8, use_seq_parallel=True, recompute=True), 64).fits


def test_infeasible_35b_without_pipeline_on_8_devices():
    # without pp every device holds 1/8 of 35.4B params x 16 B = 71 GB of states (mp splits weights,
    # the parallel optimizer splits over dp: the product is 8 either way) > 64 GB.
    assert solve(model("35b"), 8, WORK, Hardware(hbm_gb=64), {"pp": 1}) == []
    for dp, mp in ((8, 1), (2, 4), (1, 8)):
        par = ParallelConfig(data_parallel=dp, model_parallel=mp, use_seq_parallel=mp > 1, recompute=True,
                             enable_parallel_optimizer=dp > 1, vocab_emb_dp=mp == 1)
        assert fits("35b", par, 64).peak_gb > 64


# ----------------------------------------------------------------------------- solver
def _validate(size, par):
    net = build_abstract_model(model(size), Kernels.for_device("Ascend"))
    net.shard(par)
    if net.config.is_moe:
        for layer in net.model.layers:
            shard_moe(layer.feed_forward, par)
    return validate(net, par, par.data_parallel * par.micro_batch_num, 8192)


@pytest.mark.parametrize("size,devices,hbm", [("35b", 16, 57), ("115b", 512, 54.5)])
def test_solver_output_validates_fits_and_is_balanced(size, devices, hbm):
    plans = solve(model(size), devices, WORK, Hardware(hbm_gb=hbm))
    assert plans
    best = plans[0]
    assert best.parallel.device_num == devices and best.estimate.fits
    assert best.estimate.imbalance() <= BALANCE
    assert sum(s.layers for s in best.estimate.stages) == model(size).num_layers
    assert _validate(size, best.parallel).ops
    speeds = [p.estimate.tokens_per_device_s for p in plans]
    assert speeds == sorted(speeds, reverse=True)


def test_solver_gives_the_first_stage_fewer_layers_or_more_recompute():
    """1F1B: stage 0 holds pp micro-batches of activations, the last stage one plus the logits."""
    plan = solve(model("35b"), 16, WORK, Hardware(hbm_gb=57), {"mp": 4, "pp": 4})[0]
    first, last = plan.estimate.stages[0], plan.estimate.stages[-1]
    assert (first.layers, -first.full_recompute) <= (last.layers, -last.full_recompute)


def test_memory_model_monotonic():
    base = ParallelConfig(data_parallel=8, use_seq_parallel=False, enable_parallel_optimizer=True, vocab_emb_dp=True)
    plain = fits("7b", base, 64).peak_gb
    assert fits("7b", base.replace(recompute=True), 64).peak_gb < plain
    assert fits("7b", base.replace(select_recompute=True), 64).peak_gb < plain
    assert fits("7b", base.replace(enable_parallel_optimizer=False), 64).peak_gb > plain
    no_flash = evaluate(model("7b"), base, Workload(flash_attention=False), Hardware()).estimate.peak_gb
    assert no_flash > plain


# ----------------------------------------------------------------------------- CLI
def test_cli_example_from_the_issue_fits(capsys):
    rc = main("--model 115b --devices 512 --dp 8 --mp 8 --pp 8 --micro-batch-num 8 --seq-len 8192 "
              "--hbm-gb 64 --no-validate".split())
    out = capsys.readouterr().out
    assert rc == 0 and "FITS" in out and "est_ms" in out and out.count("\n    ") >= 8


def test_cli_exit_codes(capsys):
    assert main("--model 115b --devices 8 --hbm-gb 64".split()) == 1            # no layout fits
    assert main("--model 115b --dp 1 --mp 8 --pp 1 --no-validate".split()) == 1
    assert main("--model 35b --dp 1 --mp 6 --pp 1".split()) == 2                # ffn 20480 by mp 6
    err = capsys.readouterr().err
    assert "ffn_hidden_size (20480)" in err and "model_parallel" in err
    assert main("--model 7b --dp 2 --pp 2 --micro-batch-num 1".split()) == 2    # mbn < pp


def test_cli_reads_a_shipped_yaml():
    path = os.path.join(os.path.dirname(__file__), "..", "yaml_configs", "finetune_telechat2_35b.yaml")
    assert main(["--config", path, "--no-validate"]) == 0


def test_cli_solver_emits_a_mergeable_yaml(tmp_path, capsys):
    out = tmp_path / "parallel.yaml"
    assert main(f"--model 35b --devices 16 --hbm-gb 57 --no-validate --emit-yaml {out}".split()) == 0
    text = out.read_text()
    assert text.startswith("# devices: 16")
    emitted = ParallelConfig.from_run_config(yaml.safe_load(text))
    assert emitted.device_num == 16
    assert "moe_config" not in yaml.safe_load(text)


# ----------------------------------------------------------------------------- CLI: bad input (issue 14)
@pytest.mark.parametrize("flags,named", [
    ("--devices 0", "--devices must be >= 1, got 0"),                  # 0 is not "unset"
    ("--devices -8", "--devices must be >= 1, got -8"),                # invalid input, not "does not fit"
    ("--dp 8 --seq-len 0", "--seq-len must be >= 1, got 0"),
    ("--dp 8 --micro-batch-size 0", "--micro-batch-size must be >= 1, got 0"),
    ("--dp 8 --micro-batch-size -1", "--micro-batch-size must be >= 1, got -1"),   # was: -38.6 GB, FITS
    ("--dp 0 --mp 8", "--dp must be >= 1, got 0"),
    ("--dp 8 --hbm-gb 0", "--hbm-gb must be > 0, got 0"),
    ("--dp 8 --hbm-gb -64", "--hbm-gb must be > 0, got -64"),
    ("--dp 8 --hbm-gb nan", "--hbm-gb must be > 0, got nan"),
    ("--dp 8 --reserve-gb -2", "--reserve-gb must be >= 0, got -2"),
    ("--dp 8 --efficiency 0", "--efficiency must be in (0, 1], got 0"),       # was: ZeroDivisionError
    ("--dp 8 --efficiency 1.5", "--efficiency must be in (0, 1], got 1.5"),
    ("--dp 8 --peak-tflops 0", "--peak-tflops must be > 0, got 0"),
    ("--dp 8 --recompute banana", "--recompute: expected full, none or per-stage counts"),   # was: ValueError
    ("--dp 2 --pp 4 --offset 1,x", "--offset: expected"),
])
def test_cli_invalid_numbers_are_one_error_line_exit_2(flags, named, capsys):
    assert main(f"--model 7b {flags} --no-validate".split()) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], captured.err
    assert captured.out == ""                                          # refused before any plan is printed


def test_cli_names_every_bad_flag_at_once(capsys):
    assert main("--model 7b --devices 0 --seq-len -1 --efficiency 0 --no-validate".split()) == 2
    err = capsys.readouterr().err
    assert "--devices" in err and "--seq-len" in err and "--efficiency" in err


def test_cli_needs_a_model(capsys):
    assert main("--dp 8 --no-validate".split()) == 2                  # was: silently planned 7B
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--model" in err and "115b" in err and "7b" in err
    path = os.path.join(os.path.dirname(__file__), "..", "yaml_configs", "finetune_telechat2_35b.yaml")
    assert main(["--model", "7b", "--config", path, "--no-validate"]) == 2   # the yaml's model would win silently
    assert "--model" in capsys.readouterr().err


def test_cli_emit_yaml_unwritable_is_one_error_line(tmp_path, monkeypatch, capsys):
    """A read-only target (root ignores chmod: a path under /proc really fails) and a full disk (ENOSPC
    injected into the write) give one error line, exit 2, and no file or temp file is left."""
    flags = "--model 7b --dp 8 --no-validate --emit-yaml".split()
    assert main(flags + ["/proc/telechat_plan.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "/proc/telechat_plan.yaml" in err[0]
    assert main(flags + [str(tmp_path / "no_such_dir" / "p.yaml")]) == 2
    assert "no_such_dir" in capsys.readouterr().err

    import errno
    import io

    class FullDisk(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: (os.close(fd), FullDisk())[1])
    target = tmp_path / "par.yaml"
    assert main(flags + [str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and str(target) in err[0]
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    assert os.listdir(tmp_path) == []                                  # no partial file, no temp file


# ----------------------------------------------------------------------------- families (issue 10)
from telechat_ms.config.model import PRESETS                        # noqa: E402
from telechat_ms.parallel.inference import cache_tokens_of, estimate_inference   # noqa: E402
from telechat_ms.parallel.memory import edge_params, layer_params, logits_bytes  # noqa: E402

YAMLS = os.path.join(os.path.dirname(__file__), "..", "yaml_configs")
FAMILY_DIRS = ("telechat1", "telechat52b", "teleflm", "aquila2", "llama2", "firefly")


def _held(config, par):
    """Parameters held per device summed over the stages (what the states are computed from)."""
    from telechat_ms.parallel.pipeline import stage_layers
    dense, expert, replicated = layer_params(config, par)
    pp = par.pipeline_stage
    counts = [sum(chunk[s] for chunk in stage_layers(config.num_layers, par)) for s in range(pp)]
    return sum(n * (dense + expert + replicated) + edge_params(config, par, s == 0, s == pp - 1)
               for s, n in enumerate(counts))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_memory_counts_the_family_parameters_exactly(name):
    """Biases only where the family has them, the tied lm_head once: at mp 1 / pp 1 the planner holds exactly
    config.num_parameters()."""
    config = TelechatConfig.preset(name)
    assert _held(config, ParallelConfig()) == config.num_parameters()


def test_tied_table_is_held_once_per_end_stage():
    """TeleChat v1 7B: one table on a single stage; with pp > 1 the embedding (stage 0) and the lm_head (last
    stage) each hold the shared Parameter (MindSpore keeps a shared parameter on every stage that reads it)."""
    tied, untied = TelechatConfig.preset("telechat1_7b"), TelechatConfig.preset("telechat1_7b", tie_word_embeddings=False)
    table = tied.vocab_size * tied.hidden_size
    one = ParallelConfig()
    assert _held(untied, one) - _held(tied, one) == table
    two = ParallelConfig(pipeline_stage=2, micro_batch_num=2)
    assert _held(untied, two) == _held(tied, two)
    assert edge_params(tied, ParallelConfig(model_parallel=2, vocab_emb_dp=False), True, True) == table / 2 + tied.hidden_size


def test_logit_multiplier_costs_one_more_fp32_logits_copy():
    flm = TelechatConfig.preset("flm2_52b")
    plain = TelechatConfig.preset("flm2_52b", logit_multiplier=1.0)
    par, work = ParallelConfig(model_parallel=8, vocab_emb_dp=False), Workload(seq_len=2048)
    extra = logits_bytes(flm, par, work) - logits_bytes(plain, par, work)
    assert extra == 2048 * 80896 / 8 * 4


def test_cli_aquila2_34b_on_one_node_does_not_fit_but_two_nodes_do(capsys):
    """33.7B params x 16 B of weights, gradients and AdamW states = 539 GB: 67 GB per device on 8 devices
    whatever the split, so nothing fits one node; 16 devices fit, and the mp 8 layout (48 heads / 8 kv heads:
    one kv head per rank) validates. Sequence length defaults to the preset's (4096)."""
    assert main("--model aquila2_34b --devices 8".split()) == 1
    out = capsys.readouterr().out
    assert "no layout of 8 devices fits 64 GB" in out and "closest: dp1 mp8 pp1" in out
    assert main("--model aquila2_34b --devices 16 --dp 1 --mp 8 --pp 2".split()) == 0
    out = capsys.readouterr().out
    assert "aquila2 33.69B params, seq 4096" in out and "FITS" in out and "sharded ops valid" in out
    assert main("--model aquila2_34b --devices 16 --no-validate".split()) == 0
    assert "FITS" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted(os.path.join(d, f) for fam in FAMILY_DIRS
                                        for d in [os.path.join(YAMLS, fam)] for f in os.listdir(d)
                                        if f.endswith(".yaml")), ids=os.path.basename)
def test_cli_judges_every_family_yaml_fitting(path, capsys):
    """Finetune yamls: the training estimate; predict yamls (run_mode predict): weights + KV cache + prefill.
    (Their strategies are validated in tests/test_parallel_yaml.py.)"""
    assert main(["--config", path, "--no-validate"]) == 0
    out = capsys.readouterr().out
    assert "FITS" in out and "DOES NOT FIT" not in out
    if os.path.basename(path).startswith("predict_"):
        assert "no gradients or optimizer states" in out


@pytest.mark.parametrize("size,devices", [("7b", 1), ("35b", 2), ("115b", 8)])
def test_official_predict_yamls_fit_as_inference(size, devices, capsys):
    """The official predict layouts (spec §8: 7B on 1 NPU, 35B mp 2, 115B mp 8, fp16) fit once judged as
    inference (the training estimate would add gradients and AdamW states)."""
    path = os.path.join(YAMLS, f"predict_telechat2_{size}.yaml")
    assert main(["--config", path, "--no-validate"]) == 0
    assert f"({devices} devices)" in capsys.readouterr().out


def test_inference_estimate_terms():
    """fp16 weights split by mp, KV cache = tokens x 2 x layers x kv heads x head_dim / mp x 2 B; 115B does
    not fit one device (227 GB of fp16 weights)."""
    config = TelechatConfig.preset("115b", compute_dtype="float16", param_dtype="float16")
    work, hw = Workload(seq_len=8192), Hardware(hbm_gb=58)
    par = ParallelConfig(model_parallel=8, vocab_emb_dp=False)
    est = estimate_inference(config, par, work, hw, cache_tokens=8192)
    stage = est.stages[0]
    assert stage.params == pytest.approx(config.num_parameters() / 8, rel=0.01)
    assert stage.weights_gb == pytest.approx(stage.params * 2 / 1e9)
    assert stage.cache_gb == pytest.approx(8192 * 2 * 96 * 8 * 128 / 8 * 2 / 1e9)
    assert est.fits
    assert not estimate_inference(config, ParallelConfig(), work, hw, 8192).fits
    assert cache_tokens_of({"model": {"model_config": {"block_size": 16, "num_blocks": 512}}}, 1, 100) == 8192
    assert cache_tokens_of({}, 2, 4096) == 8192


def test_solver_considers_pipeline_sizes_that_do_not_divide_the_layers():
    """Aquila2-34B has 60 layers: pp 8 (7/8 layers per stage) is a candidate, its offsets solved (before, a
    pp not dividing num_layers failed the offset-0 layout check and was silently skipped)."""
    from telechat_ms.parallel.planner import candidate_layouts
    config = TelechatConfig.preset("aquila2_34b", compute_dtype="bfloat16")
    work = Workload(seq_len=4096)
    pps = {p.pipeline_stage for p in candidate_layouts(config, 32, work, Hardware(), {"seq_len": 4096})}
    assert {8, 16} <= pps
    plans = solve(config, 32, work, Hardware(hbm_gb=58), {"pp": 8})
    assert plans and all(sum(s.layers for s in p.estimate.stages) == 60 for p in plans)
    assert _validate_config(config, plans[0].parallel, 4096).ops


def _validate_config(config, par, seq):
    from telechat_ms.parallel.strategies import shard_model
    net = shard_model(build_abstract_model(config, Kernels.for_device("Ascend")), par)
    return validate(net, par, par.data_parallel * par.micro_batch_num, seq)


def test_cli_predict_yaml_takes_layout_overrides(capsys):
    """--mp on a predict yaml is applied, not ignored: Aquila2-70B in bf16 on one NPU (140 GB of weights)
    does not fit."""
    path = os.path.join(YAMLS, "aquila2", "predict_aquila2_70b.yaml")
    assert main(["--config", path, "--mp", "1", "--no-validate"]) == 1
    out = capsys.readouterr().out
    assert "(1 devices)" in out and "DOES NOT FIT" in out
    assert main(["--config", path, "--devices", "8", "--no-validate"]) == 2      # the yaml's layout has 4
