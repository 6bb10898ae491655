"""Shared by the benchmarks: the model-shape flags and the pair of models (ours in GRAPH_MODE on CPU, the torch
reference) holding the same random weights."""
from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def add_model_args(parser) -> None:
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=None, help="default: --heads (MHA)")
    parser.add_argument("--ffn", type=int, default=1536)
    parser.add_argument("--vocab", type=int, default=8192)


def build_pair(args, seq_len: int):
    """(config, ours, reference) for the flags of add_model_args; NTK stays off up to seq_len."""
    import mindspore as ms
    import torch
    from telechat_ms import TelechatConfig
    from tests.reference.ms_loading import ms_model_from_hf_state
    from tests.reference.torch_telechat import build_reference, random_hf_state

    torch.set_num_threads(os.cpu_count() or 1)
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    config = dataclasses.replace(TelechatConfig.preset("tiny"), num_layers=args.layers, hidden_size=args.hidden,
                                 num_heads=args.heads, num_kv_heads=args.kv_heads or args.heads,
                                 ffn_hidden_size=args.ffn, vocab_size=args.vocab, training_seqlen=seq_len,
                                 base_seqlen=seq_len, seq_length=seq_len)
    state = random_hf_state(config, seed=0, std=0.02)
    return config, ms_model_from_hf_state(config, state), build_reference(config, state)
