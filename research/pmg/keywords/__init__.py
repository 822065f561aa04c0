"""Stage 2 of PMG: preference keywords k_p and target keywords k_t from a frozen LLM (the paper's explicit preference keywords).

Run it with ``python -m research.pmg.keywords`` (or ``scripts/run_keywords.sh``); later stages read its output
with research.pmg.records.keywords.load_keywords. Importing this package does not import MindSpore.
"""
from research.pmg.keywords.merge import merge_ranked, normalise_keyword, pick_integrated
from research.pmg.keywords.parse import ParseResult, parse_keywords

__all__ = ["ParseResult", "merge_ranked", "normalise_keyword", "parse_keywords", "pick_integrated"]
