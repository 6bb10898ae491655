"""Parity of our model with an independent torch reference (transformers Llama + TeleChat2 rotary), fp32.

Weights go through the production name table (telechat_ms.convert.names). Lengths cover plain RoPE
(S <= training_seqlen = 32), NTK alpha 3 with mscale (S = 40) and alpha 7 (S = 70).
"""
import dataclasses

import mindspore as ms
import numpy as np
import pytest

from telechat_ms import TelechatConfig
from telechat_ms.convert.names import hf_to_ms

from .conftest import set_mode
from .reference.ms_loading import ms_model_from_hf_state
from .reference.torch_telechat import (build_reference, random_hf_state, reference_forward, reference_grads_hf,
                                      reference_loss)

LENGTHS = (20, 40, 70)


@pytest.fixture(scope="module", params=["tiny", "tiny_gqa"])
def pair(request):
    set_mode("graph")
    config = TelechatConfig.preset(request.param)
    state = random_hf_state(config, seed=1)
    return config, build_reference(config, state), ms_model_from_hf_state(config, state)


def _ids(config, seq, batch=2, seed=0):
    return np.random.default_rng(seed + seq).integers(0, config.vocab_size, (batch, seq)).astype(np.int32)


@pytest.mark.parametrize("seq", LENGTHS)
def test_logits_and_loss_match_reference(pair, seq):
    config, ref, ours = pair
    ids = _ids(config, seq)
    labels = ids.copy()
    labels[:, :3] = -100                       # ignored positions count in neither numerator nor denominator
    out = reference_forward(ref, ids, labels=labels)
    logits = ours(ms.Tensor(ids)).asnumpy()
    ref_logits = out.logits.detach().numpy()
    assert np.abs(logits - ref_logits).max() <= 1e-4, np.abs(logits - ref_logits).max()
    loss = float(ours(ms.Tensor(ids), ms.Tensor(labels)).asnumpy())
    assert abs(loss - float(reference_loss(ref, ids, labels).detach())) <= 1e-5
    if seq <= config.training_seqlen:           # same NTK for S and S-1: HF's own labels= loss agrees too
        assert abs(loss - float(out.loss.detach())) <= 1e-5


def test_loss_ntk_length_excludes_the_target_only_token(pair):
    """A (training_seqlen + 1)-token row (seq_length + 1 preprocessing) trains with plain RoPE: its loss is
    the loss of the training_seqlen context positions, not of a forward rotated with NTK alpha 3."""
    config, ref, ours = pair
    ids = _ids(config, config.training_seqlen + 1)
    loss = float(ours(ms.Tensor(ids), ms.Tensor(ids)).asnumpy())
    assert abs(loss - float(reference_loss(ref, ids, ids).detach())) <= 1e-5
    hf_own = float(reference_forward(ref, ids, labels=ids).loss.detach())     # alpha 3 over all 33 positions
    assert abs(loss - hf_own) > 1e-4


def test_loss_mask_equals_ignored_labels(pair):
    config, ref, ours = pair
    ids = _ids(config, 24)
    mask = np.ones_like(ids)
    mask[:, :10] = 0                            # SFT: no loss on the prompt
    labels = np.where(mask == 1, ids, -100).astype(np.int32)
    expected = float(reference_loss(ref, ids, labels).detach())
    got = float(ours(ms.Tensor(ids), ms.Tensor(ids), None, ms.Tensor(mask)).asnumpy())
    assert abs(got - expected) <= 1e-5


def test_gradients_match_reference(pair):
    config, ref, ours = pair
    ids = _ids(config, 40)
    ref.zero_grad()
    reference_loss(ref, ids, ids).backward()
    expected = hf_to_ms(reference_grads_hf(ref, config), config)
    params = ours.trainable_params()
    grad_fn = ms.value_and_grad(ours, grad_position=None, weights=params)
    _, grads = grad_fn(ms.Tensor(ids), ms.Tensor(ids))
    assert len(grads) == len(expected)
    for param, grad in zip(params, grads):
        want = expected[param.name]
        rel = np.abs(grad.asnumpy() - want).max() / max(np.abs(want).max(), 1e-12)
        assert rel <= 1e-4, (param.name, rel)


def test_padded_batch_matches_reference(pair):
    config, ref, ours = pair
    ids = _ids(config, 36)
    mask = np.ones_like(ids)
    mask[0, :7] = 0                              # left padding in row 0 (positions still count pads, as HF)
    mask[1, -5:] = 0                             # right padding in row 1
    expected = reference_forward(ref, ids, attention_mask=mask).logits.detach().numpy()
    got = ours(ms.Tensor(ids), None, ms.Tensor(mask)).asnumpy()
    keep = mask.astype(bool)
    assert np.abs(got[keep] - expected[keep]).max() <= 1e-4


@pytest.mark.parametrize("variant", ["no_fp16_rounding", "embed_layernorm", "post_ln_residual"])
def test_architecture_options_match_reference(variant):
    set_mode("graph")
    overrides = {"no_fp16_rounding": dict(rotary_fp16_rounding=False), "embed_layernorm": dict(embed_layernorm=True),
                 "post_ln_residual": dict(apply_residual_connection_post_layernorm=True)}[variant]
    config = dataclasses.replace(TelechatConfig.preset("tiny_gqa"), **overrides)
    state = random_hf_state(config, seed=2)
    ref = build_reference(config, state, fp16_rounding=config.rotary_fp16_rounding)
    ours = ms_model_from_hf_state(config, state)
    ids = _ids(config, 40)
    diff = np.abs(ours(ms.Tensor(ids)).asnumpy() - reference_forward(ref, ids).logits.detach().numpy()).max()
    assert diff <= 1e-4, diff


def test_fp16_rounding_matters():
    """Without the HF fp16 rounding of cos/sin our logits drift from HF by far more than with it."""
    set_mode("graph")
    config = TelechatConfig.preset("tiny")
    state = random_hf_state(config, seed=3)
    expected = reference_forward(build_reference(config, state), _ids(config, 30)).logits.detach().numpy()
    diffs = {}
    for rounding in (True, False):
        ours = ms_model_from_hf_state(dataclasses.replace(config, rotary_fp16_rounding=rounding), state)
        diffs[rounding] = np.abs(ours(ms.Tensor(_ids(config, 30))).asnumpy() - expected).max()
    assert diffs[False] > 10 * diffs[True], diffs
