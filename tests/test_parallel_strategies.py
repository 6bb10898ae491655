"""Shard strategies: stand-alone numerics unchanged, shape table equal to a real run, layouts of each axis."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor

from telechat_ms import ConfigError, TelechatConfig, TelechatForCausalLM
from telechat_ms.config.parallel import ParallelConfig
from telechat_ms.parallel.moe_layout import moe_layout, moe_plan, moe_strategies, shard_moe
from telechat_ms.parallel.pipeline import apply_parallel
from telechat_ms.parallel.shapes import SCALAR, Multiples, ShapeContext, op_calls
from telechat_ms.parallel.strategies import UNITS, Split, plan_for, resolve, shard_model

from .conftest import set_mode

LAYOUT = ParallelConfig(data_parallel=2, model_parallel=2, pipeline_stage=2, micro_batch_num=2,
                        use_seq_parallel=True, vocab_emb_dp=False, select_recompute=True, recompute=[1, 0])


def _pair(preset):
    ms.set_seed(0)
    ref = TelechatForCausalLM(TelechatConfig.preset(preset))
    ms.set_seed(0)
    sharded = TelechatForCausalLM(TelechatConfig.preset(preset))
    net = apply_parallel(sharded, LAYOUT)              # strategies + stages + recompute, wrapped for pp 2
    if sharded.config.is_moe:
        for layer in sharded.model.layers:
            shard_moe(layer.feed_forward, LAYOUT)
    return ref, sharded, net


def _loss_and_grads(model, ids):
    def forward(x):
        return model(x, x)
    return ms.value_and_grad(forward, None, model.trainable_params())(ids)


def test_standalone_numerics_unchanged_by_strategies_stages_and_recompute():
    """use_parallel False: MindSpore ignores strategies; recompute only changes what is stored."""
    set_mode("graph")
    ref, sharded, net = _pair("tiny_gqa")
    assert type(net).__name__ == "PipelineCell"
    ids = Tensor(np.random.default_rng(0).integers(0, 512, (2, 16)).astype(np.int32))
    assert np.array_equal(ref(ids).asnumpy(), sharded(ids).asnumpy())
    (loss_a, grads_a), (loss_b, grads_b) = _loss_and_grads(ref, ids), _loss_and_grads(sharded, ids)
    assert loss_a.asnumpy() == loss_b.asnumpy()
    assert all(np.array_equal(a.asnumpy(), b.asnumpy()) for a, b in zip(grads_a, grads_b))


def test_select_recompute_marks_every_score_sized_op_of_the_plain_attention():
    """select_recompute recomputes the (B, N, S, S) ops of the plain attention instead of storing them: the
    scaling, the head-tiled mask, the masked fill and the softmax."""
    model = TelechatForCausalLM(TelechatConfig.preset("tiny"))
    apply_parallel(model, ParallelConfig(select_recompute=True))
    core = model.model.layers[0].attention.core
    assert all(getattr(core, name).attrs.get("recompute") is True
               for name in ("mul_scale", "tile_mask", "fill", "softmax"))


def test_standalone_moe_logits_unchanged():
    """Eval (dropless): per-group dispatch (G = dp' = 2) and capacity rounding cannot change the logits. The aux
    loss becomes the official per-group one: with G = 2 groups = the 2 batch rows, it is the mean of each row's
    aux alone; the LM part of the loss is unchanged."""
    set_mode("graph")
    ref, sharded, _ = _pair("tiny_moe")
    assert [layer.feed_forward.groups for layer in sharded.model.layers] == [2, 2]
    ids = Tensor(np.random.default_rng(1).integers(0, 512, (2, 16)).astype(np.int32))
    assert np.array_equal(ref(ids).asnumpy(), sharded(ids).asnumpy())
    aux_ref, aux_sharded = (float(m.model(ids)[1].asnumpy()) for m in (ref, sharded))
    per_row = [float(ref.model(ids[i:i + 1])[1].asnumpy()) for i in range(2)]
    assert aux_sharded == pytest.approx(np.mean(per_row), rel=1e-6) and aux_sharded != aux_ref
    lm_ref = float(ref(ids, ids).asnumpy()) - aux_ref
    lm_sharded = float(sharded(ids, ids).asnumpy()) - aux_sharded
    assert lm_sharded == pytest.approx(lm_ref, abs=1e-6)


@pytest.mark.parametrize("preset", ["tiny_teleflm_gqa", "tiny_telechat1"])
def test_standalone_family_logits_unchanged_by_strategies(preset):
    """Multiplier Mul ops with strategies (Tele-FLM) and the tied Parameter (TeleChat v1): stand-alone logits
    and loss are bit-identical (pynative forward; the graph-mode gradient check above covers the rest)."""
    set_mode("pynative")
    try:
        ms.set_seed(0)
        ref = TelechatForCausalLM(TelechatConfig.preset(preset))
        ms.set_seed(0)
        sharded = shard_model(TelechatForCausalLM(TelechatConfig.preset(preset)), LAYOUT)
        ids = Tensor(np.random.default_rng(2).integers(0, 512, (2, 12)).astype(np.int32))
        assert np.array_equal(ref(ids).asnumpy(), sharded(ids).asnumpy())
        assert ref(ids, ids).asnumpy() == sharded(ids, ids).asnumpy()
    finally:
        set_mode("graph")


# ----------------------------------------------------------------------------- shape table vs a real run
def _planned(model, parallel):
    out, units = {}, []
    for path, cell in model.cells_and_names():
        if any(path.startswith(u + ".") for u in units):
            continue
        if type(cell).__name__ in UNITS:
            units.append(path)
        try:
            plan = plan_for(cell, parallel)
        except ConfigError:
            continue
        for name in plan:
            out[id(resolve(cell, name))] = (cell, name)
    return out


def _record(model, planned, args):
    """Input shapes of every call of the planned primitives during one pynative forward."""
    seen: dict = {}
    classes = {type(resolve(cell, name)) for cell, name in planned.values()}
    originals = {cls: cls.__call__ for cls in classes}

    def tensor_shapes(values):
        out = []
        for v in values:
            items = v if isinstance(v, (tuple, list)) else (v,)
            out.extend(tuple(x.shape) for x in items if isinstance(x, Tensor) and x.ndim)
        return out

    def make(orig):
        def wrapper(self, *a, **k):
            if id(self) in planned:
                seen.setdefault(id(self), []).append(tensor_shapes(a))
            return orig(self, *a, **k)
        return wrapper
    for cls, orig in originals.items():
        cls.__call__ = make(orig)
    try:
        model(*args)
    finally:
        for cls, orig in originals.items():
            cls.__call__ = orig
    return seen


def _expected(cell, name, config, ctx):
    calls = []
    for call in op_calls(cell, config, ctx).get(name, []):
        shapes = [tuple(map(int, s)) for s in call if s != SCALAR and not isinstance(s, Multiples)]
        if type(resolve(cell, name)).__name__ == "OneHot":
            shapes = [shapes[0][:-1]]                    # the table gives OneHot's output; the input lacks depth
        calls.append(shapes)
    return sorted(calls)


@pytest.mark.parametrize("preset,overrides,inputs", [
    ("tiny", {}, "loss_mask"), ("tiny_gqa", {}, "loss_mask"), ("tiny_moe", {"moe_chunks": 2}, "loss_mask"),
    ("tiny_teleflm_gqa", {}, "loss_mask"), ("tiny_telechat1", {}, "loss_mask"),
    ("tiny_gqa", {}, "padded_packed")])
def test_shape_table_equals_shapes_of_a_real_run(preset, overrides, inputs):
    """parallel/shapes.py (used for 115B, where nothing can run) against a recorded pynative run; with
    "padded_packed" the run also feeds attention_mask, position_ids and document_ids (mask and rope-gather ops)."""
    set_mode("pynative")
    try:
        config = TelechatConfig.preset(preset, **overrides)
        model = TelechatForCausalLM(config)
        parallel = ParallelConfig(data_parallel=2, model_parallel=2)
        shard_model(model, parallel)
        for layer in model.model.layers:
            if config.is_moe:
                shard_moe(layer.feed_forward, parallel)
        model.set_train(True)                          # MoE capacity with dropping, as in training
        batch, seq = 2, 8
        ids = Tensor(np.random.default_rng(0).integers(0, 512, (batch, seq)).astype(np.int32))
        ones = Tensor(np.ones((batch, seq), np.float32))
        args = (ids, ids, None, ones)
        if inputs == "padded_packed":
            positions = Tensor(np.tile(np.r_[np.arange(5), np.arange(3)], (batch, 1)).astype(np.int32))
            documents = Tensor(np.tile(np.r_[np.zeros(5), np.ones(3)], (batch, 1)).astype(np.int32))
            args = (ids, ids, Tensor(np.ones((batch, seq), np.int32)), ones, positions, documents)
        planned = _planned(model, parallel)
        seen = _record(model, planned, args)
        packed = inputs == "padded_packed"
        ctx = ShapeContext(batch, seq, training=True, padded=packed, packed=packed)
        for key, (cell, name) in planned.items():
            got = sorted(seen.get(key, []))
            assert got == _expected(cell, name, config, ctx), f"{type(cell).__name__}.{name}"
        assert len(planned) > 80
        multipliers = config.embedding_multiplier != 1.0, config.logit_multiplier != 1.0
        assert (id(model.model.mul_embed) in planned, id(model.mul_logits) in planned) == multipliers
    finally:
        set_mode("graph")


# ----------------------------------------------------------------------------- layouts per axis
def test_column_and_row_parallel_linears():
    model = TelechatForCausalLM(TelechatConfig.preset("tiny_gqa"))
    model.shard(ParallelConfig(data_parallel=2, model_parallel=2, use_seq_parallel=True, vocab_emb_dp=False))
    att, mlp = model.model.layers[0].attention, model.model.layers[0].feed_forward
    assert att.wq.matmul.attrs["in_strategy"] == ((2, 1), (2, 1))
    # wk_v rows [K_0; V_0; K_1; V_1]: 2 kv heads by mp 2 -> each rank holds one whole (K_h, V_h) pair
    assert att.wk_v.matmul.attrs["in_strategy"] == ((2, 1), (2, 1))
    assert att.wo.matmul.attrs["in_strategy"] == ((2, 2), (1, 2))
    assert att.wo.matmul.attrs["out_strategy"] == ((4, 1),)          # reduce-scatter onto tokens (SP)
    assert att.wo.bias_add.attrs["in_strategy"] == ((4, 1), (1,))     # bias added once, after the reduction
    assert mlp.w2.matmul.attrs["in_strategy"] == ((2, 2), (1, 2))
    # plain path: the norm runs on the (B*S, H) rows split dp x sp; the weight (1, H) is tiled to that layout
    # before the product, and its gradient's row sum reduces over the split rows
    rows = model.model.layers[0].attention_norm.rows
    assert rows.tile_weight.attrs["in_strategy"] == ((4, 1),)
    assert rows.mul_weight.attrs["in_strategy"] == ((4, 1), (4, 1))
    assert rows.sum_dw.attrs["in_strategy"] == ((4, 1),)
    assert model.model.tok_embeddings.gather.attrs["in_strategy"] == ((2, 1), (2, 1))
    assert model.lm_head.matmul.attrs["in_strategy"] == ((2, 1), (2, 1))
    assert model.loss.row_max.attrs["in_strategy"] == ((2, 2),)


def test_vocab_emb_dp_replicates_table_and_head():
    model = TelechatForCausalLM(TelechatConfig.preset("tiny"))
    model.shard(ParallelConfig(data_parallel=2, model_parallel=2))
    assert model.model.tok_embeddings.gather.attrs["in_strategy"] == ((1, 1), (2, 1))
    assert model.lm_head.matmul.attrs["in_strategy"] == ((2, 1), (1, 1))
    assert model.loss.exp.attrs["in_strategy"] == ((2, 1),)
    assert "out_strategy" not in model.model.layers[0].attention.wo.matmul.attrs   # all-reduce without SP


def test_split_remembers_fields():
    dp, mp = Split(2, ("data_parallel",)), Split(4, ("model_parallel",))
    both = dp * mp
    assert both == 8 and both.fields == ("data_parallel", "model_parallel")
    assert "8 from data_parallel x model_parallel" == both.describe()


def test_moe_layout_with_and_without_ep_extend_tp():
    official = ParallelConfig(data_parallel=128, model_parallel=4, pipeline_stage=2, expert_parallel=2,
                              micro_batch_num=4, ep_extend_tp=True)
    moe = TelechatConfig.preset("39b_a12b")
    lay = moe_layout(official, moe)
    assert (int(lay.dp), int(lay.ep), int(lay.mp), int(lay.slot)) == (512, 8, 1, 64)   # spec §4.4: ep' = 8
    plain = moe_layout(official.replace(ep_extend_tp=False), moe)
    assert (int(plain.dp), int(plain.ep), int(plain.mp), int(plain.slot)) == (128, 2, 4, 64)
    named = moe_strategies(official, moe)
    assert named["ffn.w1"]["bmm"].plain()[0] == ((8, 64, 1), (8, 1, 1))      # experts by ep', slots by dp/ep
    assert named["ffn.w2"]["bmm"].plain()[0] == ((8, 64, 1), (8, 1, 1))
    assert named["router.dense"]["matmul"].plain()[0] == ((512, 1), (1, 1))  # tokens by dp' = dp * mp
    with pytest.raises(ConfigError, match=r"expert_parallel \(3\) must divide data_parallel \(128\)"):
        moe_layout(official.replace(expert_parallel=3), moe)
    with pytest.raises(ConfigError, match="num_experts .16. must be divisible by the expert split 32"):
        moe_layout(official.replace(expert_parallel=8), moe)


def test_moe_plan_paths_exist_on_the_moe_cells():
    """Drift detector: every planned MoE primitive exists (the block is written separately)."""
    model = TelechatForCausalLM(TelechatConfig.preset("tiny_moe"))
    moe = model.model.layers[0].feed_forward
    plan = moe_plan(moe, ParallelConfig(data_parallel=2, expert_parallel=2))
    expected = {p for prefix, sub in moe_strategies(ParallelConfig(data_parallel=2, expert_parallel=2)).items()
                for p in (f"{prefix}.{n}" if prefix else n for n in sub)}
    assert set(plan) == expected - {"ffn.w1.bias_add", "ffn.w3.bias_add", "ffn.w1.expand", "ffn.w3.expand"}
