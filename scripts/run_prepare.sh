#!/usr/bin/env bash
# Prepare a scenario's raw data into canonical samples (research.pmg.data.prepare); arguments go to it, e.g.
#   bash scripts/run_prepare.sh --scenario movielens --raw data/ml-latest-small --images data/posters \
#       --out output/movielens/data
#   bash scripts/run_prepare.sh --config configs/pog.yaml --raw data/POG
# With no --raw the bundled sample of the scenario is used. Relative paths are relative to where you run this.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/lib.sh"
pmg_setup
exec python -m research.pmg.data.prepare "$@"
