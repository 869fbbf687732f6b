"""What the experiment trains: three datasets with their models, the λ grid of each regularizer, and the verdict's
thresholds (fixed before the full run)."""

from __future__ import annotations

from typing import Any

FAMILIES = ("l2", "coupled", "decoupled", "l1", "dropout")  # dropout is swept as p with λ = 0
PROCESSES = 2  # datasets trained side by side, one process and one torch thread each (a 2-core machine)

# Every model trains with Adam (coupled decay needs torch Adam; decaylab's decoupled mode turns it into AdamW), a
# constant lr and small batches (many steps) so that λ = 0 overfits the small training set within the epochs,
# gradients clipped at 1,
# decay on weight matrices and embeddings (no biases, no norms). One torch thread: these models are too small for
# two threads to pay, and on a shared machine OpenMP's waiting threads made a trial 5-30x slower (measured).
TRAIN = {"optimizer": "adam", "schedule": "constant", "batch_tokens": 2048, "clip_norm": 1.0, "threads": 1}
REGULARIZATION = {"decay_set": "no_bias_norm", "decay_scaling": "lr"}

# The Transformers train 16 epochs, the GRU 10: in pilots (one seed, whole split, λ = 0) the GRU's validation loss
# turned up after epoch 5 while both Transformers were still falling at epoch 7-8 (lr 0.006 was slower still).
# λ grids as powers of ten, half a decade apart (ratio √10: 10× is two grid steps, 100× four), per mode: from below
# the usual range's lower part to far enough above the expected optimum that 10× and 100× above it are on the grid.
# decoupled's λ multiplies lr (the per-step shrink is lr·λ), l2/coupled add λ·w to the gradient before Adam
# normalizes it, l1 adds λ·sign(w) (about λ·w / |w|, |w| ~ 0.05, so ~20× smaller λ for the same pull).
EXPONENTS = {"l2": (-5.0, -1.5), "coupled": (-5.0, -1.5), "decoupled": (-1.5, 2.0), "l1": (-6.5, -3.0)}
DROPOUTS = [0.0, 0.1, 0.2, 0.3, 0.5]
STEP = 0.5  # decades between grid points

DATASETS: dict[str, dict[str, Any]] = {
    "bible-en-es": {  # English -> Spanish verses, the GRU encoder-decoder with attention
        "data": {"name": "bible-en-es", "max_examples": 400, "max_valid_examples": 200, "max_test_examples": 300,
                 "max_words": 30},
        "tokenizer": {"vocab_size": 2000},
        "model": {"arch": "rnn", "cell": "gru", "embed_dim": 64, "hidden": 128, "layers": 1},
        "train": {"lr": 0.01, "epochs": 10, "batch_tokens": 1024},
    },
    "shakespeare-plays": {  # a builtin LM corpus, the decoder-only Transformer on 64-token blocks
        "data": {"name": "shakespeare-plays", "max_examples": 400, "max_valid_examples": 150,
                 "max_test_examples": 150, "block_size": 64},
        "tokenizer": {"vocab_size": 2000},
        "model": {"arch": "decoder", "d_model": 64, "heads": 4, "layers": 2, "ffn": 256},
        "train": {"lr": 0.003, "epochs": 16, "batch_tokens": 512},
    },
    "bible-kjv-web": {  # KJV -> World English Bible (English -> English), the Transformer encoder-decoder
        "data": {"name": "bible-kjv-web", "max_examples": 400, "max_valid_examples": 200, "max_test_examples": 300,
                 "max_words": 30},
        "tokenizer": {"vocab_size": 2000},
        "model": {"arch": "transformer", "d_model": 64, "heads": 4, "encoder_layers": 2, "decoder_layers": 2,
                  "ffn": 256},
        "train": {"lr": 0.003, "epochs": 16, "batch_tokens": 512},
    },
}
FULL: dict[str, Any] = {"datasets": DATASETS, "folds": 3, "exponents": EXPONENTS, "dropouts": DROPOUTS,
                        "bleu_examples": 200, "resamples": 1000, "seed": 0}

# The quick variant: the same pipeline on tiny slices, one epoch, two λ per mode (its numbers are not the result).
QUICK_DATA = {"bible-en-es": {"max_examples": 60, "max_valid_examples": 12, "max_test_examples": 12},
              "shakespeare-plays": {"max_examples": 24, "max_valid_examples": 6, "max_test_examples": 6},
              "bible-kjv-web": {"max_examples": 60, "max_valid_examples": 12, "max_test_examples": 12}}
QUICK: dict[str, Any] = {
    "datasets": {name: {**ds, "data": {**ds["data"], **QUICK_DATA[name]}, "tokenizer": {"vocab_size": 200},
                        "train": {**ds["train"], "epochs": 1}} for name, ds in DATASETS.items()},
    "folds": 2, "exponents": {"l2": (-3.0, -2.5), "coupled": (-3.0, -2.5), "decoupled": (-0.5, 0.0),
                              "l1": (-5.0, -4.5)},
    "dropouts": [0.0, 0.3], "bleu_examples": 8, "resamples": 200, "seed": 0}

# The verdict's thresholds, fixed before the full run.
U_SE = 1.0  # U-shaped: CV minimum strictly inside the grid, λ = 0 and the 100× end (or the grid's end) > 1 SE worse
OVER_SE = 2.0  # over-regularization hurts: 10× and 100× above the optimum > 2 SE (of the optimum's mean) worse
ALPHA = 0.05  # the chosen λ beats λ = 0 on the test split: paired bootstrap p < ALPHA and a lower loss
REPRODUCED, PARTLY = 0.8, 0.5  # share of (dataset, regularizer) curves for "reproduced" and "partly reproduced"


def grid(settings: dict[str, Any], family: str) -> list[float]:
    """The λ > 0 of one mode (rounded as decaylab's log grids are), or the dropout probabilities (0 included)."""
    if family == "dropout":
        return list(settings["dropouts"])
    lo, hi = settings["exponents"][family]
    count = round((hi - lo) / STEP) + 1
    return [float(f"{10 ** (lo + i * STEP):.6g}") for i in range(count)]


def base_config(settings: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The raw decaylab config every sweep of `dataset` starts from (dropout 0, no decay)."""
    ds = settings["datasets"][dataset]
    return {"seed": settings["seed"], "data": dict(ds["data"]), "tokenizer": dict(ds["tokenizer"]),
            "model": {**ds["model"], "dropout": 0.0}, "train": {**TRAIN, **ds["train"]},
            "regularization": {**REGULARIZATION, "mode": "none", "weight_decay": 0.0}}
