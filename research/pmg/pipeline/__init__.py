"""The whole PMG pipeline in one command: prepare -> keywords -> train -> generate -> evaluate -> report.

    python -m research.pmg.pipeline [--config configs/mini/pmg.yaml] [--set k=v] [--nproc N]
    bash scripts/run_pipeline.sh [CONFIG] [--nproc N]

Each stage runs as its own command (``python -m research.pmg.<stage>``, or under ``msrun`` with ``--nproc``)
and is skipped when a stamp says its outputs are complete, unchanged and made from the same settings and
inputs: see :mod:`research.pmg.pipeline.runner`.
"""
