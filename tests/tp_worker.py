"""One rank of the tensor-parallel test (tests/test_tp.py), started by scripts/msrun_predict.sh --script.

For each --case NAME=DIR: the rank's model via load_tensor_parallel, full-forward logits of FORWARD_IDS and
greedy generate() of PROMPTS with the KV cache; rank 0 saves them to --out. Then (on the last case's model
directory) the group-size check and the chat CLI under TP; every rank saves what the CLI printed.
"""
import argparse
import contextlib
import io
import json
import os
import sys

import numpy as np

NEW_TOKENS = 12
# batch of 2, 40 tokens: crosses training_seqlen=32 of the test checkpoints (NTK alpha/mscale switch on)
FORWARD_IDS = np.random.default_rng(11).integers(4, 500, (2, 40)).astype(np.int32)
# left padding; 22 + 12 tokens crosses training_seqlen=32 while decoding (exact-NTK recompute path)
PROMPTS = [[7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28], [30, 31, 32]]


def greedy(model):
    from telechat_ms.config.generation import GenerationConfig
    from telechat_ms.infer.generate import generate
    return generate(model, PROMPTS, GenerationConfig(max_new_tokens=NEW_TOKENS, eos_token_id=[])).tokens


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--case", action="append", required=True, help="NAME=CONVERTED_DIR")
    parser.add_argument("--tp", type=int, required=True)
    parser.add_argument("--device-target", default="CPU")
    args = parser.parse_args()

    import mindspore as ms
    from telechat_ms.config.base import ConfigError
    from telechat_ms.infer.tp import load_tensor_parallel
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(args.device_target)

    summary = {}
    for case in args.case:
        name, path = case.split("=", 1)
        model = load_tensor_parallel(path, args.tp)
        model.set_train(False)
        logits = model(ms.Tensor(FORWARD_IDS)).asnumpy()
        tokens = greedy(model)
        if model.tp_rank == 0:
            np.save(os.path.join(args.out, f"{name}_logits.npy"), logits)
            summary[name] = {"tokens": tokens, "rank_config": model.rank_config.to_dict()}
    rank = model.tp_rank

    try:                                    # the job has args.tp ranks: asking for another size is an error
        load_tensor_parallel(path, 1)
        summary["group_size_error"] = None
    except ConfigError as exc:
        summary["group_size_error"] = str(exc)

    from telechat_ms.infer.cli import main as chat
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = chat(["--model", path, "--tp", str(args.tp), "--prompt", "你好", "--max-new-tokens", "4", "--no-stream",
                   "--device-target", args.device_target])
    with open(os.path.join(args.out, f"chat_rank{rank}.json"), "w", encoding="utf-8") as fh:
        json.dump({"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}, fh)
    if rank == 0:
        with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as fh:
            json.dump(summary, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
