"""The device self-test behind ``scripts/check_ascend.sh``: what CPU tests cannot settle, settled on the device.

Tiny models (``configs/selftest.yaml``) run PMG's own training step, soft-preference encoder and generation in
the configured mode and precision; their losses, soft embeddings and images are compared with reference values
computed once on CPU in fp32 (``reference.json``, written by ``--write-reference``), with tolerances per
precision (:data:`research.pmg.selftest.checks.TOLERANCES`). It also compares prefix attention with flash
attention on and off, runs data parallel over msrun workers against one worker, and checks that each worker
ran on its own device. One PASS/FAIL/SKIP line per check, then a summary; exit 1 on any FAIL.
"""
