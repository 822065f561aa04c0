#!/usr/bin/env bash
# Generate personalized images, balanced by CLIP (research.pmg.generate); arguments go to it, e.g.
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
