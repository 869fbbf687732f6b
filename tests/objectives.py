"""Objectives the sweep tests call (`--objective tests.objectives:char_lm`): a plain PyTorch loop, seconds a sweep.

A next-character model (embedding, LayerNorm, MLP) on the fixture pairs' Spanish sides: small enough that a 3-fold
CV sweep of three λ trains in seconds, with biases and a norm so the decay set matters.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch
from torch import nn

from decaylab.sweep import Trial

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_pairs.tsv"
# Fault injection for the resume test: SIGKILL this process after this many optimizer steps (counted per process,
# so a resumed sweep can be killed again further on).
KILL_AT = "DECAYLAB_TEST_KILL_AT_STEP"
_taken = 0


def corpus() -> tuple[list[str], list[str], list[str]]:
    """(training, validation, test) sentences: the targets of the fixture pairs, split 40/10/10."""
    lines = [line.split("\t")[1] for line in FIXTURE.read_text(encoding="utf-8").splitlines() if "\t" in line]
    return lines[:40], lines[40:50], lines[50:]


VOCAB = sorted({c for line in sum(corpus(), []) for c in line} | {"\n"})
INDEX = {c: i for i, c in enumerate(VOCAB)}


def bigrams(lines: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(current character, next character) ids over every line, each ended by a newline."""
    ids = [INDEX[c] for line in lines for c in line + "\n"]
    return torch.tensor(ids[:-1]), torch.tensor(ids[1:])


class CharModel(nn.Module):
    """Embedding → LayerNorm → MLP → next-character logits."""

    def __init__(self, vocab: int, width: int = 24) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.norm = nn.LayerNorm(width)
        self.hidden = nn.Linear(width, 2 * width)
        self.out = nn.Linear(2 * width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(self.norm(self.embed(x)))))


def mean_loss(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Mean cross-entropy in nats per character, eval mode."""
    model.eval()
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(data[0]), data[1]).item()
    model.train()
    return loss


def _step_taken() -> None:
    global _taken
    _taken += 1
    if _taken == int(os.environ.get(KILL_AT, "0") or 0):
        os.kill(os.getpid(), signal.SIGKILL)


def char_lm(trial: Trial) -> nn.Module:
    """Train the character model with the trial's regularization; resumable, scored on the fold (or validation)."""
    torch.set_num_threads(1)
    train_lines, valid_lines, test_lines = corpus()
    train, held_out = trial.split(train_lines)
    x, y = bigrams(train)
    valid = bigrams(held_out if held_out is not None else valid_lines)
    model = CharModel(len(VOCAB))
    optimizer = trial.optimizer(model, "adamw", lr=float(trial.params.get("lr", 0.03)))
    resumed = trial.restore()
    step = resumed["step"] if resumed else 0
    batch = int(trial.params.get("batch", 64))
    for epoch in range(int(resumed["epoch"]) if resumed else 0, trial.epochs or 1):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(trial.seed * 1000 + epoch))
        total = 0.0
        for start in range(0, len(x), batch):
            rows = order[start : start + batch]
            loss = nn.functional.cross_entropy(model(x[rows]), y[rows])
            optimizer.zero_grad()
            (loss + trial.regularization.penalty(model)).backward()
            optimizer.step()
            total += loss.item() * len(rows)
            step += 1
            _step_taken()
        trial.report(step=step, val_loss=mean_loss(model, valid), train_loss=total / len(x), epoch=epoch + 1,
                     train_eval_loss=mean_loss(model, (x, y)))
    if trial.final:
        trial.report_test(loss=mean_loss(model, bigrams(test_lines)))
    return model
