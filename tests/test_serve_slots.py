"""The slot-based KV cache of the server (telechat_ms/infer/slots.py): independent sequences that start and end
at different steps, chunked prefill, per-slot dynamic NTK, slot reuse — each slot's logits equal those of a
batch-1 KVCacheSession (itself tested against the uncached forward in test_infer.py) and the full forward.

References run on a twin model with the same weights: KVCacheSession's compiled graphs keep the cache buffers
they were compiled with, so one model must not alternate between sessions of different cache shapes."""
import mindspore as ms
import numpy as np
import pytest

from telechat_ms import TelechatConfig, TelechatForCausalLM
from telechat_ms.infer.engine import KVCacheSession
from telechat_ms.infer.slots import SlotSession, step_width

from .conftest import set_mode

MAX_LEN = 48


@pytest.fixture(scope="module")
def models():
    """tiny_gqa (training_seqlen 32: NTK alpha / mscale switch on past 32 tokens) and its twin."""
    set_mode("graph")
    config = TelechatConfig.preset("tiny_gqa")
    net, twin = TelechatForCausalLM(config), TelechatForCausalLM(config)
    ms.load_param_into_net(twin, {k: ms.Parameter(v.value().copy(), k) for k, v in net.parameters_dict().items()})
    net.set_train(False)
    twin.set_train(False)
    return net, twin


@pytest.fixture(scope="module")
def model(models):
    return models[0]


def _reference(twin, seq, prompt_len, end):
    """{length: last logits} of a batch-1 KVCacheSession: prefill prompt_len tokens, then one token per step
    (the twin only ever runs this session shape, so its compiled graphs keep matching its cache buffers)."""
    session = KVCacheSession(twin, 1, MAX_LEN)
    out = {prompt_len: session.step(np.asarray([seq[:prompt_len]], np.int32))[0]}
    for n in range(prompt_len, end):
        out[n + 1] = session.step(np.asarray([[seq[n]]], np.int32))[0]
    return out


def _drive(session, plan, seqs):
    """Run slots through their sequences: plan = {slot: (start step, prompt length, end length)}; the engine
    feeds a slot its next true token whenever its logits come back. Returns {slot: {length: logits}}."""
    got = {slot: {} for slot in plan}
    step = 0
    while step < 200:
        for slot, (start, prompt_len, _) in plan.items():
            if step == start:
                session.start(slot, seqs[slot][:prompt_len])
        for slot, logits in session.step().items():
            n = session.length(slot)
            got[slot][n] = logits
            if n < plan[slot][2]:
                session.append(slot, seqs[slot][n])
            else:
                session.release(slot)
        step += 1
        if all(got[s] and max(got[s]) == plan[s][2] for s in plan) and not session.pending():
            return got
    raise AssertionError("slots did not finish")


def test_slots_started_at_different_steps_equal_batch1_sessions(models):
    """Three slots, chunked prefill (chunk 8), slots 0 and 2 crossing training_seqlen=32 at different steps
    (each slot recomputes its own cache when its NTK regime changes), slot 1 idle at first and finishing
    early. Every step's logits equal a batch-1 KVCacheSession over the same sequence (<= 1e-5), and the full
    forward past the NTK switch (<= 1e-4)."""
    model, twin = models
    rng = np.random.default_rng(0)
    seqs = {s: rng.integers(4, model.config.vocab_size, MAX_LEN).tolist() for s in range(3)}
    plan = {0: (0, 20, 36), 2: (5, 20, 40), 1: (9, 20, 26)}
    refs = {s: _reference(twin, seqs[s], plan[s][1], plan[s][2]) for s in plan}
    got = _drive(SlotSession(model, 3, MAX_LEN, chunk=8), plan, seqs)
    for slot, ref in refs.items():
        assert sorted(got[slot]) == sorted(ref)
        worst = max(np.abs(got[slot][n] - ref[n]).max() for n in ref)
        assert worst <= 1e-5, (slot, worst)
    set_mode("pynative")                           # one full forward: cheaper than compiling it
    full = twin(ms.Tensor(np.asarray([seqs[0][:36]], np.int32))).asnumpy()[0, -1]
    set_mode("graph")
    assert np.abs(got[0][36] - full).max() <= 1e-4


def test_a_released_slot_is_reused_with_no_trace_of_the_previous_sequence(models):
    model, twin = models
    rng = np.random.default_rng(1)
    first, second = (rng.integers(4, model.config.vocab_size, 30).tolist() for _ in range(2))
    session = SlotSession(model, 3, MAX_LEN, chunk=8)
    got = _drive(session, {0: (0, 20, 30)}, {0: first})                  # slot 0 ends and is released
    assert got[0] and session.free_slots() == [0, 1, 2]
    again = _drive(session, {0: (0, 20, 24)}, {0: second})
    ref = _reference(twin, second, 20, 24)
    assert max(np.abs(again[0][n] - ref[n]).max() for n in ref) <= 1e-5


def test_slot_errors_and_widths(model):
    session = SlotSession(model, 3, MAX_LEN)
    with pytest.raises(ValueError, match="does not fit the KV cache"):
        session.start(0, list(range(4, 4 + MAX_LEN + 1)))
    session.start(0, [5, 6])
    with pytest.raises(ValueError, match="slot 0 is in use"):
        session.start(0, [5])
    with pytest.raises(ValueError, match="slot 1 is free"):
        session.append(1, 5)
    session.release(0)
    assert [step_width(n, 256) for n in (1, 2, 3, 9, 200, 256)] == [1, 2, 4, 16, 256, 256]
    assert step_width(40, 48) == 48
    # another session taking the model's caches makes this one refuse to run (its graphs hold old buffers)
    SlotSession(model, 2, MAX_LEN)
    with pytest.raises(RuntimeError, match="KV caches were replaced"):
        session.step()
