"""Parity of every family's tiny preset with an independent torch reference (tests/reference/torch_families.py), fp32.

Each case writes random weights in the family's OWN HF key layout (Llama names; TeleChat v1's 7B layout without
prefix or lm_head, or its 12B layout; TeleChat-52B's GPT-2 Conv1D tensors re-laid from the reference's Linear
weights) and builds our model through the production `telechat_ms.convert.names.hf_to_ms`. Lengths sit on both
sides of each family's rotary threshold: TeleChat v1 tiny (training_seqlen 32, NTK divisor 16): alpha 3 at 20,
alpha 7 + mscale at 40; v1 untied (divisor 32): alpha 1 / 3; TeleChat-52B FLM rule (divisor 32): alpha 1 / 3;
Llama families have no length rule (Aquila2 theta 1e6, Aquila2-16K linear x4 checked at both lengths).
TeleChat2 itself is covered by test_model_parity.py.
"""
import dataclasses
import functools

import mindspore as ms
import numpy as np
import pytest

from telechat_ms import TelechatConfig
from telechat_ms.config.generation import GenerationConfig
from telechat_ms.infer.generate import generate

from .conftest import set_mode
from .reference import torch_families as tf
from .reference.ms_loading import ms_model_from_hf_state

TOL_LOGITS, TOL_LOSS = 1e-4, 1e-5


def _llama_cfg(config, **family) -> dict:
    """The checkpoint's config.json in Llama names: dims from the preset, family values from the spec."""
    return dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                intermediate_size=config.ffn_hidden_size, num_hidden_layers=config.num_layers,
                num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
                rms_norm_eps=config.rms_norm_eps, **family)


def _llama_case(**family):
    def build(config, seed, std):
        cfg = _llama_cfg(config, **family)
        state = tf.random_llama_state(cfg, seed=seed, std=std)
        return state, tf.llama_reference(cfg, state)
    return build


def _telechat1_case(tied: bool, divisor: int):
    def build(config, seed, std):
        cfg = dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                   ffn_hidden_size=config.ffn_hidden_size, n_layer=config.num_layers, n_head=config.num_heads,
                   layer_norm_epsilon=config.rms_norm_eps, training_seqlen=32, tie_word_embeddings=tied)
        state = tf.random_telechat1_state(cfg, seed=seed, std=std)
        return state, tf.telechat1_reference(cfg, state, ntk_divisor=divisor)
    return build


def _telechat52b_case(config, seed, std):
    cfg = dict(vocab_size=config.vocab_size, n_embd=config.hidden_size, n_inner=config.ffn_hidden_size,
               n_layer=config.num_layers, n_head=config.num_heads, layer_norm_epsilon=config.rms_norm_eps,
               rotary_theta=10000, use_mup=True, input_mult=1.0, output_mult=1.0, mup_scale_factor=32.0)
    llama_state = tf.random_llama_state(tf.telechat52b_llama_config(cfg), seed=seed, std=std)
    return tf.conv1d_state(llama_state, cfg), tf.telechat52b_reference(cfg, llama_state, ntk_divisor=32)


FLM_MUP = dict(use_mup=True, input_mult=2.0, output_mult=1.0, mup_scale_factor=4.0)     # x2 in, x1/4 out
BOTH_SIDES = (20, 40)          # families with a length rule (or scaling) at both; fixed-theta Llamas at 40 only
CASES = {                      # preset -> (reference builder, lengths)
    "tiny_llama2": (_llama_case(rope_theta=10000.0), (40,)),
    "tiny_llama2_gqa": (_llama_case(rope_theta=10000.0), (40,)),
    "tiny_aquila2": (_llama_case(rope_theta=1e6), (40,)),
    "tiny_aquila2_gqa": (_llama_case(rope_theta=1e6), (40,)),
    "tiny_aquila2_16k": (_llama_case(rope_theta=10000.0, rope_scaling={"type": "linear", "factor": 4.0}),
                         BOTH_SIDES),
    "tiny_teleflm": (_llama_case(rope_theta=10000.0, **FLM_MUP), (40,)),
    "tiny_teleflm_gqa": (_llama_case(rope_theta=10000.0, **FLM_MUP), (40,)),
    "tiny_telechat1": (_telechat1_case(tied=True, divisor=16), BOTH_SIDES),
    "tiny_telechat1_untied": (_telechat1_case(tied=False, divisor=32), BOTH_SIDES),
    "tiny_telechat52b": (_telechat52b_case, BOTH_SIDES),
}


@functools.lru_cache(maxsize=None)
def _pair(preset: str, std: float = 0.08):
    """(config, HF state, reference, our model): built once per process, shared by every test (one GRAPH
    compile per model and input shape)."""
    config = TelechatConfig.preset(preset)
    state, ref = CASES[preset][0](config, 11, std)
    return config, state, ref, ms_model_from_hf_state(config, state)


def _same_regime(config, seq) -> bool:
    """Whether S and S-1 tokens rotate alike: true for Llama's fixed theta and FLM's alpha steps (20, 40), false
    for the TeleChat rules past training_seqlen, whose mscale grows with every token."""
    return config.rope_variant in ("plain", "flm") or seq <= config.training_seqlen


def _ids(config, seq, batch=2, seed=0):
    return np.random.default_rng(seed + seq).integers(0, config.vocab_size, (batch, seq)).astype(np.int32)


@pytest.mark.parametrize("preset,seq", [(p, s) for p, (_, lengths) in CASES.items() for s in lengths])
def test_logits_and_loss_match_reference(preset, seq):
    set_mode("graph")
    config, _, ref, ours = _pair(preset)
    ids = _ids(config, seq)
    labels = ids.copy()
    labels[:, :3] = -100                       # ignored positions count in neither numerator nor denominator
    diff = np.abs(ours(ms.Tensor(ids)).asnumpy() - ref.logits(ids)).max()
    assert diff <= TOL_LOGITS, diff
    loss = float(ours(ms.Tensor(ids), ms.Tensor(labels)).asnumpy())
    assert abs(loss - ref.context_loss(ids, labels)) <= TOL_LOSS, (loss, ref.context_loss(ids, labels))
    if _same_regime(config, seq):                  # then HF's own one-forward loss is the same number
        assert abs(loss - ref.loss(ids, labels)) <= TOL_LOSS, (loss, ref.loss(ids, labels))


# Each family's own math, removed from our config: the same checkpoint must then MISS the reference, so the
# parity above is sensitive to it (not passing because the length or the weights hide it).
CONTROLS = [
    ("tiny_telechat1", 20, dict(base_seqlen=32)),                         # v1's divisor 16 -> alpha 3 at 20
    ("tiny_telechat52b", 40, dict(rope_variant="plain")),                 # FLM alpha 3 past 32
    ("tiny_aquila2", 20, dict(rope_theta=10000.0)),
    ("tiny_aquila2_16k", 20, dict(rope_scaling="none", rope_scaling_factor=1.0)),
    ("tiny_teleflm", 20, dict(embedding_multiplier=1.0)),
]


@pytest.mark.parametrize("preset,seq,change", CONTROLS, ids=[f"{p}-{s}-{next(iter(c))}" for p, s, c in CONTROLS])
def test_parity_is_sensitive_to_the_family_math(preset, seq, change):
    set_mode("graph")
    config, state, ref, _ = _pair(preset)
    wrong = ms_model_from_hf_state(dataclasses.replace(config, **change), state)
    ids = _ids(config, seq)
    diff = np.abs(wrong(ms.Tensor(ids)).asnumpy() - ref.logits(ids)).max()
    assert diff > 10 * TOL_LOGITS, diff


@pytest.mark.parametrize("seq", BOTH_SIDES)
def test_telechat52b_relayout_is_the_released_conv1d_forward(seq):
    """The re-laid Conv1D state run by a direct transcription of the released 52B forward equals the Llama
    reference it came from: the layout the converter is tested on is TeleChat-52B's, not our guess twice."""
    config, state, ref, _ = _pair("tiny_telechat52b")
    cfg = dict(vocab_size=config.vocab_size, n_embd=config.hidden_size, n_layer=config.num_layers,
               n_head=config.num_heads, layer_norm_epsilon=config.rms_norm_eps, rotary_theta=10000,
               use_mup=True, output_mult=1.0, mup_scale_factor=32.0)
    ids = _ids(config, seq)
    assert np.abs(tf.conv1d_forward(cfg, state, ids, ntk_divisor=32) - ref.logits(ids)).max() <= 1e-5


# ---- greedy decoding with our KV cache vs the reference's uncached argmax ----

@pytest.mark.parametrize("preset", ["tiny_teleflm_gqa", "tiny_telechat52b"])
def test_cached_greedy_equals_uncached_reference(preset):
    """generate(): prefill 26 tokens, then cached decode steps (the 52B crosses its FLM switch at 32 total tokens:
    every cached key must be re-rotated with alpha 3); tokens equal the reference's argmax of full forwards."""
    set_mode("graph")
    config, _, ref, ours = _pair(preset, std=0.3)     # larger weights: peaked, non-degenerate argmax
    ours.set_train(False)
    prompt = np.random.default_rng(7).integers(0, config.vocab_size, (2, 26)).astype(np.int32)
    expected, margins = ref.greedy(prompt, 10)
    assert margins.min() > 10 * TOL_LOGITS, margins.min()        # a flip would need a diff above tolerance
    never = GenerationConfig(max_new_tokens=10, eos_token_id=[config.vocab_size])      # no eos: 10 tokens
    assert generate(ours, prompt.tolist(), never).tokens == expected.tolist()
