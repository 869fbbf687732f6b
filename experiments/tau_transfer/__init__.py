"""Wang & Aitchison (ICML 2025): is the best λ's EMA timescale τ_epoch = 1/(η·λ·steps per epoch) what stays put when
the training set grows 4× at a fixed number of epochs, or is it the best λ? Decoder-only LMs with AdamW."""
