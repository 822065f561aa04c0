#!/usr/bin/env bash
# Extract preference and target keywords with the frozen LLM (research.pmg.keywords); arguments go to it, e.g.
#   bash scripts/run_keywords.sh --config configs/movielens.yaml --data output/movielens/data
#   bash scripts/run_keywords.sh --nproc 8 --config configs/pog.yaml      # 8 data-parallel workers (msrun)
# --nproc N starts N workers on this node with msrun; each takes every N-th sample and worker 0 merges the
# output. Several nodes: run the same command on each with NNODES, NODE_RANK and MASTER_ADDR set.
# MASTER_PORT (default 8118) and LOG_DIR (default <runtime log folder>/msrun_keywords) set msrun's port and logs.
# Relative paths are relative to where you run this.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/lib.sh"
pmg_setup

pmg_take_nproc "$@"
if [ "$nproc" -eq 1 ] && [ "${NNODES:-1}" -eq 1 ]; then
  exec python -m research.pmg.keywords "${args[@]}"
fi
# msrun runs the file in every worker and in its scheduler process; with --join it echoes worker 0's log,
# which ends with the summary (worker 0 merges the output).
log_dir="$(pmg_log_dir keywords "${args[@]}")"
pmg_msrun 8118 "$log_dir" "$root/research/pmg/keywords/__main__.py" "${args[@]}"
