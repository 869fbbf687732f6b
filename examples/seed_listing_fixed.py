"""The seed article's two listings, rewritten correctly with decaylab.regularization.

    python examples/seed_listing_fixed.py

Runs in a few seconds on CPU on synthetic data. Comments marked "BUG (seed)" name what the
original listing got wrong at the spot where the fix is.
"""

from __future__ import annotations

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


if __name__ == "__main__":
    listing_1()
    listing_2()
