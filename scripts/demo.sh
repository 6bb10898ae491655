#!/usr/bin/env bash
# The main job on a tiny built-in model, CPU only. Outputs go to ./runs/demo (recreated each run).
# Today: build the tiny TeleChat2 and run a forward pass + loss. The training issue extends this to
# convert -> finetune -> chat.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=runs/demo
rm -rf "$OUT" && mkdir -p "$OUT"
cd "$OUT"   # mindspore/mindformers write logs into the current directory
echo "== tiny TeleChat2: forward pass and loss (GRAPH_MODE, CPU)"
../../.venv/bin/telechat-ms forward --preset tiny --seq-len 40
