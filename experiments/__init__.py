"""decaylab's experiments: one folder per claim of the literature, each reproduced by one command (README.md)."""
