"""The records stages hand to each other: prepared samples (``samples.py``) and extracted keywords (``keywords.py``)."""
