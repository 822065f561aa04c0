#!/usr/bin/env bash
# One user (research.pmg.api): with --user, --history or --request, personalized images for that one history, e.g.
#   bash scripts/run_infer.sh --user u007                   # PMG-mini (configs/mini/pmg.yaml), a prepared user
#   bash scripts/run_infer.sh --history 1f431,1f408,1f63a --target 1f370 --n 2
#   bash scripts/run_infer.sh --request my_request.json --config configs/movielens.yaml
# writes chosen.png, sheet.png (history | target | candidates | chosen), every candidate and result.json into
# <runtime.output_dir>/infer/<name> (or --out) and prints the keywords and scores.
#
# A whole split (research.pmg.generate) otherwise; arguments go to it, e.g.
#   bash scripts/run_infer.sh                      # bundled default: tiny models, sticker sample, CPU
#   bash scripts/run_infer.sh --config configs/pog.yaml --soft-checkpoint output/pog/train
#   bash scripts/run_infer.sh --config configs/pog.yaml --set generate.weighting=repetition \
#       --out output/pog/generate-repetition
# With no --config it uses configs/tiny.yaml: it prepares the sticker sample and extracts its keywords when those
# outputs are missing, and uses the newest soft-preference checkpoint of scripts/run_train.sh when there is one.
# Finished samples are skipped, so running the same command again resumes. Relative paths are relative to where
# you run this.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/lib.sh"
pmg_setup

args=("$@")
for arg in "$@"; do
  case "$arg" in --user|--user=*|--history|--history=*|--request|--request=*) exec python -m research.pmg.api "${args[@]}" ;; esac
done
for arg in "$@"; do
  case "$arg" in --config|--config=*) exec python -m research.pmg.generate "${args[@]}" ;; esac
done
config="$root/configs/tiny.yaml"
# Where the config's stages write (research/pmg/layout.py): the prepared data, the keywords file, the training folder.
paths="$(python -c 'import sys
from research.pmg.config import load_config
from research.pmg.layout import Layout
layout = Layout.of(load_config(sys.argv[1]))
print(layout.data, layout.keywords, layout.train, sep="\n")' "$config")"
mapfile -t layout <<< "$paths"
data="${layout[0]}" keywords="${layout[1]}" train="${layout[2]}"
if [ ! -f "$data/samples.jsonl" ]; then
  python -m research.pmg.data.prepare --config "$config" --no-progress
fi
if [ ! -f "$keywords" ]; then
  python -m research.pmg.keywords --config "$config" --no-progress
fi
soft=()
case " ${args[*]-} " in
  *" --soft-checkpoint"*) ;;
  *) if compgen -G "$train/checkpoints/step-*/soft_preference.ckpt" > /dev/null; then
       soft=(--soft-checkpoint "$train")
     fi ;;
esac
exec python -m research.pmg.generate --config "$config" "${soft[@]}" "${args[@]}"
