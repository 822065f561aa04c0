#!/usr/bin/env bash
# Evaluate generated images (research.pmg.evaluate): LPIPS, SSIM and CLIP against history and target images,
# bootstrap intervals, paired comparisons between methods, and a report. Arguments go to it, e.g.
#   bash scripts/run_eval.sh --config configs/pog.yaml --set evaluate.lpips_weights=weights/lpips_alex.ckpt
#   bash scripts/run_eval.sh --config configs/pog.yaml --method pmg=DIR1 --method no_pers=DIR2
#   bash scripts/run_eval.sh --config configs/pog.yaml --plan          # the runs the baselines/sweeps need
#   bash scripts/run_eval.sh --config configs/pog.yaml --run-methods   # make missing method images, then evaluate
# Writes <output_dir>/evaluate/ (results.md, results.csv, comparison.csv, per_sample.csv, chart.png,
# gallery.html, summary.json); see research/pmg/evaluate/README.md. Relative paths are relative to where
# you run this.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/lib.sh"
pmg_setup
exec python -m research.pmg.evaluate "$@"
