"""KV-cache decoding, generation and the chat CLI (CPU, fp32)."""
import dataclasses
import json
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

from telechat_ms import TelechatConfig
from telechat_ms.config.generation import GenerationConfig
from telechat_ms.infer.engine import KVCacheSession
from telechat_ms.infer.generate import generate, left_pad

from .conftest import set_mode
from .reference.ms_loading import ms_model_from_hf_state
from .reference.torch_telechat import build_reference, random_hf_state, reference_forward


def _moe_model():
    from .reference.torch_moe import random_hf_moe_state
    config = dataclasses.replace(TelechatConfig.preset("tiny_moe"), moe_token_dropping=False)
    return config, ms_model_from_hf_state(config, random_hf_moe_state(config, seed=4))


# prefill, first decode, last plain-RoPE length, NTK alpha/mscale switch (training_seqlen 32), later, end
CHECKED_LENGTHS = (26, 27, 32, 33, 35, 40)


@pytest.fixture(scope="module", params=["tiny", "tiny_gqa", "tiny_moe"])
def model(request):
    set_mode("graph")
    if request.param == "tiny_moe":
        config, net = _moe_model()
    else:
        config = TelechatConfig.preset(request.param)
        net = ms_model_from_hf_state(config, random_hf_state(config, seed=5))
    net.set_train(False)
    return net


def test_cached_steps_equal_full_forward(model):
    """Prefill 26 tokens then decode 14 one by one, crossing training_seqlen=32 (NTK alpha and mscale change):
    each step's logits equal the full uncached forward over the sequence so far."""
    config = model.config
    ids = np.random.default_rng(0).integers(4, config.vocab_size, (2, 40)).astype(np.int32)
    session = KVCacheSession(model, 2, 48)
    got = {26: session.step(ids[:, :26])}
    got.update({t + 1: session.step(ids[:, t:t + 1]) for t in range(26, 40)})
    for end in CHECKED_LENGTHS:         # every step runs; full forwards (one compile per length) at a subset
        full = model(ms.Tensor(ids[:, :end])).asnumpy()[:, -1]
        assert np.abs(got[end] - full).max() <= 1e-4, (end, np.abs(got[end] - full).max())


def test_fast_ntk_mode_is_exact_below_training_seqlen_and_close_after(model):
    """exact_ntk=False never recomputes: identical up to training_seqlen, approximate beyond it."""
    ids = np.random.default_rng(2).integers(4, model.config.vocab_size, (1, 36)).astype(np.int32)
    session = KVCacheSession(model, 1, 40, exact_ntk=False)
    session.step(ids[:, :20])
    got = {t + 1: session.step(ids[:, t:t + 1]) for t in range(20, 36)}
    for end in (21, 32, 33, 36):
        diff = np.abs(got[end] - model(ms.Tensor(ids[:, :end])).asnumpy()[:, -1]).max()
        assert diff <= (1e-4 if end <= 32 else 5e-2), (end, diff)


def test_cached_steps_with_left_padding_equal_full_forward(model):
    ids = np.random.default_rng(1).integers(4, model.config.vocab_size, (2, 20)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :6] = 0
    ids[1, :6] = model.config.pad_token_id
    session = KVCacheSession(model, 2, 32)
    first = session.step(ids[:, :15], mask[:, :15])
    full = model(ms.Tensor(ids[:, :15]), None, ms.Tensor(mask[:, :15])).asnumpy()[:, -1]
    assert np.abs(first - full).max() <= 1e-4
    got = {t + 1: session.step(ids[:, t:t + 1]) for t in range(15, 20)}
    full = model(ms.Tensor(ids), None, ms.Tensor(mask)).asnumpy()[:, -1]
    assert np.abs(got[20] - full).max() <= 1e-4


def test_prompt_longer_than_cache_is_an_error(model):
    session = KVCacheSession(model, 1, 8)
    with pytest.raises(ValueError, match=r"does not fit the KV cache \(max_len=8\)"):
        session.step(np.zeros((1, 9), np.int32))


@pytest.fixture(scope="module")
def dense_pair():
    set_mode("graph")
    config = TelechatConfig.preset("tiny_gqa")
    state = random_hf_state(config, seed=6, std=0.2)        # larger weights: peaked, non-degenerate greedy paths
    net = ms_model_from_hf_state(config, state)
    net.set_train(False)
    return net, build_reference(config, state)


def _reference_greedy(ref, ids, mask, steps, penalty=1.0):
    """Greedy without any cache: full torch forward per step (HF TeleChat positions include left pads)."""
    out, mask = ids.copy(), mask.copy()
    for _ in range(steps):
        logits = reference_forward(ref, out, attention_mask=mask).logits.detach().numpy()[:, -1]
        for row in range(len(out)):
            for tok in set(out[row].tolist()):
                logits[row, tok] = logits[row, tok] / penalty if logits[row, tok] > 0 else logits[row, tok] * penalty
        nxt = logits.argmax(-1).astype(np.int32)
        out, mask = np.concatenate([out, nxt[:, None]], 1), np.concatenate([mask, np.ones((len(out), 1), mask.dtype)], 1)
    return out[:, ids.shape[1]:]


def test_greedy_batch_matches_reference_without_cache(dense_pair):
    net, ref = dense_pair
    prompts = [[7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28], [30, 31, 32]]
    config = GenerationConfig(max_new_tokens=16, eos_token_id=[511], repetition_penalty=1.2)
    result = generate(net, prompts, config)
    ids, mask = left_pad(prompts, net.config.pad_token_id)
    expected = _reference_greedy(ref, ids, mask, 16, penalty=1.2)
    assert result.tokens == expected.tolist()          # 22 + 16 tokens: crosses training_seqlen 32


def test_decode_steps_use_a_compiled_increment_graph_per_cache_shape(dense_pair):
    """One-token steps run MindSpore's compiled "increment" graph, which is reused without a shape check
    (engine.decode_cell): a session with another batch or max_len must get its own graph, and going back to the
    first shape (new cache buffers) must not reuse a graph bound to the old buffers."""
    net, _ = dense_pair
    rng = np.random.default_rng(3)
    cells = []
    for batch, max_len in ((1, 20), (2, 24), (1, 20)):
        ids = rng.integers(4, net.config.vocab_size, (batch, 12)).astype(np.int32)
        session = KVCacheSession(net, batch, max_len)
        session.step(ids[:, :10])
        for t in range(10, 12):
            got = session.step(ids[:, t:t + 1])
        full = net(ms.Tensor(ids)).asnumpy()[:, -1]
        assert np.abs(got - full).max() <= 1e-4, (batch, max_len, np.abs(got - full).max())
        assert session.decode_fn.phase == "increment" and "increment" in session.decode_fn.phase_cache
        cells.append(session.decode_fn)
    assert cells[0] is not cells[1] and cells[1] is not cells[2]


def test_sampling_is_seeded_and_top_k_one_is_greedy(dense_pair):
    net, _ = dense_pair
    sample = GenerationConfig(max_new_tokens=8, do_sample=True, temperature=1.5, top_k=0, seed=3, eos_token_id=[511])
    first = generate(net, [[5, 6, 7]], sample).tokens
    assert generate(net, [[5, 6, 7]], sample).tokens == first
    greedy = generate(net, [[5, 6, 7]], GenerationConfig(max_new_tokens=8, eos_token_id=[511])).tokens
    top1 = generate(net, [[5, 6, 7]], dataclasses.replace(sample, top_k=1)).tokens
    assert top1 == greedy


def test_stops_on_eos(dense_pair):
    net, _ = dense_pair
    greedy = generate(net, [[5, 6, 7]], GenerationConfig(max_new_tokens=8, eos_token_id=[511])).tokens[0]
    stop_at = greedy[3]
    result = generate(net, [[5, 6, 7]], GenerationConfig(max_new_tokens=8, eos_token_id=[stop_at]))
    assert result.tokens[0] == greedy[:greedy.index(stop_at)] and result.stop_reason == ["eos"]


# ---- the chat CLI on a converted tiny checkpoint ----

@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """tiny HF checkpoint (production generator script) -> hf2ms, as a user would."""
    root = tmp_path_factory.mktemp("chat")
    repo = __file__.rsplit("/tests/", 1)[0]
    for cmd in ([sys.executable, f"{repo}/scripts/make_tiny_hf_checkpoint.py", str(root / "hf"), "--seq-length", "64"],
                [sys.executable, f"{repo}/convert/hf2ms.py", "--src", str(root / "hf"), "--dst", str(root / "ms")]):
        subprocess.run(cmd, check=True, capture_output=True, cwd=root)
    return root / "ms"


def _chat(args, cwd):
    from telechat_ms.cli import main
    return main(["chat", "--model", str(args[0])] + list(args[1:]))


def test_chat_prompt_prints_answer_and_speed(converted, capsys, tmp_path):
    assert _chat([converted, "--prompt", "你好", "--max-new-tokens", "5"], tmp_path) == 0
    captured = capsys.readouterr()
    assert "tokens/s" in captured.err and "decode" in captured.err


def test_chat_jsonl_batch_is_written_atomically(converted, tmp_path, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"prompt": "你好"}\n{"messages": [{"role": "user", "content": "你是谁？"}]}\n', encoding="utf-8")
    assert _chat([converted, "--input", str(src), "--output", str(out), "--max-new-tokens", "4"], tmp_path) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2 and all("answer" in r for r in rows)
    src.write_text('{"prompt": "ok"}\n{"nope": 1}\n', encoding="utf-8")
    assert _chat([converted, "--input", str(src), "--output", str(tmp_path / "bad.jsonl")], tmp_path) == 2
    assert "in.jsonl:2" in capsys.readouterr().err and not (tmp_path / "bad.jsonl").exists()


def test_chat_errors(converted, tmp_path, capsys):
    assert _chat([tmp_path / "missing", "--prompt", "hi"], tmp_path) == 2
    assert "missing" in capsys.readouterr().err
    long_prompt = "你好" * 200
    assert _chat([converted, "--prompt", long_prompt, "--max-length", "16"], tmp_path) == 2
    assert "does not fit max_length=16" in capsys.readouterr().err


def test_tokenizer_vocab_mismatch_is_an_error(converted):
    from telechat_ms.data.tokenizer import TelechatTokenizer
    from telechat_ms.infer.chat import InferenceError, check_tokenizer_fits
    tokenizer = TelechatTokenizer(str(converted))
    small = dataclasses.replace(TelechatConfig.preset("tiny"), vocab_size=256)
    with pytest.raises(InferenceError, match="512 pieces but the model's vocab_size is 256"):
        check_tokenizer_fits(tokenizer, small)


def test_stop_strings_cut_the_answer(converted):
    from telechat_ms import TelechatForCausalLM
    from telechat_ms.data.tokenizer import TelechatTokenizer
    from telechat_ms.infer.chat import complete
    set_mode("graph")
    model = TelechatForCausalLM.from_pretrained(str(converted))
    model.set_train(False)
    tokenizer = TelechatTokenizer(str(converted))
    prompt = [[4, 100, 101, 5]]
    free, _ = complete(model, tokenizer, prompt, GenerationConfig(max_new_tokens=12, eos_token_id=[511]), 64)
    assert len(free[0]) >= 2
    stop = free[0][1]
    cut, result = complete(model, tokenizer, prompt, GenerationConfig(max_new_tokens=12, eos_token_id=[511],
                                                                      stop_strings=[stop]), 64)
    assert cut[0] == free[0][:free[0].index(stop)] and result.stop_reason == ["stop_string"]
