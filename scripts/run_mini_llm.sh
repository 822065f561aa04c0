#!/usr/bin/env bash
# PMG-mini, LLM side: train the small MindFormers Llama that answers the keyword stage's sticker prompts
# (research.pmg.mini.llm_train) and export it with its tokenizer and manifest to research/pmg/assets/mini/llm/.
#   bash scripts/run_mini_llm.sh                                  # configs/mini/llm.yaml, CPU
#   bash scripts/run_mini_llm.sh [CONFIG] [--resume] [--set train.max_steps=100] [--no-export] [--eval-samples N]
# Writes output/mini/llm/ (worlds, tokenizer, pairs.jsonl, checkpoints/step-*/, train_log.jsonl, eval/);
# --resume continues from the newest checkpoint exactly where it stopped.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/lib.sh"
pmg_setup

config="$root/configs/mini/llm.yaml"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    *.yaml|*.yml) config="$1"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
exec python -m research.pmg.mini.llm_train --config "$config" "${args[@]}"
