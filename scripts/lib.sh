# Shared by the scripts/run_*.sh launchers (sourced, after they set `root`): environment setup and msrun.

# pmg_setup [REQUIREMENTS]: make sure the venv ($VENV, default .venv) has the requirements (setup_env.sh only
# installs when a requirements file changed), put its python first on PATH (msrun starts its workers with the
# first python there) and the repository on PYTHONPATH.
pmg_setup() {
  bash "$root/scripts/setup_env.sh" "${1:-requirements.txt}"
  venv="${VENV:-$root/.venv}"
  export PATH="$venv/bin:$PATH"
  export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
}

# pmg_take_nproc ARGS...: --nproc N (or --nproc=N) out of the arguments: sets `nproc` (default 1) and the array
# `args` (the other arguments, in order); exits 2 with one line when N is not a positive integer.
pmg_take_nproc() {
  nproc=1
  args=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --nproc) nproc="${2:-}"; shift $(( $# > 1 ? 2 : 1 )) ;;
      --nproc=*) nproc="${1#--nproc=}"; shift ;;
      *) args+=("$1"); shift ;;
    esac
  done
  if ! [[ "$nproc" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: --nproc must be a positive integer, got '$nproc'" >&2
    exit 2
  fi
}

# pmg_msrun DEFAULT_PORT LOG_DIR SCRIPT ARGS...: SCRIPT on `nproc` workers per node with msrun; several nodes
# with NNODES, NODE_RANK, MASTER_ADDR; MASTER_PORT overrides the port. --join echoes worker 0's log.
pmg_msrun() {
  local port="$1" log_dir="$2"
  shift 2
  msrun --worker_num=$((nproc * ${NNODES:-1})) --local_worker_num="$nproc" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${MASTER_PORT:-$port}" --node_rank="${NODE_RANK:-0}" --log_dir="$log_dir" --join=True "$@"
}

# pmg_log_dir NAME ARGS...: where msrun writes its worker logs for the config in ARGS (--config, --set):
# <runtime log folder>/msrun_NAME (research/pmg/layout.py), unless LOG_DIR is set. A bad config ends here with
# its one error: line, before msrun starts.
pmg_log_dir() {
  if [ -n "${LOG_DIR:-}" ]; then echo "$LOG_DIR"; return; fi
  python - "$@" <<'PY'
import sys

from research.pmg.cli import ArgumentParser, add_config_args, config_from_args, run
from research.pmg.layout import Layout


def main(argv):
    parser = ArgumentParser(allow_abbrev=False, add_help=False)  # only --config and --set; the stage reads the rest
    add_config_args(parser, required=False)
    args, _ = parser.parse_known_args(argv[1:])
    print(Layout.of(config_from_args(args)).logs / f"msrun_{argv[0]}")


sys.exit(run(main, sys.argv[1:]))
PY
}
