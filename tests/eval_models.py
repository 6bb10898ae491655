"""Tiny converted checkpoints with their torch references, for the evaluation tests (test_eval_*.py).

Each model is written in its family's own HF layout with random non-trivial weights (peaky next-token
distributions, so a wrong window or a shifted target changes the perplexity far beyond the tolerance), converted
with the production hf2ms, and paired with the independent torch reference holding the same weights and a
transformers tokenizer giving the same ids as ours (checked in the tests):

* telechat2: preset `tiny` (training_seqlen 32: dynamic NTK alpha and mscale switch on past 32 tokens), the
  tiny TeleChat2 SentencePiece model (data/tiny_tokenizer.model); transformers side: LlamaTokenizer over the
  same model file with add_bos_token false (TeleChat2 adds no BOS).
* llama2: preset `tiny_llama2_gqa` (GQA, no length rule) with a Llama-2 style tokenizer that adds BOS.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

from telechat_ms import TelechatConfig
from telechat_ms.convert.pipeline import convert_hf_to_ms

from . import tiny_tokenizers as tt
from .hf_checkpoint import write_hf_checkpoint
from .reference import torch_families as tf
from .reference import torch_telechat as tt_ref

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = [
    "The quick brown fox jumps over the lazy dog 12345 67890. " * 3 + "Hello world, this is a tiny tokenizer.",
    "A chat between a curious human and an artificial intelligence assistant. 你好，世界！今天天气很好。",
    "short one",
]


class Pair:
    """Our converted directory + the torch reference: `logits(ids (B, S)) -> (B, S, V)` and `hf_model`,
    `hf_tokenizer` for lm_eval's own `hf` model."""

    def __init__(self, name, ms_dir, hf_model, logits_fn, hf_tokenizer, config):
        self.name, self.ms_dir, self.hf_model = name, ms_dir, hf_model
        self.logits, self.hf_tokenizer, self.config = logits_fn, hf_tokenizer, config


def telechat2_pair(root: str) -> Pair:
    import torch
    from transformers import LlamaTokenizer
    config = TelechatConfig.preset("tiny")
    state = tt_ref.random_hf_state(config, seed=3)
    hf_dir, ms_dir = os.path.join(root, "hf_telechat2"), os.path.join(root, "ms_telechat2")
    write_hf_checkpoint(hf_dir, config, "single", state=state)
    os.remove(os.path.join(hf_dir, "tokenizer_config.json"))      # the stand-in names a class, not files
    shutil.copy(os.path.join(REPO, "data", "tiny_tokenizer.model"), os.path.join(hf_dir, "tokenizer.model"))
    convert_hf_to_ms(hf_dir, ms_dir)
    ref = tt_ref.build_reference(config, state)

    def logits(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return tt_ref.reference_forward(ref, ids).logits.numpy()
    tok = LlamaTokenizer(vocab_file=os.path.join(hf_dir, "tokenizer.model"), add_bos_token=False,
                         add_eos_token=False, bos_token="<_start>", eos_token="<_end>", unk_token="<_unk>",
                         pad_token="<_pad>", legacy=True)
    return Pair("telechat2", ms_dir, ref, logits, tok, config)


def llama_pair(root: str) -> Pair:
    from safetensors.numpy import save_file
    from transformers import LlamaTokenizer
    config = TelechatConfig.preset("tiny_llama2_gqa")
    cfg = config.to_hf_config()
    state = tf.random_llama_state(cfg, seed=5)
    hf_dir, ms_dir = os.path.join(root, "hf_llama"), os.path.join(root, "ms_llama")
    shutil.copytree(tt.llama_dir(os.path.join(root, "tok")), hf_dir)
    save_file(state, os.path.join(hf_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(hf_dir, "config.json"), "w", encoding="utf-8") as fh:
        json.dump(cfg, fh)
    convert_hf_to_ms(hf_dir, ms_dir)
    ref = tf.llama_reference(cfg, state)
    return Pair("llama2", ms_dir, ref.model, ref.logits, LlamaTokenizer.from_pretrained(hf_dir), config)


PAIRS = {"telechat2": telechat2_pair, "llama2": llama_pair}
