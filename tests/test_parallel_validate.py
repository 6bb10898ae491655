"""Static strategy validation: a matrix of tiny layouts over 1-64 devices passes or fails exactly where
divisibility says (and names the field); real-size presets validate without allocating their weights."""
import itertools

import numpy as np
import pytest

from telechat_ms import ConfigError, TelechatConfig
from telechat_ms.config.parallel import ParallelConfig
from telechat_ms.model import Kernels
from telechat_ms.parallel.moe_layout import shard_moe
from telechat_ms.parallel.rules import StrategyError
from telechat_ms.parallel.shapes import ShapeContext
from telechat_ms.parallel.strategies import shard_model
from telechat_ms.parallel.validate import build_abstract_model, check_ops, validate

SEQ = 24          # divisible by 1..8 but not by 16: sequence parallel with mp 16 must fail on the sequence
# Each size fails alone somewhere in the matrix: "wide" (16 heads, ffn 96) fails mp 16 only on the sequence
# (with sequence parallel)
# and mp 8/16 on the vocabulary 500 (vocab-parallel); "odd" (8 heads) fails mp 8 only on ffn 100.
SMALL = dict(hidden_size=64, num_layers=4, training_seqlen=32, base_seqlen=32, seq_length=64)
CUSTOM = {"wide": dict(SMALL, vocab_size=500, num_heads=16, num_kv_heads=16, ffn_hidden_size=96),
          "odd": dict(SMALL, vocab_size=512, num_heads=8, num_kv_heads=8, ffn_hidden_size=100)}
_MODELS = {}


def model_for(name):
    """One abstract model per config, re-sharded for every layout (shard() overwrites strategies)."""
    if name not in _MODELS:
        config = TelechatConfig(**CUSTOM[name]) if name in CUSTOM else TelechatConfig.preset(name)
        _MODELS[name] = build_abstract_model(config)
    return _MODELS[name]


def shard(model, par):
    shard_model(model, par)
    for layer in model.model.layers:
        if model.config.is_moe:          # until MoE.shard is wired to shard_moe (harmless afterwards)
            shard_moe(layer.feed_forward, par)


def expected_failures(config, par, batch, seq):
    """Independent arithmetic: {field} that must make this layout fail (empty: must pass)."""
    dp, mp, pp, ep = par.data_parallel, par.model_parallel, par.pipeline_stage, par.expert_parallel
    fails = set()
    if config.num_heads % mp or config.num_kv_heads % mp:
        fails.add("model_parallel")
    ffn_split = 1 if (config.is_moe and par.ep_extend_tp) else mp
    if config.ffn_hidden_size % ffn_split or (not par.vocab_emb_dp and config.vocab_size % mp):
        fails.add("model_parallel")
    if par.use_seq_parallel and seq % mp:
        fails.add("use_seq_parallel")
    # (no plain `seq % mp` rule: attention turns the context back with its own transpose_back, split by heads)
    if config.num_layers < pp:
        fails.add("pipeline_stage")
    if batch % (dp * par.micro_batch_num):
        fails.add("data_parallel")
    if config.is_moe:
        ep_inner = ep * mp if par.ep_extend_tp else ep
        if dp % ep or config.num_experts % ep_inner:
            fails.add("expert_parallel")
    elif ep > 1:
        fails.add("expert_parallel")
    return fails


def dense_layouts():
    for devices in (1, 2, 4, 8, 16, 32, 64):
        for mp, pp in itertools.product((1, 2, 4, 8, 16), (1, 2, 4)):
            if devices % (mp * pp) == 0:
                yield devices // (mp * pp), mp, pp


def run_case(name, par, batch, seq=SEQ):
    model = model_for(name)
    want = expected_failures(model.config, par, batch, seq)
    try:
        shard(model, par)
        validate(model, par, batch, seq)
    except ConfigError as exc:
        assert want, f"{name} {par.describe()} failed unexpectedly: {exc}"
        assert any(field in str(exc) for field in want), f"{exc} names none of {want}"
        return False
    assert not want, f"{name} {par.describe()} passed but must fail on {want}"
    return True


@pytest.mark.parametrize("name", ["tiny", "tiny_gqa", "wide", "odd", "tiny_teleflm_gqa", "tiny_telechat1"])
def test_dense_matrix_1_to_64_devices(name):
    outcomes = []
    for dp, mp, pp in dense_layouts():
        for sp, vocab_dp in itertools.product((False, True), (True, False)):
            par = ParallelConfig(data_parallel=dp, model_parallel=mp, pipeline_stage=pp, micro_batch_num=pp,
                                 use_seq_parallel=sp, vocab_emb_dp=vocab_dp)
            outcomes.append(run_case(name, par, batch=dp * pp * 2))
    assert any(outcomes) and not all(outcomes)     # the matrix has both kinds


def test_moe_matrix():
    outcomes = []
    for dp, mp, ep, ext in itertools.product((1, 2, 4, 8), (1, 2, 4), (1, 2, 4), (False, True)):
        par = ParallelConfig(data_parallel=dp, model_parallel=mp, expert_parallel=ep, ep_extend_tp=ext,
                             use_seq_parallel=mp > 1, vocab_emb_dp=False)
        outcomes.append(run_case("tiny_moe", par, batch=dp))
    assert any(outcomes) and not all(outcomes)


@pytest.mark.parametrize("batch,field", [(6, "data_parallel"), (4, "data_parallel")])
def test_batch_must_divide_by_dp_times_micro_batches(batch, field):
    par = ParallelConfig(data_parallel=2, pipeline_stage=2, micro_batch_num=4)
    with pytest.raises(StrategyError, match=field):
        run_validate("tiny", par, batch)


def run_validate(name, par, batch, seq=SEQ):
    model = model_for(name)
    shard(model, par)
    return validate(model, par, batch, seq)


def test_micro_batch_num_below_pipeline_stage_names_both_fields():
    with pytest.raises(ConfigError, match=r"micro_batch_num \(1\) must be >= pipeline_stage \(2\)"):
        ParallelConfig(pipeline_stage=2, micro_batch_num=1)


@pytest.mark.parametrize("changes,seq", [
    ({"model_parallel": 8}, SEQ),                                # heads 4 by mp 8
    ({"model_parallel": 4, "use_seq_parallel": True}, 18),       # sequence 18 by mp 4
    ({"model_parallel": 2, "vocab_emb_dp": False}, SEQ),         # passes: control
])
def test_op_level_walk_catches_shape_failures_without_the_layout_checks(changes, seq):
    """The per-op checks alone (no config-level shortcut) reject what divisibility rejects."""
    model = model_for("tiny_gqa")
    par = ParallelConfig(**changes)
    shard(model, par)
    ctx = ShapeContext(batch=2, seq_len=seq)
    if expected_failures(model.config, par, 2, seq):
        with pytest.raises(StrategyError) as err:
            check_ops(model, par, ctx)
        assert "not divisible" in str(err.value) and "model_parallel" in str(err.value)
    else:
        assert check_ops(model, par, ctx)


def test_error_names_op_dimension_and_numbers():
    model = model_for("tiny_gqa")
    par = ParallelConfig(model_parallel=4)               # kv heads 2 by mp 4
    shard(model, par)
    with pytest.raises(StrategyError) as err:
        check_ops(model, par, ShapeContext(batch=2, seq_len=SEQ))
    text = str(err.value)
    assert err.value.op.startswith("model.layers.0.attention")
    assert "num_kv_heads=2" in text and "split 4 from model_parallel" in text


def test_unsharded_model_and_stray_strategies_are_refused():
    fresh = build_abstract_model(TelechatConfig.preset("tiny"))
    with pytest.raises(StrategyError, match="not sharded|no strategy"):
        validate(fresh, ParallelConfig(), 2, SEQ)
    fresh.shard(ParallelConfig(data_parallel=2))
    with pytest.raises(StrategyError, match="differs from the plan"):
        validate(fresh, ParallelConfig(data_parallel=2, model_parallel=2), 4, SEQ)
    fresh.shard(ParallelConfig())
    fresh.model.layers[0].attention.core.cast.shard(((1, 1, 1, 1),))
    with pytest.raises(StrategyError, match="core.cast: carries a strategy"):
        validate(fresh, ParallelConfig(), 2, SEQ)


def test_report_lists_every_sharded_op_with_stage():
    par = ParallelConfig(data_parallel=2, model_parallel=2, pipeline_stage=2, micro_batch_num=2,
                         use_seq_parallel=True, vocab_emb_dp=False)
    report = run_validate("tiny", par, batch=4)
    paths = {op.path for op in report.ops}
    assert "model.layers.0.attention.wo.matmul" in paths and "loss.one_hot" in paths and "loss.gather_d" not in paths
    stages = {op.path: op.stage for op in report.ops}
    assert stages["model.tok_embeddings.gather"] == 0 and stages["model.layers.1.add_mlp"] == 1
    assert stages["lm_head.matmul"] == 1
    wo = next(op for op in report.ops if op.path == "model.layers.0.attention.wo.matmul")
    assert wo.strategy == ((2, 2), (1, 2)) and wo.out_strategy == ((4, 1),) and wo.devices == 4
    assert "sharded ops valid" in report.to_text()


def _rss_mb():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


@pytest.mark.parametrize("kernels", ["plain", "Ascend"])
def test_115b_validates_without_allocating_weights(kernels):
    before = _rss_mb()
    model = build_abstract_model(TelechatConfig.preset("115b"), Kernels.for_device("Ascend") if kernels == "Ascend"
                                 else Kernels.plain())
    par = ParallelConfig(data_parallel=8, model_parallel=8, pipeline_stage=8, micro_batch_num=8,
                         use_seq_parallel=True, vocab_emb_dp=False)
    model.shard(par)
    report = validate(model, par, batch=64, seq_len=8192)
    assert len(report.ops) > 1000
    assert model.lm_head.weight.has_init                 # never materialised (453 GB in fp32)
    assert _rss_mb() - before < 1500
    if kernels == "Ascend":
        flash = next(op for op in report.ops if op.kind == "FlashAttentionScore")
        assert flash.strategy == ((8, 8, 1, 1),) * 3 + ((8, 1, 1, 1),)


def test_moe_token_groups_layout_and_capacity_rounding():
    """Per-group dispatch: G = dp' token groups (own queues and capacity) split by dp'; the experts' slot axis
    G*C is split by dp'/ep' on its group part (C itself never), transpose_in reads (G, E, C, H) as (slot, ep')
    -- the dispatch all-to-all --; the batch-mode gathers use dp' devices; C rounded to mp' like the official
    port (1 with ep_extend_tp, mp without)."""
    model = model_for("tiny_moe")
    par = ParallelConfig(data_parallel=8, expert_parallel=2, model_parallel=2, ep_extend_tp=True,
                         use_seq_parallel=True, vocab_emb_dp=False)
    shard(model, par)
    moe = model.model.layers[0].feed_forward
    assert (moe.groups, moe.capacity_multiple) == (16, 1)                   # dp' = dp * mp, mp' = 1
    report = validate(model, par, batch=8, seq_len=SEQ)
    ops = {op.path.split("layers.0.feed_forward.")[1]: op for op in report.ops if "layers.0.feed_forward." in op.path}
    bmm = ops["ffn.w1.bmm"]
    assert bmm.strategy == ((4, 4, 1), (4, 1, 1)) and bmm.devices == 16     # (ep'=ep*mp, slot=dp/ep, mp'=1)
    assert int(np.prod(bmm.strategy[0])) == par.stage_device_num
    assert bmm.calls[0][0][1] == 16 * moe_capacity(moe, 8 * SEQ // 16)       # slot axis = G * C
    assert ops["transpose_in"].strategy == ((4, 4, 1, 1),) and ops["transpose_out"].strategy == ((4, 4, 1, 1),)
    gather = ops["gather"]
    assert gather.strategy == ((16, 1, 1), (16, 1)) and gather.devices == 16   # per group, not 16 x 16
    plain = par.replace(ep_extend_tp=False)
    shard(model, plain)
    assert (moe.groups, moe.capacity_multiple) == (8, 2)                    # dp' = dp, mp' = mp
    assert validate(model, plain, batch=8, seq_len=SEQ).ops


def moe_capacity(moe, tokens_per_group):
    from telechat_ms.model.moe import expert_capacity
    return expert_capacity(tokens_per_group, moe.top_k, moe.num_experts, moe.capacity_factor, moe.token_dropping,
                           moe.capacity_multiple)


def test_batch_gather_rule_needs_equal_group_splits():
    """Batch-mode Gather (the MoE's per-group gathers): MindSpore requires the batch axes split alike."""
    from mindspore import ops as msops
    from telechat_ms.parallel.rules import check_call
    gather = msops.Gather(batch_dims=1)
    shapes = ((8, 5, 16), (8, 12))
    assert check_call("g", gather, ((4, 1, 1), (4, 1)), None, shapes, 8) == 4
    with pytest.raises(StrategyError, match="batch axis 0"):
        check_call("g", gather, ((4, 1, 1), (2, 1)), None, shapes, 8)
    with pytest.raises(StrategyError, match="gather axis"):
        check_call("g", gather, ((4, 5, 1), (4, 1)), None, shapes, 20)


# ----------------------------------------------------------------------------- families (issue 10)
def test_multipliers_get_explicit_strategies_on_their_stages():
    """Tele-FLM's embedding / logit multipliers (Mul ops that exist only when != 1.0): mul_embed on the
    token region (dp, sp, 1) of stage 0, mul_logits on the lm_head output layout (dp, 1, vocab split) of the
    last stage; shard_model sets them (TelechatModel / TelechatForCausalLM.shard do not)."""
    model = model_for("tiny_teleflm_gqa")
    assert (model.config.embedding_multiplier, model.config.logit_multiplier) == (2.0, 0.25)
    par = ParallelConfig(data_parallel=2, model_parallel=2, pipeline_stage=2, micro_batch_num=2,
                         use_seq_parallel=True, vocab_emb_dp=False)
    shard_model(model, par)
    ops = {op.path: op for op in validate(model, par, batch=4, seq_len=SEQ).ops}
    assert ops["model.mul_embed"].strategy == ((2, 2, 1), ()) and ops["model.mul_embed"].stage == 0
    assert ops["mul_logits"].strategy == ((2, 1, 2), ()) and ops["mul_logits"].stage == 1
    assert ops["mul_logits"].calls == [((2, SEQ, 512), ())]
    vocab_dp = par.replace(vocab_emb_dp=True)
    shard_model(model, vocab_dp)
    ops = {op.path: op for op in validate(model, vocab_dp, batch=4, seq_len=SEQ).ops}
    assert ops["mul_logits"].strategy == ((2, 1, 1), ())


def test_multiplier_ops_are_not_planned_when_they_do_not_run():
    model = model_for("tiny")                  # multipliers 1.0: no Mul in the graph, nothing planned
    par = ParallelConfig(data_parallel=2, model_parallel=2)
    shard_model(model, par)
    paths = {op.path for op in validate(model, par, batch=2, seq_len=SEQ).ops}
    assert not {"model.mul_embed", "mul_logits"} & paths
    assert model.mul_logits.attrs.get("in_strategy") is None


def test_out_projection_biases_follow_the_family():
    """Llama-named families have no bias cells: no bias add is planned or validated; TeleChat has both."""
    par = ParallelConfig(data_parallel=2, model_parallel=2, use_seq_parallel=True, vocab_emb_dp=False)
    llama = {op.path for op in run_validate("tiny_aquila2_gqa", par, batch=2).ops}
    assert not any(p.endswith("bias_add") for p in llama)
    telechat = {op.path for op in run_validate("tiny", par, batch=2).ops}
    assert {"model.layers.0.attention.wo.bias_add", "model.layers.0.feed_forward.w2.bias_add"} <= telechat


@pytest.mark.parametrize("vocab_emb_dp,slices", [(False, (2, 1)), (True, (1, 1))])
def test_tied_embedding_has_one_layout_for_gather_and_lm_head(vocab_emb_dp, slices):
    """TeleChat v1 7B: lm_head.weight IS the embedding Parameter. The embedding Gather's table and the lm_head
    MatMul's weight are both (V, H) split by the vocab split, so the shared Parameter has one layout (also
    across pipeline stages: embedding on stage 0, lm_head on the last)."""
    model = model_for("tiny_telechat1")
    assert model.lm_head.weight is model.model.tok_embeddings.embedding_weight
    par = ParallelConfig(data_parallel=2, model_parallel=2, pipeline_stage=2, micro_batch_num=2,
                         use_seq_parallel=True, vocab_emb_dp=vocab_emb_dp)
    report = run_validate("tiny_telechat1", par, batch=4)
    shared = [c for c in report.checks if c.startswith("shared parameter")]
    assert shared == [f"shared parameter sliced {slices} by model.tok_embeddings.gather, lm_head.matmul"]


def test_tied_embedding_with_disagreeing_layouts_is_refused():
    """A shared Parameter sliced differently by its readers cannot exist in MindSpore: refused, naming both."""
    model = model_for("tiny_telechat1")
    par = ParallelConfig(data_parallel=2, model_parallel=2, vocab_emb_dp=False)
    shard(model, par)
    model.lm_head.shard(par, "replicated")      # weight (1, 1) while the embedding table is split (2, 1)
    with pytest.raises(StrategyError, match=r"lm_head.matmul: reads a Parameter shared with "
                                            r"model.tok_embeddings.gather .* sliced \(1, 1\), but .* \(2, 1\)"):
        validate(model, par, 2, SEQ)
    untied = model_for("tiny_telechat1_untied")
    shard(untied, par)
    untied.lm_head.shard(par, "replicated")     # its own weight: any layout is fine
    assert validate(untied, par, 2, SEQ).ops


def test_aquila2_34b_gqa_at_mp8_and_beyond():
    """48 heads / 8 kv heads: mp 8 gives each rank 6 query heads and one whole (K, V) pair; mp 16 splits the
    8 kv heads and is refused naming num_kv_heads."""
    model = build_abstract_model(TelechatConfig.preset("aquila2_34b"), Kernels.for_device("Ascend"))
    par = ParallelConfig(model_parallel=8, pipeline_stage=2, micro_batch_num=2, use_seq_parallel=True,
                         vocab_emb_dp=False)
    ops = {op.path: op for op in validate(shard_model(model, par), par, batch=2, seq_len=4096).ops}
    assert ops["model.layers.0.attention.wk_v.matmul"].strategy == ((1, 1), (8, 1))
    assert ops["model.layers.0.attention.wk_v.matmul"].calls[0][1] == (2 * 8 * 128, 6144)
    with pytest.raises(StrategyError, match=r"num_kv_heads \(8\) must be divisible by model_parallel \(16\)"):
        validate(model, ParallelConfig(model_parallel=16), batch=1, seq_len=4096)


# ----------------------------------------------------------------------------- completeness (issue 15)
MS_OPS = __import__("mindspore").ops      # module-level: graph-mode construct code cannot import
def test_packed_and_padded_inputs_are_validated_with_their_mask_and_rope_ops():
    """With an attention_mask and packed rows the mask (tiled (B, 1, S, S) by dp) and the rope-table gathers
    (position ids by dp) are checked too; the plain path tiles the tables to q's (dp, mp, 1, 1) layout."""
    par = ParallelConfig(data_parallel=2, model_parallel=2, use_seq_parallel=True, vocab_emb_dp=False)
    ops = {op.path: op for op in run_validate("tiny_gqa", par, batch=2).ops}
    assert not ops["model.attention_mask.or_pad"].calls and not ops["model.rope_tables.gather_cos"].calls
    model = model_for("tiny_gqa")
    ops = {op.path: op for op in validate(model, par, 2, SEQ, padded=True, packed=True).ops}
    assert ops["model.attention_mask.tile_pad"].strategy == ((2, 1, 1, 1),)
    assert ops["model.attention_mask.or_doc"].calls == [((2, 1, SEQ, SEQ), (2, 1, SEQ, SEQ))]
    assert ops["model.rope_tables.gather_cos"].strategy == ((1, 1), (2, 1))
    assert ops["model.rope_tables.tile_cos_k"].strategy == ((2, 2, 1, 1),)
    assert ops["loss.one_hot"].strategy == ((2, 2), (), ())              # the label pick stays vocab-parallel
    assert ops["model.layers.0.attention.tile_kv"].strategy == ((2, 2, 1, 1, 1),)


def test_unplanned_primitive_in_a_cell_without_a_plan_is_refused():
    """A cell class no plan covers, holding a primitive, would run on MindSpore's default strategy."""
    from mindspore import nn, ops as msops

    class Scale(nn.Cell):
        def __init__(self):
            super().__init__()
            self.mul = msops.Mul()

    fresh = build_abstract_model(TelechatConfig.preset("tiny"))
    par = ParallelConfig(data_parallel=2)
    shard(fresh, par)
    assert validate(fresh, par, 2, SEQ).ops
    fresh.model.layers[1].extra = Scale()
    with pytest.raises(StrategyError, match=r"model\.layers\.1\.extra\.mul: Mul in a Scale, a cell class without "
                                            r"a shard plan"):
        validate(fresh, par, 2, SEQ)


def test_primitive_that_runs_without_a_plan_is_refused(monkeypatch):
    """The table says the MLP's SiLU runs; a plan without it (what the port used to be: nn.SiLU on MindSpore's
    default strategy) fails naming the primitive."""
    from telechat_ms.parallel import strategies
    model, par = model_for("tiny"), ParallelConfig(data_parallel=2, model_parallel=2)
    shard(model, par)
    original = strategies.PLANS["MLP"]
    monkeypatch.setitem(strategies.PLANS, "MLP", lambda cell, p: {k: v for k, v in original(cell, p).items()
                                                                   if k != "silu"})
    with pytest.raises(StrategyError, match=r"model\.layers\.0\.feed_forward\.silu: runs in construct but has no "
                                            r"planned strategy"):
        validate(model, par, 2, SEQ)


def _trace_inputs(batch=2, seq=8):
    from mindspore import Tensor
    ids = Tensor(np.random.default_rng(0).integers(4, 500, (batch, seq)).astype(np.int32))
    ones = Tensor(np.ones((batch, seq), np.int32))
    positions = Tensor(np.tile(np.r_[np.arange(5), np.arange(seq - 5)], (batch, 1)).astype(np.int32))
    documents = Tensor(np.tile(np.r_[np.zeros(5), np.ones(seq - 5)], (batch, 1)).astype(np.int32))
    return ids, ids, ones, ones, positions, documents      # input_ids, labels, attention_mask, loss_mask, packing


def _sharded(preset, par, **overrides):
    from telechat_ms import TelechatForCausalLM
    model = shard_model(TelechatForCausalLM(TelechatConfig.preset(preset, **overrides)), par)
    model.set_train(True)
    return model


@pytest.mark.parametrize("preset,overrides", [("tiny_gqa", {}), ("tiny_moe", {"moe_chunks": 2}),
                                             ("tiny_teleflm_gqa", {})])
def test_compiled_training_graph_runs_only_planned_primitives(preset, overrides):
    """The compiled forward graph (labels, attention_mask, loss_mask, position_ids, document_ids) holds no
    primitive outside the plans: no functional op, slice or tensor operator is left to MindSpore's default."""
    from telechat_ms.parallel.trace import check_traced
    par = ParallelConfig(data_parallel=2, model_parallel=2, expert_parallel=2 if "moe" in preset else 1)
    traced = check_traced(_sharded(preset, par, **overrides), par, *_trace_inputs())
    kinds = {op.kind for op in traced}
    assert {"Tile", "MaskedFill", "OneHot", "StridedSlice", "Split", "SiLU"} <= kinds and "GatherD" not in kinds
    if "moe" in preset:
        assert {"TensorScatterAdd", "Concat"} <= kinds and "ScatterNd" not in kinds


def _mlp_with_functional_silu(self, x):
    return self.w2(self.mul(MS_OPS.silu(self.w1(x)), self.w3(x))), self.zero


def _mlp_with_extra_primitive(self, x):
    return self.w2(self.mul(self.extra(self.w1(x)), self.w3(x))), self.zero


def test_trace_rejects_functional_ops_and_unplanned_primitives(monkeypatch):
    """A functional call in construct, or a cell-held primitive no plan covers, is named with its path."""
    from mindspore import ops as msops
    from telechat_ms.model import mlp
    from telechat_ms.parallel.trace import check_traced
    par = ParallelConfig(data_parallel=2, model_parallel=2)
    monkeypatch.setattr(mlp.MLP, "construct", _mlp_with_functional_silu)
    with pytest.raises(StrategyError, match=r"model\.layers\.\d\.feed_forward\.<SiLU>: SiLU runs in construct "
                                            r"without a cell-held primitive"):
        check_traced(_sharded("tiny", par), par, *_trace_inputs())
    monkeypatch.setattr(mlp.MLP, "construct", _mlp_with_extra_primitive)
    model = _sharded("tiny", par)
    for layer in model.model.layers:
        layer.feed_forward.extra = msops.ReLU()
    with pytest.raises(StrategyError, match=r"model\.layers\.\d\.feed_forward\.extra: ReLU runs in construct but "
                                            r"has no planned strategy"):
        check_traced(model, par, *_trace_inputs())
