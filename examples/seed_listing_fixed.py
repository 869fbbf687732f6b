"""The seed article's two listings, rewritten correctly with decaylab.regularization.

    python examples/seed_listing_fixed.py
    python examples/seed_listing_fixed.py --tune sweeps/seed-listing   # λ of listing 2 chosen by decaylab.sweep

Runs in a few seconds on CPU on synthetic data. Comments marked "BUG (seed)" name what the
original listing got wrong at the spot where the fix is. The seed says λ is chosen "by cross-validation or
grid search": `--tune` does that for listing 2, with the listing's own loop as the sweep's objective.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

try:
    from decaylab.regularization import Regularization
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from decaylab.regularization import Regularization


# ---------------------------------------------------------------------------------------------
# Listing 1: a linear model trained with SGD and weight decay
# ---------------------------------------------------------------------------------------------


def listing_1() -> None:
    torch.manual_seed(0)
    n, d = 512, 20
    x = torch.randn(n, d)
    y = x @ torch.randn(d, 1) + 0.5 + 0.1 * torch.randn(n, 1)
    model = nn.Linear(d, 1)

    # Original: torch.optim.SGD(model.parameters(), lr=0.01, weight_decay=1e-4)
    # BUG (seed): model.parameters() puts the bias in the decay set; weight decay is meant to limit
    # the weights' scale, and shrinking the intercept toward 0 only biases the fit.
    # With plain SGD, coupled decay (λ·w added to the gradient) is exactly the L2 penalty (λ/2)‖w‖².
    reg = Regularization(mode="coupled", weight_decay=1e-4, decay_set="no_bias_norm")
    optimizer = reg.optimizer(model, "sgd", lr=0.01)

    for _ in range(200):  # full-batch gradient descent
        optimizer.zero_grad()
        loss = 0.5 * (model(x) - y).pow(2).mean()  # reg.penalty(model) is 0 for coupled: decay is in SGD
        loss.backward()
        optimizer.step()
    n = reg.norms(model)
    print(f"listing 1: final mse/2 = {loss.item():.4f}, |w| = {n['decay_norm']:.3f}, bias = {model.bias.item():.3f}")


# ---------------------------------------------------------------------------------------------
# Listing 2: a GRU encoder-decoder (seq2seq) trained with Adam
# ---------------------------------------------------------------------------------------------

PAD, BOS, VOCAB, LENGTH = 0, 1, 14, 7  # tokens 2..13 are "words"


class Seq2Seq(nn.Module):
    def __init__(self, vocab: int = VOCAB, d: int = 64) -> None:
        super().__init__()
        self.src_embed = nn.Embedding(vocab, d, padding_idx=PAD)
        self.tgt_embed = nn.Embedding(vocab, d, padding_idx=PAD)
        self.encoder = nn.GRU(d, d, batch_first=True)
        self.decoder = nn.GRU(d, d, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, vocab)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        _, h = self.encoder(self.src_embed(src))
        dec, _ = self.decoder(self.tgt_embed(tgt_in), h)
        return self.out(self.norm(dec))

    @torch.no_grad()
    def greedy(self, src: torch.Tensor, length: int) -> torch.Tensor:
        _, h = self.encoder(self.src_embed(src))
        tok = torch.full((src.shape[0], 1), BOS, dtype=torch.long)
        out = []
        for _ in range(length):
            dec, h = self.decoder(self.tgt_embed(tok), h)
            tok = self.out(self.norm(dec)).argmax(-1)
            out.append(tok)
        return torch.cat(out, dim=1)


def reverse_task(batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Source: random words; target: the source reversed."""
    src = torch.randint(2, VOCAB, (batch, LENGTH), generator=gen)
    return src, src.flip(1)


def listing_2(steps: int = 400) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = Seq2Seq()
    lr = 3e-3

    # Original: optimizer = torch.optim.Adam(model.parameters(), lr=0.001, weight_decay=1e-5)
    # BUG (seed): torch Adam's weight_decay is coupled: λ·w is added to the gradient and then divided
    # by Adam's √v, so weights with large gradients are barely decayed. AdamW (decoupled decay) was
    # meant: mode="decoupled" + "adamw" shrinks every decayed weight by lr·λ per step.
    # BUG (seed): model.parameters() decays biases and the LayerNorm gain/shift as well; the decay
    # set here is the weight matrices without the embeddings (whose rare-token rows decay toward 0).
    reg = Regularization(mode="decoupled", weight_decay=0.01, decay_set="matrices_no_embedding")
    optimizer = reg.optimizer(model, "adamw", lr=lr, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    # The audit warns that τ = 1/(lr·λ) is far longer than this 400-step demo: expected for a toy run.
    reg.audit(model, optimizer_name="adamw", lr=lr, steps=steps).render()

    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD)
    for step in range(steps):
        src, tgt = reverse_task(64, gen)
        # BUG (seed): the decoder was fed `src`, so it learned to map the source onto the target
        # position by position and had no access to the target prefix it must continue at
        # generation time. Teacher forcing feeds the target shifted right by one (BOS first).
        tgt_in = torch.cat([torch.full_like(tgt[:, :1], BOS), tgt[:, :-1]], dim=1)
        logits = model(src, tgt_in)
        loss = loss_fn(logits.reshape(-1, VOCAB), tgt.reshape(-1))
        # Original: loss = loss + lambda_ * sum(torch.norm(p) for p in model.parameters())
        # BUG (seed): torch.norm(p) is ‖w‖, not (1/2)‖w‖²: its gradient λ·w/‖w‖ has constant size
        # whatever the weight's scale, so it is not L2 regularization (and has no gradient at w = 0).
        # BUG (seed): the term came on top of Adam's weight_decay, regularizing every weight twice.
        # Here the decay lives in AdamW only; reg.penalty(model) adds nothing in decoupled mode
        # (it would carry an l1 term if one were configured), so adding it is always safe.
        loss = loss + reg.penalty(model)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % 100 == 0 or step == steps - 1:
            n = reg.norms(model)
            print(
                f"step {step:4d}  loss {loss.item():.3f}  decay_norm {n['decay_norm']:.2f}  "
                f"per-step decay factor {reg.decay_factor(optimizer):.6f}"
            )

    model.eval()
    src, tgt = reverse_task(500, torch.Generator().manual_seed(99))
    pred = model.greedy(src, LENGTH)
    exact = (pred == tgt).all(dim=1).float().mean().item()
    print(f"listing 2: held-out greedy exact match on the reverse task = {exact:.1%}")


# ---------------------------------------------------------------------------------------------
# Listing 2 tuned: λ chosen on held-out pairs by decaylab.sweep, not guessed
# ---------------------------------------------------------------------------------------------

TRAIN_PAIRS, VALID_PAIRS = 512, 256  # few training pairs, so that an unregularized model can overfit them


def listing_2_objective(trial) -> nn.Module:
    """Listing 2's corrected loop as a sweep objective: the trial's mode and λ, scored on held-out pairs each epoch."""
    src, tgt = reverse_task(TRAIN_PAIRS, torch.Generator().manual_seed(1))  # a fixed training set
    valid = reverse_task(VALID_PAIRS, torch.Generator().manual_seed(2))
    model = Seq2Seq(d=int(trial.params.get("width", 64)))
    lr, batch = float(trial.params.get("lr", 3e-3)), 32
    steps = trial.epochs * (TRAIN_PAIRS // batch)
    optimizer = trial.optimizer(model, "adamw", lr=lr, betas=(0.9, 0.98), total_steps=steps)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    trial.watch(model, optimizer, scheduler)  # the scheduler is checkpointed too
    resumed = trial.restore()
    step = resumed["step"] if resumed else 0
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD)

    def loss_on(pairs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        source, target = pairs
        target_in = torch.cat([torch.full_like(target[:, :1], BOS), target[:, :-1]], dim=1)
        return loss_fn(model(source, target_in).reshape(-1, VOCAB), target.reshape(-1))

    for epoch in range(int(resumed["epoch"]) if resumed else 0, trial.epochs):
        order = torch.randperm(TRAIN_PAIRS, generator=torch.Generator().manual_seed(trial.seed * 1000 + epoch))
        for start in range(0, TRAIN_PAIRS, batch):
            rows = order[start : start + batch]
            loss = loss_on((src[rows], tgt[rows])) + trial.regularization.penalty(model)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
        model.eval()
        with torch.no_grad():
            val, train = loss_on(valid).item(), loss_on((src, tgt)).item()
        model.train()
        trial.report(step=step, val_loss=val, train_loss=train, epoch=epoch + 1)
    if trial.final:
        trial.load_best(model)
        model.eval()
        test_src, test_tgt = reverse_task(500, torch.Generator().manual_seed(99))
        with torch.no_grad():
            exact = (model.greedy(test_src, LENGTH) == test_tgt).all(dim=1).float().mean().item()
        trial.report_test(exact_match=exact)
    return model


def tune_listing_2(output: str, lambdas: str = "0.03,0.3,3", epochs: int = 25, width: int = 64):
    """Grid over decoupled λ (plus λ = 0) for listing 2, on held-out pairs; writes the sweep and its report."""
    import decaylab
    from decaylab.report import write_report

    result = decaylab.sweep(
        objective=f"{Path(__file__).resolve()}:listing_2_objective", strategy="grid", lambdas=lambdas,
        modes="decoupled", epochs=epochs, seed=0, params={"width": width},
        # the listing's decay set: weight matrices, not biases, norms or embeddings
        regularization=Regularization(decay_set="matrices_no_embedding"), output=output, quiet=False)
    write_report(result.path)
    for row in result.table:
        print(f"{row['mode']:>9} λ = {row['lambda']:<5g} held-out loss {row['mean']:.4f}")
    test = (result.final or {}).get("test") or {}
    print(f"chosen λ = {result.best['lambda']:g}; test exact match {test.get('exact_match', float('nan')):.1%}; "
          f"report {result.path / 'report.html'}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The seed article's listings, fixed (and listing 2 tuned).")
    parser.add_argument("--tune", metavar="OUTPUT", help="choose listing 2's λ by decaylab.sweep into OUTPUT")
    options = parser.parse_args()
    if options.tune:
        tune_listing_2(options.tune)
    else:
        listing_1()
        listing_2()
