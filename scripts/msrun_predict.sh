#!/usr/bin/env bash
# Tensor-parallel inference: launch scripts/run_predict.py (`telechat-ms chat`) on N workers with msrun, one
# rank per device, each holding 1/N of the model (docs/inference.md, "Tensor-parallel inference").
#
# Single node, N devices (--tp N is added for you):
#   scripts/msrun_predict.sh --workers 8 -- --model /ckpt/telechat2_115b_ms --prompt "你好" --max-new-tokens 64
#   scripts/msrun_predict.sh --workers 2 -- --model DIR --input prompts.jsonl --output answers.jsonl
# CPU (tests, no NPU): DEVICE_TARGET=CPU scripts/msrun_predict.sh --workers 2 -- --model DIR --prompt "..."
# Multi node (run once per node; same master address/port everywhere, node_rank 0..nodes-1):
#   scripts/msrun_predict.sh --nodes 2 --node_rank 0 --master_addr 10.0.0.1 --workers_per_node 8 -- <chat flags>
#
# Options: --workers N (single node: N local workers), --nodes, --node_rank, --master_addr (default 127.0.0.1),
# --master_port (default 8119), --workers_per_node, --log_dir (default output/msrun_predict_log: rank r's
# output is in worker_r.log; rank 0 prints the answers), --script PATH (another worker script taking the
# same flags; default scripts/run_predict.py). Everything after `--` goes to the script; `--tp <workers>` and
# `--device-target $DEVICE_TARGET` are appended unless given. Environment: DEVICE_TARGET (Ascend | CPU,
# default Ascend), PYTHON (default: the repository's .venv/bin/python if present, else python3).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"

source "$here/msrun_common.sh"
master_port=8119 log_dir=output/msrun_predict_log script="$here/run_predict.py"
while [ $# -gt 0 ]; do
  case "$1" in
    --script) script="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) if [ $# -ge 2 ] && msrun_option "$1" "$2"; then shift 2
       else echo "error: unknown option $1 (chat flags go after --)" >&2; exit 2; fi ;;
  esac
done
[ -f "$script" ] || { echo "error: $script: file not found" >&2; exit 2; }
msrun_setup "" "give --workers N (the tensor-parallel size)"

extra=()
case " $* " in *" --tp "*|*" --tp="*) ;; *) extra+=(--tp "$total") ;; esac
case " $* " in *" --device-target "*|*" --device-target="*) ;; *) extra+=(--device-target "$device") ;; esac
echo "msrun: tensor parallel over $total worker(s) ($nodes node(s) x $per_node), node_rank $node_rank," \
     "master $master_addr:$master_port, device $device, logs in $log_dir" >&2
msrun_launch "$script" "$@" "${extra[@]}"
