#!/usr/bin/env bash
# The main job on a tiny built-in model, CPU only. Outputs go to ./runs/demo (recreated each run):
# a random tiny HF-format TeleChat2 -> convert/hf2ms.py -> preprocess the bundled chat sample -> forward ->
# perplexity on the sample -> finetune until it memorises the sample (+ training-curve plot) -> perplexity
# again -> chat: it answers a sample question with the trained answer.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=$REPO/.venv/bin/python
OUT=$REPO/runs/demo
rm -rf "$OUT" && mkdir -p "$OUT"
cd "$OUT"   # mindspore/mindformers write logs into the current directory
export GLOG_v=${GLOG_v:-3}   # MindSpore: errors only (its graph-compiler warnings are noise for this demo)
echo "== 1. tiny TeleChat2 in HF format (random weights, tiny SentencePiece tokenizer)"
$PY "$REPO/scripts/make_tiny_hf_checkpoint.py" hf_tiny
echo "== 2. convert HF -> MindSpore"
$PY "$REPO/convert/hf2ms.py" --src hf_tiny --dst ms_tiny
echo "== 3. preprocess the bundled chat sample -> MindRecord"
$PY "$REPO/scripts/preprocess.py" --input "$REPO/data/sample_sft.jsonl" --tokenizer ms_tiny \
    --output sft.mindrecord --seq-length 256 --no-progress
echo "== 4. forward pass of the converted model (GRAPH_MODE, CPU)"
"$REPO/.venv/bin/telechat-ms" forward --model-dir ms_tiny --seq-len 40
echo "== 5. perplexity of the converted (random) model on the answers of the chat sample, before finetuning"
"$REPO/.venv/bin/telechat-ms" eval --model ms_tiny --data "$REPO/data/sample_sft.jsonl" --answers-only \
    --batch-size 4 --output ppl_before.json --no-progress
echo "== 6. finetune on the sample (CPU, fp32; loss should fall to ~0.01: the model memorises the sample)"
"$REPO/.venv/bin/telechat-ms" train --config "$REPO/yaml_configs/tiny/finetune_tiny.yaml" \
    --load_checkpoint ms_tiny --train_dataset sft.mindrecord --output_dir finetune --stop_step 200
"$REPO/.venv/bin/telechat-ms" plot-loss --log finetune/train_log.jsonl --output loss.png
FINETUNED="finetune/checkpoint/$(cat finetune/checkpoint/latest)"
echo "== 7. perplexity of the finetuned model on the same answers (exp of the SFT loss)"
"$REPO/.venv/bin/telechat-ms" eval --model "$FINETUNED" --data "$REPO/data/sample_sft.jsonl" --answers-only \
    --batch-size 4 --output ppl_after.json --no-progress
echo "== 8. chat with the finetuned model (greedy), asking a question from the sample"
"$REPO/.venv/bin/telechat-ms" chat --model "$FINETUNED" --prompt "生抽与老抽的区别？" --max-new-tokens 48
echo "== done: outputs in runs/demo (hf_tiny, ms_tiny, sft.mindrecord, finetune/, loss.png, ppl_*.json)"
