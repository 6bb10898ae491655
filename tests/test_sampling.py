"""Host-side token selection vs transformers' logits processors, plus generation-config parsing."""
import json

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

from telechat_ms.config.base import ConfigError
from telechat_ms.config.generation import GenerationConfig
from telechat_ms.infer.sampling import TokenSelector, apply_repetition_penalty, apply_top_k, apply_top_p

RNG = np.random.default_rng(0)
SCORES = RNG.normal(0, 3, (3, 50)).astype(np.float32)
SEEN = RNG.integers(0, 50, (3, 7))


def _hf(processor, scores=SCORES, seen=SEEN):
    return processor(torch.from_numpy(seen), torch.from_numpy(scores.copy())).numpy()


def test_repetition_penalty_hand_computed():
    scores = np.array([[2.0, -2.0, 0.5, 1.0]], np.float32)
    out = apply_repetition_penalty(scores, np.array([[0, 1, 1]]), 2.0)
    np.testing.assert_array_equal(out, [[1.0, -4.0, 0.5, 1.0]])   # positive / 2, negative * 2, once per id


@pytest.mark.parametrize("penalty", [1.03, 1.3, 0.8])
def test_repetition_penalty_matches_hf(penalty):
    np.testing.assert_allclose(apply_repetition_penalty(SCORES, SEEN, penalty),
                               _hf(RepetitionPenaltyLogitsProcessor(penalty)), rtol=1e-6)


@pytest.mark.parametrize("k", [1, 5, 49])
def test_top_k_matches_hf(k):
    np.testing.assert_array_equal(apply_top_k(SCORES, k), _hf(TopKLogitsWarper(k)))


@pytest.mark.parametrize("p", [0.1, 0.85, 0.99])
def test_top_p_matches_hf(p):
    np.testing.assert_array_equal(apply_top_p(SCORES, p), _hf(TopPLogitsWarper(p)))


def test_full_chain_matches_hf():
    config = GenerationConfig(do_sample=True, temperature=0.3, top_k=5, top_p=0.85, repetition_penalty=1.03)
    hf = _hf(RepetitionPenaltyLogitsProcessor(1.03))
    for warper in (TemperatureLogitsWarper(0.3), TopKLogitsWarper(5), TopPLogitsWarper(0.85)):
        hf = _hf(warper, hf)
    np.testing.assert_allclose(TokenSelector(config).process(SCORES, SEEN), hf, rtol=1e-6)


def test_greedy_applies_penalty_then_argmax():
    config = GenerationConfig(repetition_penalty=100.0)
    scores = np.array([[5.0, 4.0, 1.0]], np.float32)
    assert TokenSelector(config)(scores, np.array([[0]]))[0] == 1


def test_top_k_one_equals_greedy():
    sampled = TokenSelector(GenerationConfig(do_sample=True, top_k=1, temperature=0.7))(SCORES, SEEN)
    np.testing.assert_array_equal(sampled, np.argmax(SCORES, axis=-1))


def test_seeded_sampling_is_reproducible_and_follows_probabilities():
    config = GenerationConfig(do_sample=True, top_k=0, seed=7)
    first, second = TokenSelector(config), TokenSelector(config)
    for _ in range(5):
        np.testing.assert_array_equal(first(SCORES, SEEN), second(SCORES, SEEN))
    selector = TokenSelector(GenerationConfig(do_sample=True, top_k=0, seed=1))
    scores = np.log(np.array([[0.7, 0.2, 0.1]], np.float32))
    draws = np.array([selector(scores, np.zeros((1, 0), np.int64))[0] for _ in range(4000)])
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert np.abs(freq - [0.7, 0.2, 0.1]).max() < 0.03


def test_generation_config_from_115b_json(tmp_path):
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps({"max_new_tokens": 4096, "do_sample": False, "temperature": 0.3, "top_k": 5,
                                "top_p": 0.85, "repetition_penalty": 1.03, "bos_token_id": 1, "eos_token_id": 2,
                                "pad_token_id": 3, "user_token_id": 4, "bot_token_id": 5}))
    config = GenerationConfig.from_json(str(path))
    assert config.eos_token_id == [2] and config.top_k == 5 and not config.do_sample


@pytest.mark.parametrize("changes,pattern", [
    (dict(temperature=0.0), "temperature must be > 0"), (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(top_k=-1), "top_k must be >= 0"), (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
    (dict(eos_token_id="x"), "eos_token_id must be"), (dict(stop_strings=[""]), "stop_strings"),
])
def test_generation_config_errors(changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        GenerationConfig(**changes)


def test_generation_config_unknown_key(tmp_path):
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps({"num_beam_groups": 2}))
    with pytest.raises(ConfigError, match="unknown config key 'num_beam_groups'"):
        GenerationConfig.from_json(str(path))
