#!/usr/bin/env bash
# Device self-test: run it on the machine that will run the real job, before the job (about 2 minutes).
#   bash scripts/check_ascend.sh [--nproc 2] [--config configs/selftest.yaml] [--set runtime.precision=fp16]
# Tiny PMG models train, encode the soft preference and generate on this device in graph mode, and are compared
# with reference values computed on CPU in fp32 (research/pmg/selftest/reference.json, tolerances per precision);
# prefix attention is compared with flash attention on and off; with --nproc N >= 2, N msrun workers train data
# parallel and must agree with each other and with one worker, each on its own device. One PASS/FAIL/SKIP line per
# check, then a summary; exit 1 on any FAIL. On CPU the same checks run against the same references (the flash
# attention one through a NumPy model of the kernel), which is what the test suite does.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/lib.sh"
pmg_setup

pmg_take_nproc "$@"
cd "$root"
exec python -m research.pmg.selftest --nproc "$nproc" "${args[@]}"
