#!/usr/bin/env bash
# Create (once) the project's virtual environment in .venv and install a requirements file into it.
# Usage: bash scripts/setup_env.sh [requirements.txt|requirements-dev.txt]
# PYTHON selects the interpreter (MindSpore 2.7.2 wheels exist for Python 3.9-3.11); VENV the folder.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
requirements="${1:-requirements.txt}"
venv="${VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv with $("$python" --version 2>&1)"
  "$python" -m venv "$venv"
fi
stamp="$venv/.installed-$(basename "$requirements" .txt)"
# Packages whose declared dependencies must not be installed (see the file's comments).
nodeps="$root/${requirements%.txt}-nodeps.txt"
# Re-install only when a requirements file changed since the last successful install.
if [ ! -f "$stamp" ] || [ "$root/$requirements" -nt "$stamp" ] || [ "$root/requirements.txt" -nt "$stamp" ] \
   || { [ -f "$nodeps" ] && [ "$nodeps" -nt "$stamp" ]; }; then
  echo "[setup] installing $requirements (first time: about 3 minutes)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/$requirements"
  if [ -f "$nodeps" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$nodeps"
  fi
  touch "$stamp"
fi
