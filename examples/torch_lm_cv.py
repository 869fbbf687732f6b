"""Your own nn.Module and training loop, its weight decay chosen by 3-fold CV with `decaylab.sweep`.

    python examples/torch_lm_cv.py --output sweeps/torch-lm

A character-level GRU language model on the first speeches of the builtin `shakespeare-plays` corpus, trained by
a plain PyTorch loop. The loop gets everything sweep-specific from the `decaylab.Trial` it is called with: the
point's `Regularization` (`trial.optimizer`), the fold to hold out (`trial.split`), the seed (already set), where
to report (`trial.report`) and how to continue after a kill (`trial.restore`). The sweep does the rest: 3-fold CV
over the training speeches, the 1-SE rule, the final model on all of them, one test score, `report.html`.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

try:
    import decaylab
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import decaylab

import torch
from torch import nn

from decaylab.data.builtin import load_builtin_documents
from decaylab.regularization import Regularization
from decaylab.report import write_report

CORPUS = "shakespeare-plays"
LENGTH = 48  # characters per training sequence
OBJECTIVE = f"{Path(__file__).resolve()}:char_gru"  # FILE.py:FUNCTION: `decaylab sweep --resume` finds it again


@functools.cache
def corpus(speeches: int) -> tuple[list[str], list[str], list[str], dict[str, int]]:
    """(train, valid, test) speeches of at least 40 characters, split 80/10/10 in order, and the character ids."""
    texts = [t for t in load_builtin_documents(CORPUS) if len(t) >= 40][:speeches]
    cut, end = int(0.8 * len(texts)), int(0.9 * len(texts))
    chars = sorted({c for t in texts[:cut] for c in t})
    return texts[:cut], texts[cut:end], texts[end:], {c: i + 1 for i, c in enumerate(chars)}  # 0: unknown/end


def sequences(texts: list[str], vocab: dict[str, int]) -> torch.Tensor:
    """The texts joined (0 between them) and cut into rows of LENGTH + 1 ids (input and next character)."""
    ids = [i for t in texts for i in [vocab.get(c, 0) for c in t] + [0]]
    rows = len(ids) // (LENGTH + 1)
    return torch.tensor(ids[: rows * (LENGTH + 1)]).view(rows, LENGTH + 1)


class CharGRU(nn.Module):
    """Embedding → GRU → LayerNorm → next-character logits."""

    def __init__(self, vocab: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.gru = nn.GRU(width, width, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.gru(self.embed(x))
        return self.out(self.norm(hidden))


def loss_of(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats per character) of predicting each next character."""
    logits = model(rows[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate(model: nn.Module, rows: torch.Tensor) -> float:
    model.eval()
    loss = loss_of(model, rows).item()
    model.train()
    return loss


def char_gru(trial: decaylab.Trial) -> nn.Module:
    """One trial: train the GRU with the trial's regularization; score on the held-out fold (or validation)."""
    speeches, width = int(trial.params["speeches"]), int(trial.params["width"])
    train_texts, valid_texts, test_texts, vocab = corpus(speeches)
    train, held_out = trial.split(train_texts)
    rows = sequences(train, vocab)
    valid = sequences(held_out if held_out is not None else valid_texts, vocab)
    model = CharGRU(len(vocab) + 1, width)  # torch is seeded by the sweep: every λ starts from these weights
    optimizer = trial.optimizer(model, "adamw", lr=float(trial.params["lr"]), betas=(0.9, 0.98))
    resumed = trial.restore()  # after a kill: weights, optimizer, random generators, where it was
    step = resumed["step"] if resumed else 0
    for epoch in range(int(resumed["epoch"]) if resumed else 0, trial.epochs):
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(trial.seed * 1000 + epoch))
        total = 0.0
        for start in range(0, len(rows), 32):
            batch = rows[order[start : start + 32]]
            loss = loss_of(model, batch)
            optimizer.zero_grad()
            (loss + trial.regularization.penalty(model)).backward()  # the penalty is 0 unless l2 / l1
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total += loss.item() * len(batch)
            step += 1
        trial.report(step=step, val_loss=evaluate(model, valid), train_loss=total / len(rows), epoch=epoch + 1)
    if trial.final:
        trial.load_best(model)  # the best evaluation's weights, as a final model keeps them
        trial.report_test(loss=evaluate(model, sequences(test_texts, vocab)))
    return model


def main(argv: list[str] | None = None) -> decaylab.SweepResult:
    """Run the CV sweep and write its report; returns the sweep's result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="sweeps/torch-lm", help="sweep folder")
    parser.add_argument("--speeches", type=int, default=300, help="speeches of the corpus to use")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--lambdas", default="0.03,0.3,3", help="λ values besides 0 (decoupled, AdamW)")
    parser.add_argument("--overwrite", action="store_true", help="replace a sweep already in --output")
    options = parser.parse_args(argv)
    started = time.perf_counter()
    result = decaylab.sweep(
        objective=OBJECTIVE, strategy="cv", folds=3, examples=len(corpus(options.speeches)[0]),
        lambdas=options.lambdas, modes="decoupled", rule="1se", epochs=options.epochs, seed=0,
        regularization=Regularization(decay_set="matrices_no_embedding"),
        params={"speeches": options.speeches, "width": options.width, "lr": options.lr},
        output=options.output, overwrite=options.overwrite, quiet=False)
    report = write_report(result.path)
    for row in result.table:
        mark = "*" if (row["mode"], row["lambda"]) == (result.best["mode"], result.best["lambda"]) else " "
        print(f"{mark} {row['mode']:>9} λ = {row['lambda']:<5g} val loss {row['mean']:.4f} ± {row['se'] or 0:.4f}")
    test = (result.final or {}).get("test") or {}
    print(f"chosen λ = {result.best['lambda']:g} ({result.best['rule']}); final model's test loss "
          f"{test.get('loss', float('nan')):.4f}; report {report}; {time.perf_counter() - started:.0f} s")
    return result


if __name__ == "__main__":
    main()
