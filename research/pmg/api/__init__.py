"""PMG as a library and a single-user command: one user's history in, personalized images out.

:class:`PMG` (session.py) loads a config's models once and answers requests; request.py checks what a caller
sends (item ids or free items); result.py is what comes back and how it is saved. ``python -m research.pmg.api``
is the single-user command behind ``scripts/run_infer.sh --history/--user/--request``.
"""
from research.pmg.api.request import FreeItem, RequestError, check_fields, load_request
from research.pmg.api.result import Candidate, Personalized
from research.pmg.api.session import PMG

__all__ = ["PMG", "Personalized", "Candidate", "FreeItem", "RequestError", "check_fields", "load_request"]
