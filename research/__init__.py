"""Research code; see research/pmg."""
