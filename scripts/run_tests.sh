#!/usr/bin/env bash
# Set up the dev environment (runtime stack + pytest + PyTorch references) and run the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/run_tests.sh -k config`. The suite runs in PMG_TEST_WORKERS
# (default 2) pytest-xdist workers, one test module per work unit, longest first (tests/conftest.py): much of a
# test's time is single-threaded graph compiling and process start-up, so two workers keep both cores busy.
# PMG_TEST_WORKERS=0 runs everything in this process.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh" requirements-dev.txt
venv="${VENV:-$root/.venv}"
cd "$root"
# msrun starts workers with the first python on PATH: make it the venv's.
export PATH="$venv/bin:$PATH"
# pytest exits 5 when it collected no test; like any non-zero code that fails the run.
exec python -m pytest -n "${PMG_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
