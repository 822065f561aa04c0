#!/usr/bin/env bash
# Set up the dev environment (runtime stack + pytest + PyTorch references) and run the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/run_tests.sh -k config`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh" requirements-dev.txt
venv="${VENV:-$root/.venv}"
cd "$root"
# msrun starts workers with the first python on PATH: make it the venv's.
export PATH="$venv/bin:$PATH"
# pytest exits 5 when it collected no test; like any non-zero code that fails the run.
exec python -m pytest "$@"
