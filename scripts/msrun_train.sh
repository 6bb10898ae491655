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

source "$here/msrun_common.sh"
config="" master_port=8118 log_dir=output/msrun_log amp="" engine=native
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --amp) amp="$2"; shift 2 ;;
    --engine) engine="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) if [ $# -ge 2 ] && msrun_option "$1" "$2"; then shift 2
       else echo "error: unknown option $1 (train flags go after --)" >&2; exit 2; fi ;;
  esac
done
[ -n "$config" ] || { echo "error: --config YAML is required" >&2; exit 2; }
[ -f "$config" ] || { echo "error: $config: file not found" >&2; exit 2; }
case "$amp" in ""|O0|O1|O2) ;; *) echo "error: --amp must be O0, O1 or O2, got $amp" >&2; exit 2 ;; esac
msrun_setup 8 "give --workers N"

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
echo "msrun: $total worker(s) ($nodes node(s) x $per_node), node_rank $node_rank, master $master_addr:$master_port, device $device, logs in $log_dir"
msrun_launch "$here/train.py" --config "$config" "${extra[@]}" "$@"
