#!/usr/bin/env bash
# Set up the dev environment (runtime stack + pytest + PyTorch references) and run the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/run_tests.sh -k config`. The suite runs in PMG_TEST_WORKERS
# (default 2) pytest-xdist workers, one test module per work unit, longest first (tests/conftest.py): much of a
# test's time is single-threaded graph compiling and process start-up, so two workers keep both cores busy.
# PMG_TEST_WORKERS=0 runs everything in this process.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh" requirements-dev.txt
# The web demo's browser test (tests/test_demo.py) drives Debian's chromium through its chromedriver: installed
# here from Debian when missing and we are root (CI), never downloaded by the test itself.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian's chromium and chromium-driver for the browser test"
    # a fresh machine has no package lists yet
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver >/dev/null; } \
      || echo "[setup] could not install chromium: tests/test_demo.py will fail" >&2
  else
    echo "[setup] tests/test_demo.py needs /usr/bin/chromium and /usr/bin/chromedriver:" \
         "sudo apt-get install chromium chromium-driver" >&2
  fi
fi
venv="${VENV:-$root/.venv}"
cd "$root"
# msrun starts workers with the first python on PATH: make it the venv's.
export PATH="$venv/bin:$PATH"
# One MindSpore CPU thread per process (research/pmg/runtime.py, cpu_threads) unless the caller says otherwise: the
# workers and the stage processes they start already fill the cores, and a pool of every core in each process
# oversubscribes them (two tiny pipelines side by side: 95.7 s with 2 threads each, 85.8 s with 1).
export PMG_NUM_THREADS="${PMG_NUM_THREADS:-1}"
# pytest exits 5 when it collected no test; like any non-zero code that fails the run.
exec python -m pytest -n "${PMG_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
