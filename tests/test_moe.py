"""MoE block (issue 4): parity with a plain-torch reference, capacity priority, chunks, aux loss, training.

Everything runs on CPU in fp32. Compiled graphs are shared through module-scoped fixtures; every fixture and
test sets the execution mode itself because other test files may change it.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import nn

from telechat_ms import Kernels, TelechatForCausalLM
from telechat_ms.config.model import TelechatConfig
from telechat_ms.convert.names import hf_to_ms, name_table
from telechat_ms.model.moe import MoE, expert_capacity
from tests.reference.ms_loading import ms_model_from_hf_state
from tests.reference.torch_moe import (TorchMoE, build_moe_reference, load_moe, moe_grads_hf,
                                       random_hf_moe_state, total_aux)
from tests.reference.torch_telechat import reference_forward


def use_mode(mode=ms.GRAPH_MODE):
    ms.set_context(mode=mode)
    ms.set_device("CPU")


def moe_layer(config, hf_state=None, training=False, layer=0, groups=1, kernels=None) -> MoE:
    """A stand-alone MoE cell holding layer `layer` of an HF-named state (train/eval fixed before compiling)."""
    cell = MoE(config, kernels, groups=groups)
    if hf_state is not None:
        prefix = f"model.layers.{layer}.feed_forward."
        params = {k[len(prefix):]: v for k, v in hf_to_ms(hf_state, config).items() if k.startswith(prefix)}
        for p in cell.get_parameters():
            p.set_data(ms.Tensor(params.pop(p.name)))
        assert not params
    cell.set_train(training)   # before the first call: a compiled graph keeps the mode it was built with
    return cell


def run_layer(cell, x: np.ndarray):
    y, aux = cell(ms.Tensor(x))
    return y.asnumpy(), float(aux.asnumpy())


# ---------------------------------------------------------------- full-model parity with the torch reference

@pytest.fixture(scope="module")
def parity():
    use_mode()
    config = TelechatConfig.preset("tiny_moe", moe_token_dropping=False, router_z_loss_coef=1e-3)
    state = random_hf_moe_state(config, seed=3)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (2, 16))
    model = ms_model_from_hf_state(config, state)
    model.set_train(False)
    ref = build_moe_reference(config, state)
    return config, state, ids, model, ref


def test_parameter_names_follow_the_name_table(parity):
    config, _, _, model, _ = parity
    names = {p.name for p in model.get_parameters()}
    assert {f"model.layers.0.feed_forward.{n}" for n in
            ("router.dense.weight", "ffn.w1.weight", "ffn.w3.weight", "ffn.w2.weight", "ffn.w2.bias")} <= names
    shapes = {p.name: p.shape for p in model.get_parameters()}
    e, h, f = config.num_experts, config.hidden_size, config.ffn_hidden_size
    assert shapes["model.layers.1.feed_forward.ffn.w1.weight"] == (e, f, h)
    assert shapes["model.layers.1.feed_forward.ffn.w2.weight"] == (e, h, f)
    assert shapes["model.layers.1.feed_forward.ffn.w2.bias"] == (e, h)


def test_logits_loss_and_aux_match_reference(parity):
    use_mode()
    config, _, ids, model, ref = parity
    ids_ms = ms.Tensor(ids.astype(np.int32))
    logits = model(ids_ms).asnumpy()
    out = reference_forward(ref, ids, labels=ids)
    ref_aux = float(total_aux(ref).detach())
    assert np.abs(logits - out.logits.detach().numpy()).max() <= 1e-4
    _, aux = model.model(ids_ms)
    assert ref_aux > 0.01   # 2 layers x (alpha ~ 0.01 + z-loss)
    np.testing.assert_allclose(float(aux.asnumpy()), ref_aux, rtol=1e-5)
    loss = float(model(ids_ms, ids_ms).asnumpy())
    np.testing.assert_allclose(loss, out.loss.item() + ref_aux, rtol=1e-5)


def _stack_moe_grads(hf_grads, config):
    """HF-named per-expert grads -> our stacked names (through the production name table)."""
    out = {}
    for entry in name_table(config):
        if ".feed_forward." in entry.ms_key:
            tensors = [hf_grads[k] for k in entry.hf_keys]
            out[entry.ms_key] = np.stack(tensors) if entry.stack else tensors[0]
    return out


def test_gradients_match_reference(parity):
    use_mode()
    config, _, ids, model, ref = parity
    ids_ms = ms.Tensor(ids.astype(np.int32))
    params = model.trainable_params()
    loss, grads = ms.value_and_grad(model, None, params)(ids_ms, ids_ms)
    ref.zero_grad()
    out = reference_forward(ref, ids, labels=ids)
    (out.loss + total_aux(ref)).backward()
    expected = _stack_moe_grads(moe_grads_hf(ref), config)
    got = {p.name: g.asnumpy() for p, g in zip(params, grads)}
    assert len(expected) == 5 * config.num_layers
    for name, want in expected.items():
        rel = np.abs(got[name] - want).max() / np.abs(want).max()
        assert rel <= 1e-4, (name, rel)


# ---------------------------------------------------------------- capacity and priority

def test_expert_capacity_formula():
    assert expert_capacity(8, 2, 4, 0.5, True) == 2            # ceil(2*8*0.5/4)
    assert expert_capacity(8, 2, 4, 1.2, True) == 5            # ceil(4.8)
    assert expert_capacity(4, 4, 4, 2.0, True) == 4            # clipped to N
    assert expert_capacity(8, 2, 4, 0.5, False) == 8           # dropless: capacity = N
    assert expert_capacity(8, 2, 4, 1.2, True, multiple=4) == 8
    assert expert_capacity(8192, 4, 16, 1.2, True) == 2458


# choices (1st, 2nd) per token; C = ceil(2*8*0.5/4) = 2. Rank-major queues: expert 0 <- t0..t5 (1st): keeps
# t0, t1. expert 1 <- t6, t7 (1st) then t0, t1, t2 (2nd): keeps t6, t7 -- token-major order would keep t0, t1.
# expert 2 <- t3, t4, t5, t6 (2nd): keeps t3, t4. expert 3 <- t7 (2nd): kept.
CHOICES = [(0, 1), (0, 1), (0, 1), (0, 2), (0, 2), (0, 2), (1, 2), (1, 3)]
KEPT = [(1, 0), (1, 0), (0, 0), (0, 1), (0, 1), (0, 0), (1, 0), (1, 1)]
TOKEN_MAJOR_KEPT = [(1, 1), (1, 1), (0, 0), (0, 1), (0, 1), (0, 0), (0, 0), (0, 1)]
# Two token groups (t0-t3, t4-t7), each with its own queues and C = ceil(2*4*0.5/4) = 1. Group 0: expert 0 <-
# t0..t3 (1st): keeps t0; 2nd choices: expert 1 <- t0 (kept), t1, t2 (dropped); expert 2 <- t3 (kept).
# Group 1: 1st: expert 0 <- t4 (kept), t5 (dropped); expert 1 <- t6 (kept), t7 (dropped); 2nd: expert 2 <- t4
# (kept), t5, t6 (dropped); expert 3 <- t7 (kept).
KEPT_TWO_GROUPS = [(1, 1), (0, 0), (0, 0), (0, 1), (1, 1), (0, 0), (1, 0), (0, 1)]


def _indicator_layer(config, training, groups=1):
    """Router = identity on the first E dims; experts output only their bias e_e (so y shows kept weights)."""
    cell = moe_layer(config, training=training, groups=groups)
    e, h = config.num_experts, config.hidden_size
    params = {p.name: p for p in cell.get_parameters()}
    params["router.dense.weight"].set_data(ms.Tensor(np.eye(e, h, dtype=np.float32)))
    for name in ("ffn.w1.weight", "ffn.w3.weight", "ffn.w2.weight"):
        params[name].set_data(ms.Tensor(np.zeros(params[name].shape, np.float32)))
    params["ffn.w2.bias"].set_data(ms.Tensor(np.eye(e, h, dtype=np.float32)))
    return cell


def _expected_indicator(config, kept):
    y = np.zeros((1, len(CHOICES), config.hidden_size), np.float32)
    w = np.exp([4.0, 2.0]) / np.exp([4.0, 2.0]).sum()    # renormalised top-2 of logits (4, 2, 0, 0)
    for t, (choices, keep) in enumerate(zip(CHOICES, kept)):
        for r in range(2):
            y[0, t, choices[r]] += keep[r] * w[r]
    return y


def test_capacity_drops_by_choice_rank_priority():
    use_mode()
    config = TelechatConfig.preset("tiny_moe", moe_capacity_factor=0.5, moe_token_dropping=True)
    x = np.zeros((1, len(CHOICES), config.hidden_size), np.float32)
    for t, (first, second) in enumerate(CHOICES):
        x[0, t, first], x[0, t, second] = 4.0, 2.0
    y_train, _ = run_layer(_indicator_layer(config, training=True), x)
    np.testing.assert_allclose(y_train, _expected_indicator(config, KEPT), atol=1e-6)
    assert np.abs(y_train - _expected_indicator(config, TOKEN_MAJOR_KEPT)).max() > 0.1
    y_eval, _ = run_layer(_indicator_layer(config, training=False), x)   # eval is dropless
    np.testing.assert_allclose(y_eval, _expected_indicator(config, [(1, 1)] * len(CHOICES)), atol=1e-6)
    y_groups, _ = run_layer(_indicator_layer(config, training=True, groups=2), x)   # per-group queues
    np.testing.assert_allclose(y_groups, _expected_indicator(config, KEPT_TWO_GROUPS), atol=1e-6)


@pytest.mark.parametrize("chunks,groups", [(1, 1), (2, 1), (2, 2)])
def test_random_dropping_matches_reference(chunks, groups):
    """Capacity per chunk and per token group against the reference's explicit per-expert queues."""
    use_mode()
    config = TelechatConfig.preset("tiny_moe", num_layers=1, moe_capacity_factor=1.0, moe_chunks=chunks)
    state = random_hf_moe_state(config, seed=5, router_std=1.0)
    ref = TorchMoE(config, capacity_factor=1.0, chunks=chunks, groups=groups)
    load_moe(ref, state, 0)
    x = np.random.default_rng(1).normal(0, 1, (2, 16, config.hidden_size)).astype(np.float32)
    y, aux = run_layer(moe_layer(config, state, training=True, groups=groups), x)
    with torch.no_grad():
        y_ref = ref(torch.from_numpy(x)).numpy()
        idx = torch.topk(torch.softmax(ref.router(torch.from_numpy(x)), -1), 2, -1).indices
        keep = ref.keep_mask(idx)
    assert int((~keep).sum()) > 0                         # the case really exercises dropping
    if groups > 1:                                        # and per-group queues really differ from global ones
        assert not torch.equal(keep, TorchMoE(config, 1.0, chunks).keep_mask(idx))
    assert np.abs(y - y_ref).max() <= 1e-5
    np.testing.assert_allclose(aux, float(ref.aux), rtol=1e-5)


def test_gradients_with_groups_and_dropping_match_reference():
    """Layer gradients (router and every expert tensor) with G = 2 groups, token dropping and z-loss."""
    use_mode()
    config = TelechatConfig.preset("tiny_moe", num_layers=1, moe_capacity_factor=1.0, router_z_loss_coef=1e-3)
    state = random_hf_moe_state(config, seed=11, router_std=1.0)
    rng = np.random.default_rng(12)
    x = rng.normal(0, 1, (2, 16, config.hidden_size)).astype(np.float32)
    probe = rng.normal(0, 1, x.shape).astype(np.float32)
    cell = moe_layer(config, state, training=True, groups=2)

    def objective(inp):
        y, aux = cell(inp)
        return (y * ms.Tensor(probe)).sum() + aux
    params = cell.trainable_params()
    _, grads = ms.value_and_grad(objective, None, params)(ms.Tensor(x))
    ref = TorchMoE(config, capacity_factor=1.0, groups=2)
    load_moe(ref, state, 0)
    ((ref(torch.from_numpy(x)) * torch.from_numpy(probe)).sum() + ref.aux).backward()
    expected = {"router.dense.weight": ref.router.weight.grad.numpy(),
                "ffn.w2.bias": np.stack([e.down_proj.bias.grad.numpy() for e in ref.local_experts])}
    for ours, theirs in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
        expected[f"ffn.{ours}.weight"] = np.stack([getattr(e, theirs).weight.grad.numpy() for e in ref.local_experts])
    got = {p.name: g.asnumpy() for p, g in zip(params, grads)}
    assert set(got) == set(expected)
    for name, want in expected.items():
        rel = np.abs(got[name] - want).max() / np.abs(want).max()
        assert rel <= 1e-4, (name, rel)


# ---------------------------------------------------------------- chunks and groups

@pytest.mark.parametrize("chunks,groups", [(4, 1), (1, 2), (2, 4)])
def test_dropless_identical_for_any_chunks_and_groups(chunks, groups, dropless_base):
    """Dropless: outputs do not depend on chunks or groups; aux does not depend on chunks and is the per-group
    mean for G > 1 (reference formula)."""
    use_mode()
    base, state, x, (y0, aux0) = dropless_base
    config = dataclasses.replace(base, moe_chunks=chunks)
    y, aux = run_layer(moe_layer(config, state, training=True, groups=groups), x)
    assert np.abs(y - y0).max() <= 1e-6
    ref = TorchMoE(config, groups=groups)
    load_moe(ref, state, 0)
    with torch.no_grad():
        ref(torch.from_numpy(x))
    assert aux == pytest.approx(float(ref.aux), rel=1e-5)
    if groups == 1:
        assert aux == pytest.approx(aux0, rel=1e-6)


@pytest.fixture(scope="module")
def dropless_base():
    use_mode()
    base = TelechatConfig.preset("tiny_moe", num_layers=1, moe_token_dropping=False)
    state = random_hf_moe_state(base, seed=7)
    x = np.random.default_rng(2).normal(0, 1, (2, 16, base.hidden_size)).astype(np.float32)
    return base, state, x, run_layer(moe_layer(base, state, training=True), x)


def test_chunks_must_divide_sequence():
    use_mode()
    config = TelechatConfig.preset("tiny_moe", num_layers=1, moe_chunks=4)
    with pytest.raises(ValueError, match="moe_chunks=4"):
        run_layer(moe_layer(config), np.zeros((2, 6, config.hidden_size), np.float32))


def test_groups_must_divide_chunk_tokens():
    use_mode()
    config = TelechatConfig.preset("tiny_moe", num_layers=1, moe_chunks=2)
    with pytest.raises(ValueError, match="groups=4 .* 6 tokens per chunk"):
        run_layer(moe_layer(config, groups=4), np.zeros((1, 12, config.hidden_size), np.float32))


# ---------------------------------------------------------------- aux loss

@pytest.fixture(scope="module")
def aux_layer():
    use_mode()
    config = TelechatConfig.preset("tiny_moe", num_layers=1)
    return config, _indicator_layer(config, training=False)


def _aux_numpy(config, logits):
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    top = np.argsort(-probs, -1, kind="stable")[:, :config.num_experts_per_tok]
    f = np.bincount(top.reshape(-1), minlength=config.num_experts) / top.size
    return config.router_aux_loss_coef * config.num_experts * float((f * probs.mean(0)).sum())


def _aux_with_logits(config, cell, logits):
    x = np.zeros((1, logits.shape[0], config.hidden_size), np.float32)
    x[0, :, :config.num_experts] = logits                  # identity router: logits = x[:E]
    return run_layer(cell, x)[1]


def test_aux_uniform_probs_gives_alpha(aux_layer):
    use_mode()
    config, cell = aux_layer
    aux = _aux_with_logits(config, cell, np.zeros((8, config.num_experts), np.float32))
    assert aux == pytest.approx(config.router_aux_loss_coef, rel=1e-6)


def test_aux_balanced_assignment_gives_alpha(aux_layer):
    use_mode()
    config, cell = aux_layer
    pairs = [(0, 1), (1, 2), (2, 3), (3, 0), (0, 2), (1, 3), (2, 0), (3, 1)]   # every expert chosen 4 times
    logits = np.random.default_rng(4).uniform(-1.0, 0.0, (8, config.num_experts)).astype(np.float32)
    for t, (a, b) in enumerate(pairs):
        logits[t, a], logits[t, b] = 3.0 + 0.3 * t, 1.5 + 0.1 * t                  # non-uniform probs
    aux = _aux_with_logits(config, cell, logits)
    assert aux == pytest.approx(_aux_numpy(config, logits), rel=1e-6)
    assert aux == pytest.approx(config.router_aux_loss_coef, rel=1e-6)


def test_aux_collapsed_routing_gives_maximum(aux_layer):
    use_mode()
    config, cell = aux_layer
    k, e, alpha = config.num_experts_per_tok, config.num_experts, config.router_aux_loss_coef
    logits = np.full((8, e), -20.0, np.float32)
    logits[:, :k] = 20.0                                    # every token picks experts 0..k-1
    aux = _aux_with_logits(config, cell, logits)
    assert aux == pytest.approx(_aux_numpy(config, logits), rel=1e-6)
    assert aux == pytest.approx(alpha * e / k, rel=1e-6)    # max of alpha*E*sum f_i P_i (f_i <= 1/k)
    random_logits = np.random.default_rng(5).normal(0, 2, (8, e)).astype(np.float32)
    assert _aux_with_logits(config, cell, random_logits) < alpha * e / k


# ---------------------------------------------------------------- preset size

def test_39b_a12b_parameter_count():
    config = TelechatConfig.preset("39b_a12b")
    assert config.num_parameters() == pytest.approx(39.33e9, rel=5e-3)
    assert config.num_parameters(active=True) == pytest.approx(12.15e9, rel=5e-3)


# ---------------------------------------------------------------- execution modes and training

def test_graph_and_pynative_agree():
    config = TelechatConfig.preset("tiny_moe", num_layers=1, moe_capacity_factor=1.0, moe_chunks=2)
    state = random_hf_moe_state(config, seed=9, router_std=1.0)
    x = np.random.default_rng(3).normal(0, 1, (2, 8, config.hidden_size)).astype(np.float32)
    results = []
    for mode in (ms.GRAPH_MODE, ms.PYNATIVE_MODE):
        use_mode(mode)
        for training in (False, True):        # dropless and capacity-dropping paths
            results.append(run_layer(moe_layer(config, state, training=training), x))
    use_mode()
    for (y_graph, aux_graph), (y_py, aux_py) in zip(results[:2], results[2:]):
        assert np.abs(y_graph - y_py).max() <= 1e-6
        assert aux_graph == pytest.approx(aux_py, rel=1e-6)


def _expert_counts(model, ids):
    """Assignments per expert of every layer, from the MoE inputs captured in one pynative forward."""
    inputs = []
    handles = [layer.feed_forward.register_forward_pre_hook(lambda cell, args: inputs.append(args[0].asnumpy()))
               for layer in model.model.layers]
    use_mode(ms.PYNATIVE_MODE)
    model(ms.Tensor(ids))
    use_mode()
    for handle in handles:
        handle.remove()
    counts = []
    for layer, x in zip(model.model.layers, inputs):
        logits = x.reshape(-1, x.shape[-1]) @ layer.feed_forward.router.dense.weight.asnumpy().T
        top = np.argsort(-logits, -1)[:, :model.config.num_experts_per_tok]   # softmax keeps the order
        counts.append(np.bincount(top.reshape(-1), minlength=model.config.num_experts))
    return counts


def test_training_lowers_loss_and_uses_every_expert():
    use_mode()
    ms.set_seed(0)
    config = TelechatConfig.preset("tiny_moe")           # token dropping on (capacity factor 1.2) in training
    model = TelechatForCausalLM(config)
    ids = np.random.default_rng(6).integers(0, config.vocab_size, (4, 16)).astype(np.int32)
    optimizer = nn.AdamWeightDecay(model.trainable_params(), learning_rate=3e-3, weight_decay=0.0)
    step = nn.TrainOneStepCell(model, optimizer)
    step.set_train(True)
    ids_ms = ms.Tensor(ids)
    losses = [float(step(ids_ms, ids_ms).asnumpy()) for _ in range(50)]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.7 * losses[0], losses
    model.set_train(False)
    for counts in _expert_counts(model, ids):
        assert (counts > 0).all(), counts


# ---------------------------------------------------------------- Ascend grouped-matmul path (selection only)

def test_grouped_matmul_flag_holds_the_ascend_primitives_and_keeps_the_plain_path():
    """Kernels.grouped_matmul (set for Ascend) makes every MoE hold GroupedMatmul / MoeTokenPermute /
    MoeTokenUnpermute (no CPU kernels: never executed here). Token dropping (training) still takes the capacity
    path, which is exactly the plain one; a plain build holds none of the Ascend primitives."""
    assert Kernels.for_device("Ascend").grouped_matmul and not Kernels.for_device("CPU").grouped_matmul
    config = TelechatConfig.preset("tiny_moe", num_layers=1, moe_capacity_factor=1.0)
    fused = TelechatForCausalLM(config, Kernels(grouped_matmul=True))
    for layer in fused.model.layers:
        moe = layer.feed_forward
        assert moe.use_grouped_matmul
        assert type(moe.ffn.gmm).__name__ == "GroupedMatmul" and moe.ffn.gmm.attrs["transpose_b"]
        assert type(moe.token_permute).__name__ == "MoeTokenPermute"
        assert type(moe.token_unpermute).__name__ == "MoeTokenUnpermute"
    plain = TelechatForCausalLM(config).model.layers[0].feed_forward
    assert not plain.use_grouped_matmul
    assert not any(hasattr(plain, a) for a in ("token_permute", "token_unpermute")) and not hasattr(plain.ffn, "gmm")
    use_mode()
    state = random_hf_moe_state(config, seed=13, router_std=1.0)
    x = np.random.default_rng(8).normal(0, 1, (2, 8, config.hidden_size)).astype(np.float32)
    y_fused, aux_fused = run_layer(moe_layer(config, state, training=True, kernels=Kernels(grouped_matmul=True)), x)
    y_plain, aux_plain = run_layer(moe_layer(config, state, training=True), x)
    assert np.array_equal(y_fused, y_plain) and aux_fused == aux_plain


def _stand_in_permute(tokens, indices):
    """moe_token_permute as documented: rows sorted (stably) by expert; returns the inverse row map."""
    idx = indices.asnumpy()
    order = np.argsort(idx.reshape(-1), kind="stable")
    row_map = np.empty_like(order)
    row_map[order] = np.arange(order.size)
    return ms.Tensor(tokens.asnumpy()[order // idx.shape[1]]), ms.Tensor(row_map.astype(np.int32))


def _stand_in_unpermute(rows, row_map, probs):
    """moe_token_unpermute as documented: out_t = sum_j probs_tj * rows[row_map[t*k + j]]."""
    p = probs.asnumpy()
    picked = rows.asnumpy()[row_map.asnumpy()].reshape(p.shape[0], p.shape[1], -1)
    return ms.Tensor((picked * p[..., None]).sum(1).astype(np.float32))


def _stand_in_gmm(x, weight, *args):
    """GroupedMatmul(split_item=3, group_type=0, transpose_b=True): rows [end_{e-1}, end_e) times W_e^T."""
    rows, w, ends = x[0].asnumpy(), weight[0].asnumpy(), args[-1].asnumpy()
    out, start = np.zeros((rows.shape[0], w.shape[1]), np.float32), 0
    for e, end in enumerate(ends):
        out[start:end] = rows[start:end] @ w[e].T
        start = end
    return (ms.Tensor(out),)


def test_grouped_matmul_glue_with_cpu_stand_ins():
    """The fused path's own code (group_list from counts, fp32 unpermute, weighted bias) with documented-semantics
    stand-ins for the three Ascend kernels, PyNative: equals the plain dropless layer. Proves the glue only,
    not the kernels."""
    use_mode(ms.PYNATIVE_MODE)
    try:
        config = TelechatConfig.preset("tiny_moe", num_layers=1)
        state = random_hf_moe_state(config, seed=14, router_std=1.0)
        x = np.random.default_rng(9).normal(0, 1, (2, 8, config.hidden_size)).astype(np.float32)
        fused = moe_layer(config, state, kernels=Kernels(grouped_matmul=True))
        fused.token_permute, fused.token_unpermute, fused.ffn.gmm = (_stand_in_permute, _stand_in_unpermute,
                                                                     _stand_in_gmm)
        y_fused, aux_fused = run_layer(fused, x)
        y_plain, aux_plain = run_layer(moe_layer(config, state), x)
        assert np.abs(y_fused - y_plain).max() <= 1e-6 and aux_fused == pytest.approx(aux_plain, rel=1e-6)
    finally:
        use_mode()
