#!/usr/bin/env bash
# The whole PMG pipeline (research.pmg.pipeline): prepare -> keywords -> train -> generate -> evaluate -> report.
#   bash scripts/run_pipeline.sh                         # configs/mini/pmg.yaml: PMG-mini, CPU, minutes
#   bash scripts/run_pipeline.sh configs/pog.yaml --nproc 8 [--set train.lr=1e-5] [--stages ...] [--force ...]
# Each stage is skipped when its outputs are complete and were made from the same settings and inputs, so
# running the same command again after a crash or a kill continues where it stopped. Stage logs go to
# <output_dir>/log/pipeline/, the report to <output_dir>/report.md.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ] || [ -n "${SETUP:-}" ]; then
  bash "$root/scripts/setup_env.sh" requirements.txt
fi
# msrun (--nproc) starts its workers with the first python on PATH: make it the venv's.
export PATH="$venv/bin:$PATH"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

args=()
if [ $# -gt 0 ] && [[ "$1" == *.yaml || "$1" == *.yml ]]; then
  args+=(--config "$1")
  shift
else
  cd "$root"  # the default (configs/mini/pmg.yaml) names its bundled models and data relative to the repository
fi
exec python -m research.pmg.pipeline "${args[@]}" "$@"
