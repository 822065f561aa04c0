"""Training the soft preference (bias-correction LLM) through frozen Stable Diffusion: ``python -m research.pmg.train``."""
