#!/usr/bin/env bash
# Extract preference and target keywords with the frozen LLM (research.pmg.keywords); arguments go to it, e.g.
#   bash scripts/run_keywords.sh --config configs/movielens.yaml --data output/movielens/data
#   bash scripts/run_keywords.sh --nproc 8 --config configs/pog.yaml      # 8 data-parallel workers (msrun)
# --nproc N starts N workers on this node with msrun; each takes every N-th sample and worker 0 merges the
# output. Several nodes: run the same command on each with NNODES, NODE_RANK and MASTER_ADDR set.
# MASTER_PORT (default 8118) and LOG_DIR (default output/msrun_keywords) set msrun's port and log folder.
# Relative paths are relative to where you run this.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  bash "$root/scripts/setup_env.sh" requirements.txt
fi
# msrun starts its workers with the first python on PATH: make it the venv's.
export PATH="$venv/bin:$PATH"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

nproc=1
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --nproc) nproc="$2"; shift 2 ;;
    --nproc=*) nproc="${1#--nproc=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if ! [[ "$nproc" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: --nproc must be a positive integer, got '$nproc'" >&2
  exit 2
fi
if [ "$nproc" -eq 1 ] && [ "${NNODES:-1}" -eq 1 ]; then
  exec python -m research.pmg.keywords "${args[@]}"
fi
nnodes="${NNODES:-1}"
log_dir="${LOG_DIR:-output/msrun_keywords}"
# msrun runs the file in every worker and in its scheduler process; with --join it echoes worker 0's log,
# which ends with the summary (worker 0 merges the output).
exec msrun --worker_num=$((nproc * nnodes)) --local_worker_num="$nproc" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
  --master_port="${MASTER_PORT:-8118}" --node_rank="${NODE_RANK:-0}" --log_dir="$log_dir" --join=True \
  "$root/research/pmg/keywords/__main__.py" "${args[@]}"
