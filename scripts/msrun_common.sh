# Shared by scripts/msrun_train.sh and scripts/msrun_predict.sh (sourced): the msrun launch options, the
# worker layout checks, the interpreter msrun starts, and the launch itself.
workers="" nodes=1 node_rank=0 master_addr=127.0.0.1 per_node=""

# msrun_option NAME VALUE: set one shared launch option; status 1 when NAME is not one of them
msrun_option() {
  case "$1" in
    --workers) workers="$2" ;;
    --nodes) nodes="$2" ;;
    --node_rank) node_rank="$2" ;;
    --master_addr) master_addr="$2" ;;
    --master_port) master_port="$2" ;;
    --workers_per_node) per_node="$2" ;;
    --log_dir) log_dir="$2" ;;
    *) return 1 ;;
  esac
}

# msrun_setup DEFAULT_WORKERS_PER_NODE MISSING_MESSAGE: sets total, device, PYTHON; checks msrun is there
msrun_setup() {
  per_node="${per_node:-${workers:-$1}}"
  [ -n "$per_node" ] || { echo "error: $2" >&2; exit 2; }
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
  mkdir -p "$log_dir"
}

# msrun_launch SCRIPT ARGS...: replace this shell with msrun over the layout set up above
msrun_launch() {
  exec msrun --worker_num="$total" --local_worker_num="$per_node" --master_addr="$master_addr" \
    --master_port="$master_port" --node_rank="$node_rank" --log_dir="$log_dir" --join=True \
    --cluster_time_out=300 "$@"
}
