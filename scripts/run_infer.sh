#!/usr/bin/env bash
# Generate personalized images, balanced by CLIP (research.pmg.generate); arguments go to it, e.g.
#   bash scripts/run_infer.sh                      # bundled default: tiny models, sticker sample, CPU
#   bash scripts/run_infer.sh --config configs/pog.yaml --soft-checkpoint output/pog/train
#   bash scripts/run_infer.sh --config configs/pog.yaml --weighting repetition --out output/pog/generate-repetition
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
out="$(python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["runtime"]["output_dir"])' "$config")"
if [ ! -f "$out/data/samples.jsonl" ]; then
  python -m research.pmg.data.prepare --config "$config" --no-progress
fi
if [ ! -f "$out/keywords/keywords.jsonl" ]; then
  python -m research.pmg.keywords --config "$config" --no-progress
fi
soft=()
case " ${args[*]-} " in
  *" --soft-checkpoint"*) ;;
  *) if compgen -G "$out/train/checkpoints/step-*/soft_preference.ckpt" > /dev/null; then
       soft=(--soft-checkpoint "$out/train")
     fi ;;
esac
exec python -m research.pmg.generate --config "$config" "${soft[@]}" "${args[@]}"
