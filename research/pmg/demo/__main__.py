"""``python -m research.pmg.demo [--config CONFIG] [--port N] [--host HOST] [--set k=v]``: the web demo.

    python -m research.pmg.demo                    # PMG-mini (configs/mini/pmg.yaml) on http://127.0.0.1:7860/
    python -m research.pmg.demo --port 0           # any free port (the line printed at start names it)

Serves the page until Ctrl-C. The dataset is prepared at start when missing; the models load on the first
request, which also compiles their graphs (about a minute for PMG-mini on CPU; later requests take seconds).
The trained soft preference is the newest checkpoint of the config's training folder when there is one (after
``bash scripts/run_train.sh``), else the demo runs on keywords only and the page says so.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from research.pmg.cli import ArgumentParser, add_config_args, field_overrides, run  # noqa: E402

DEFAULT_CONFIG = str(Path(__file__).resolve().parents[3] / "configs" / "mini" / "pmg.yaml")
DEFAULT_PORT = 7860  # Gradio's, as the official demo used


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m research.pmg.demo", description=__doc__.splitlines()[0].split(": ", 1)[1])
    add_config_args(p, default_config=DEFAULT_CONFIG)
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0: any free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; the demo has no login)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: must be from 0 to 65535")

    from research.pmg.api import PMG
    from research.pmg.demo.server import DemoServer

    pmg = PMG.from_config(args.config, field_overrides(args))
    server = DemoServer(pmg, (args.host, args.port), config=_shown(args.config))
    world = server.world
    soft = "trained soft preference on" if world["soft_checkpoint"] else "keywords only (no trained soft preference)"
    print(f"PMG demo on {server.url} ({len(world['users'])} users, {len(world['items'])} items, {soft}); "
          "Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()
    return 0


def _shown(config: str) -> str:
    """The config's path as the page names it: relative to the working folder when inside it."""
    path = Path(config).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else config


if __name__ == "__main__":
    sys.exit(run(main))
