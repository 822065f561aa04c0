"""Stage 4 of PMG: personalized images balanced between preference and target by CLIP (the paper's balancing step).

Run it with ``python -m research.pmg.generate`` (or ``scripts/run_infer.sh``). The pieces, each usable alone:
:mod:`.pipeline` (batched sampling with guidance), :mod:`.conditioning` (per-candidate contexts, two weighting
realisations), :mod:`.scorer` (CLIP d_p, d_t), :mod:`.select` (z and the choice, NumPy only), :mod:`.outputs`
(manifest, images, contact sheets) and :mod:`.run` (orchestration and resume). Importing this package does
not import MindSpore.
"""
from research.pmg.generate.select import COSINE_FLOOR, Selection, balance_score, cosine_similarity, select

__all__ = ["COSINE_FLOOR", "Selection", "balance_score", "cosine_similarity", "select"]
