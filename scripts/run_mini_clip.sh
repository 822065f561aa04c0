#!/usr/bin/env bash
# PMG-mini, image side (1/2): train CLIP-mini contrastively on the sticker images and their Unicode-name captions
# (research.pmg.mini.clip_train) and export it with its tokenizer and manifest to research/pmg/assets/mini/clip/.
#   bash scripts/run_mini_clip.sh                                 # configs/mini/clip.yaml, CPU
#   bash scripts/run_mini_clip.sh [CONFIG] [--resume] [--set train.max_steps=100] [--no-export]
# Writes output/mini/clip/ (tokenizer/, checkpoints/step-*/, train_log.jsonl); --resume continues from the
# newest checkpoint exactly where it stopped. Run before scripts/run_mini_sd.sh (SD uses CLIP-mini's text tower).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/lib.sh"
pmg_setup

config="$root/configs/mini/clip.yaml"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    *.yaml|*.yml) config="$1"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
cd "$root"  # the config's output and export paths are relative to the repository
exec python -m research.pmg.mini.clip_train --config "$config" "${args[@]}"
