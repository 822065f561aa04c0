#!/usr/bin/env bash
# Train PMG's soft preference (research.pmg.train): the project's main job.
#   bash scripts/run_train.sh                         # bundled default: PMG-mini end to end, CPU, no downloads
#   bash scripts/run_train.sh configs/pog.yaml [--resume] [--set train.lr=1e-5] [--nproc 8]
# With no config it sets up .venv and runs the PMG-mini pipeline (configs/mini/pmg.yaml: prepare, keywords,
# train, generate, evaluate, report). With a config it trains on that config's prepared data and keywords
# (run scripts/run_prepare.sh and scripts/run_keywords.sh first).
# --nproc N: N data-parallel workers on this node via msrun (several nodes: NNODES, NODE_RANK, MASTER_ADDR).
# MASTER_PORT (default 8128) and LOG_DIR (default <output_dir>/log/msrun_train) set msrun's port and logs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh" requirements.txt
venv="${VENV:-$root/.venv}"
# msrun starts its workers with the first python on PATH: make it the venv's.
export PATH="$venv/bin:$PATH"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

config=""
nproc=1
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --nproc) nproc="$2"; shift 2 ;;
    --nproc=*) nproc="${1#--nproc=}"; shift ;;
    *.yaml|*.yml) if [ -z "$config" ]; then config="$1"; else args+=("$1"); fi; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if ! [[ "$nproc" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: --nproc must be a positive integer, got '$nproc'" >&2
  exit 2
fi

if [ -z "$config" ]; then
  # The bundled default is PMG-mini end to end: a trained soft preference shows only in the images it conditions,
  # so the main job prepares, extracts keywords, trains, generates, evaluates and writes the report with the
  # simulated users' gallery (output/mini_pmg/report.md). Re-running continues or skips finished stages.
  cd "$root"
  exec python -m research.pmg.pipeline --config configs/mini/pmg.yaml --nproc "$nproc" "${args[@]}"
fi

nnodes="${NNODES:-1}"
if [ "$nproc" -eq 1 ] && [ "$nnodes" -eq 1 ]; then
  exec python -m research.pmg.train --config "$config" "${args[@]}"
fi
log_dir="${LOG_DIR:-output/log/msrun_train}"
msrun --worker_num=$((nproc * nnodes)) --local_worker_num="$nproc" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
  --master_port="${MASTER_PORT:-8128}" --node_rank="${NODE_RANK:-0}" --log_dir="$log_dir" --join=True \
  "$root/research/pmg/train/__main__.py" --config "$config" --no-progress "${args[@]}"
tail -n 3 "$log_dir/worker_0.log" 2>/dev/null || true
