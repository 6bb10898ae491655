#!/usr/bin/env bash
# The main job on a tiny built-in model, CPU only. Outputs go to ./runs/demo (recreated each run):
# a random tiny HF-format TeleChat2 -> convert/hf2ms.py -> preprocess the bundled chat sample -> forward.
# (The training issue extends this with finetune -> chat.)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=$REPO/.venv/bin/python
OUT=$REPO/runs/demo
rm -rf "$OUT" && mkdir -p "$OUT"
cd "$OUT"   # mindspore/mindformers write logs into the current directory
echo "== 1. tiny TeleChat2 in HF format (random weights, tiny SentencePiece tokenizer)"
$PY "$REPO/scripts/make_tiny_hf_checkpoint.py" hf_tiny
echo "== 2. convert HF -> MindSpore"
$PY "$REPO/convert/hf2ms.py" --src hf_tiny --dst ms_tiny
echo "== 3. preprocess the bundled chat sample -> MindRecord"
$PY "$REPO/scripts/preprocess.py" --input "$REPO/data/sample_sft.jsonl" --tokenizer ms_tiny \
    --output sft.mindrecord --seq-length 256 --no-progress
echo "== 4. forward pass of the converted model (GRAPH_MODE, CPU)"
"$REPO/.venv/bin/telechat-ms" forward --model-dir ms_tiny --seq-len 40
