#!/usr/bin/env bash
# Launch `telechat-ms train` (scripts/train.py) on N workers with msrun. docs/training.md has the recipes.
#
# Single node, N devices:
#   scripts/msrun_train.sh --config yaml_configs/7b/finetune_7b.yaml --workers 8 --amp O2 \
#       -- --load_checkpoint /ckpt/telechat2_7b_ms --train_dataset /data/sft.mindrecord
# Multi node (run once per node; same master address/port everywhere, node_rank 0..nodes-1):
#   scripts/msrun_train.sh --config ... --nodes 4 --node_rank 0 --master_addr 10.0.0.1 --master_port 8118 \
#       --workers_per_node 8 --log_dir output/msrun_log -- <train flags>
# CPU (tests, demo): DEVICE_TARGET=CPU scripts/msrun_train.sh --config ... --workers 2 -- <train flags>
#
# Options: --config YAML (required), --workers N (single node: N local workers), --nodes, --node_rank,
# --master_addr (default 127.0.0.1), --master_port (default 8118), --workers_per_node, --log_dir
# (default output/msrun_log), --amp O0|O1|O2 (else the yaml's amp_level), --engine native|mindformers.
# Everything after `--` goes to `telechat-ms train`. Environment: DEVICE_TARGET (Ascend | CPU, default Ascend),
# PYTHON (default: the repository's .venv/bin/python if present, else python3).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"

config="" workers="" nodes=1 node_rank=0 master_addr=127.0.0.1 master_port=8118 per_node="" log_dir=output/msrun_log
amp="" engine=native
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --nodes) nodes="$2"; shift 2 ;;
    --node_rank) node_rank="$2"; shift 2 ;;
    --master_addr) master_addr="$2"; shift 2 ;;
    --master_port) master_port="$2"; shift 2 ;;
    --workers_per_node) per_node="$2"; shift 2 ;;
    --log_dir) log_dir="$2"; shift 2 ;;
    --amp) amp="$2"; shift 2 ;;
    --engine) engine="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (train flags go after --)" >&2; exit 2 ;;
  esac
done
[ -n "$config" ] || { echo "error: --config YAML is required" >&2; exit 2; }
[ -f "$config" ] || { echo "error: $config: file not found" >&2; exit 2; }
case "$amp" in ""|O0|O1|O2) ;; *) echo "error: --amp must be O0, O1 or O2, got $amp" >&2; exit 2 ;; esac
per_node="${per_node:-${workers:-8}}"
total=$((nodes * per_node))
if [ -n "$workers" ] && [ "$nodes" -eq 1 ] && [ "$workers" -ne "$per_node" ]; then
  echo "error: --workers $workers and --workers_per_node $per_node disagree on a single node" >&2; exit 2
fi

device="${DEVICE_TARGET:-Ascend}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then PYTHON="$repo/.venv/bin/python"; else PYTHON="$(command -v python3)"; fi
fi
# msrun starts workers with the `python` it finds first on PATH: put the chosen interpreter's directory first
export PATH="$(dirname "$PYTHON"):$PATH"
command -v msrun >/dev/null || { echo "error: msrun not found next to $PYTHON (install mindspore)" >&2; exit 2; }

if [ "$device" = "Ascend" ]; then
  # Ascend performance settings from the MindFormers TeleChat2 recipes (spec §8):
  export ENABLE_CELL_REUSE=1               # compile one graph per repeated decoder layer (lazy inline): faster compile, less memory
  export MS_DEV_SIDE_EFFECT_LOAD_ELIM=3    # drop redundant parameter loads around side-effect ops (memory, speed)
  export MS_MEMORY_POOL_RECYCLE=1          # recycle the device memory pool between graphs
  export GE_NOT_CUT=1                      # keep the graph uncut in the GE backend
fi

extra=(--device_target "$device" --engine "$engine")
[ -n "$amp" ] && extra+=(--amp_level "$amp")
[ "$total" -gt 1 ] && extra+=(--use_parallel true)
mkdir -p "$log_dir"
echo "msrun: $total worker(s) ($nodes node(s) x $per_node), node_rank $node_rank, master $master_addr:$master_port, device $device, logs in $log_dir"
exec msrun --worker_num="$total" --local_worker_num="$per_node" --master_addr="$master_addr" \
  --master_port="$master_port" --node_rank="$node_rank" --log_dir="$log_dir" --join=True \
  --cluster_time_out=300 "$here/train.py" --config "$config" "${extra[@]}" "$@"
