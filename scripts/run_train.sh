#!/usr/bin/env bash
# Train PMG's soft preference (research.pmg.train): the project's main job.
#   bash scripts/run_train.sh                         # bundled default: PMG-mini end to end, CPU, no downloads
#   bash scripts/run_train.sh configs/pog.yaml [--resume] [--set train.lr=1e-5] [--nproc 8]
# With no config it sets up .venv and runs the PMG-mini pipeline (configs/mini/pmg.yaml: prepare, keywords,
# train, generate, evaluate, report). With a config it trains on that config's prepared data and keywords
# (run scripts/run_prepare.sh and scripts/run_keywords.sh first).
# --nproc N: N data-parallel workers on this node via msrun (several nodes: NNODES, NODE_RANK, MASTER_ADDR).
# MASTER_PORT (default 8128) and LOG_DIR (default <runtime log folder>/msrun_train) set msrun's port and logs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/lib.sh"
pmg_setup

pmg_take_nproc "$@"
config=""
rest=()
for arg in "${args[@]}"; do  # the first .yaml argument is the config, wherever it is
  if [ -z "$config" ] && [[ "$arg" == *.yaml || "$arg" == *.yml ]]; then config="$arg"; else rest+=("$arg"); fi
done
args=("${rest[@]}")

if [ -z "$config" ]; then
  # The bundled default is PMG-mini end to end: a trained soft preference shows only in the images it conditions,
  # so the main job prepares, extracts keywords, trains, generates, evaluates and writes the report with the
  # simulated users' gallery (output/mini_pmg/report.md). Re-running continues or skips finished stages.
  cd "$root"
  exec python -m research.pmg.pipeline --config configs/mini/pmg.yaml --nproc "$nproc" "${args[@]}"
fi

if [ "$nproc" -eq 1 ] && [ "${NNODES:-1}" -eq 1 ]; then
  exec python -m research.pmg.train --config "$config" "${args[@]}"
fi
log_dir="$(pmg_log_dir train --config "$config" "${args[@]}")"
pmg_msrun 8128 "$log_dir" "$root/research/pmg/train/__main__.py" --config "$config" --no-progress "${args[@]}"
tail -n 3 "$log_dir/worker_0.log" 2>/dev/null || true
