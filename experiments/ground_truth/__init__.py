"""Ground truth for λ selection: ridge regression on a linear teacher with label noise (Krogh & Hertz 1991)."""
