#!/usr/bin/env bash
# PMG-mini, image side (2/2): train the mini Stable Diffusion (a small AutoencoderKL, then a UNet2DConditionModel on
# CLIP-mini's frozen text tower) on the sticker images and captions (research.pmg.mini.sd_train), export it as a
# diffusers folder to research/pmg/assets/mini/sd/ and measure CLIP-mini caption retrieval of its samples.
#   bash scripts/run_mini_sd.sh                                   # configs/mini/sd.yaml, CPU
#   bash scripts/run_mini_sd.sh [CONFIG] [--resume] [--set unet_train.max_steps=100] [--no-export]
# Needs research/pmg/assets/mini/clip (scripts/run_mini_clip.sh). Writes output/mini/sd/{vae,unet}/
# (checkpoints/step-*/, train_log.jsonl); --resume continues from the newest checkpoints exactly where it stopped.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/lib.sh"
pmg_setup

config="$root/configs/mini/sd.yaml"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    *.yaml|*.yml) config="$1"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
cd "$root"  # the config's output, CLIP and export paths are relative to the repository
exec python -m research.pmg.mini.sd_train --config "$config" "${args[@]}"
