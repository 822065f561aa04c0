#!/usr/bin/env bash
# The whole PMG pipeline (research.pmg.pipeline): prepare -> keywords -> train -> generate -> evaluate -> report.
#   bash scripts/run_pipeline.sh                         # configs/mini/pmg.yaml: PMG-mini, CPU, minutes
#   bash scripts/run_pipeline.sh configs/pog.yaml --nproc 8 [--set train.lr=1e-5] [--stages ...] [--force ...]
# Each stage is skipped when its outputs are complete and were made from the same settings and inputs, so
# running the same command again after a crash or a kill continues where it stopped. Stage logs go to
# <output_dir>/log/pipeline/, the report to <output_dir>/report.md.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/lib.sh"
pmg_setup

args=()
if [ $# -gt 0 ] && [[ "$1" == *.yaml || "$1" == *.yml ]]; then
  args+=(--config "$1")
  shift
else
  cd "$root"  # the default (configs/mini/pmg.yaml) names its bundled models and data relative to the repository
fi
exec python -m research.pmg.pipeline "${args[@]}" "$@"
