"""model.output=adaptive: an exactly normalized adaptive softmax over frequency-ranked tokens, opt-in."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from decaylab.config import RNNConfig
from decaylab.data.batching import collate
from decaylab.errors import UserError
from decaylab.generation import translate
from decaylab.models import build_model
from decaylab.runfolder.load import load_trained
from decaylab.training.trainer import Trainer
from tests.conftest import tiny_config
from tests.test_sweep import tiny_flags

ADAPTIVE = ["model.output=adaptive", "model.tie_embeddings=false"]


def adaptive_model(cell: str = "gru", vocab: int = 40):
    torch.manual_seed(0)
    return build_model(RNNConfig(preset="tiny", cell=cell, output="adaptive", tie_embeddings=False, dropout=0.0),
                       vocab)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_adaptive_loss_is_the_exact_normalized_log_likelihood(cell: str) -> None:
    model = adaptive_model(cell)
    model.set_output_order(torch.randint(0, 50, (40,), generator=torch.Generator().manual_seed(1)))
    b = collate([[5, 6, 7, 2], [8, 2], [9, 10, 11, 12, 13, 2]], [[5, 2], [6, 7, 30, 2], [8, 2]])
    loss = model(b.src, b.src_len, b.tgt_in, b.tgt_out)
    hidden, _ = model.decode(b.tgt_in, model.encode(b.src, b.src_len))
    log_probs = torch.log_softmax(model.logits(hidden), -1)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(log_probs.shape[:2]))  # a distribution
    keep = b.tgt_out != 0
    expected = -log_probs[keep].gather(1, b.tgt_out[keep].unsqueeze(1)).sum()
    torch.testing.assert_close(loss, expected)
    # the most frequent id is rank 0: the head's first column, not a tail's
    most_frequent = int((model.output_rank == 0).nonzero())
    head = torch.log_softmax(model.output.head(hidden), -1)
    torch.testing.assert_close(log_probs[..., most_frequent], head[..., 0], rtol=1e-5, atol=1e-5)
    # the step used by greedy and beam search gives the same distribution as teacher forcing
    state, memory = None, model.encode(b.src, b.src_len)
    state = memory.state
    for t in range(b.tgt_in.size(1)):
        step, state = model.step(b.tgt_in[:, t], memory, state)
        torch.testing.assert_close(step, log_probs[:, t], rtol=1e-5, atol=1e-5)


def test_bf16_autocast_keeps_the_likelihood_in_float32() -> None:
    """Under bf16 autocast the projections run in bf16 but every log-softmax and sum in float32."""
    model = adaptive_model("lstm", vocab=400)
    model.set_output_order(torch.arange(400, 0, -1))
    torch.manual_seed(2)
    sources = [torch.randint(4, 400, (int(n),)).tolist() + [2] for n in torch.randint(3, 12, (16,))]
    b = collate(sources, [s[::-1][1:] + [2] for s in sources])
    full = model(b.src, b.src_len, b.tgt_in, b.tgt_out)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(b.src, b.src_len, b.tgt_in, b.tgt_out)
        hidden, _ = model.decode(b.tgt_in, model.encode(b.src, b.src_len))
        log_probs = model.logits(hidden)
    assert loss.dtype == torch.float32 and log_probs.dtype == torch.float32
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(log_probs.shape[:2]), rtol=0, atol=1e-5)
    assert abs(loss.item() - full.item()) / full.item() < 2e-3  # bf16 GEMMs only


def test_trainer_keeps_a_trained_order_and_replaces_the_identity(tmp_path: Path) -> None:
    config = tiny_config(*ADAPTIVE)
    fresh = Trainer(config, tmp_path / "a", quiet=True)
    trained = {**fresh.model.state_dict(), "output_rank": fresh.model.output_rank.flip(0)}
    identity = {**fresh.model.state_dict(), "output_rank": torch.arange(len(fresh.model.output_rank))}
    kept = Trainer(config, tmp_path / "b", splits=fresh.splits, tokenizer=fresh.tokenizer, quiet=True,
                   init_weights=trained)
    assert torch.equal(kept.model.output_rank, trained["output_rank"])
    replaced = Trainer(config, tmp_path / "c", splits=fresh.splits, tokenizer=fresh.tokenizer, quiet=True,
                       init_weights=identity)
    assert torch.equal(replaced.model.output_rank, fresh.model.output_rank)


def test_output_order_ranks_tokens_by_frequency() -> None:
    model = adaptive_model()
    counts = torch.zeros(40)
    counts[[7, 3, 12]] = torch.tensor([5.0, 9.0, 5.0])
    model.set_output_order(counts)
    assert model.output_rank[3] == 0 and model.output_rank[7] == 1 and model.output_rank[12] == 2  # ties by id
    assert sorted(model.output_rank.tolist()) == list(range(40))


@pytest.mark.parametrize("overrides,message", [
    (["model.output=adaptive"], "set model.tie_embeddings=false"),
    ([*ADAPTIVE, "train.label_smoothing=0.1"], "not supported with model.output=adaptive"),
    ([*ADAPTIVE, "model.adaptive_cutoffs=[30, 10]"], "increasing positive ranks"),
    (["model.adaptive_cutoffs=[10]"], "only used with model.output=adaptive"),
])
def test_bad_adaptive_settings_are_refused_by_name(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        tiny_config(*overrides)


def test_cutoffs_beyond_the_vocabulary_are_refused() -> None:
    with pytest.raises(UserError, match="model.adaptive_cutoffs: must lie between 1 and"):
        build_model(RNNConfig(preset="tiny", output="adaptive", tie_embeddings=False, adaptive_cutoffs=[10, 39]),
                    40)


def test_adaptive_run_trains_checkpoints_and_translates(tmp_path: Path) -> None:
    config = tiny_config(*ADAPTIVE, "train.epochs=2")
    trainer = Trainer(config, tmp_path / "run", quiet=True)
    counts = torch.bincount(torch.tensor([t for target in trainer.train_data.targets for t in target]),
                            minlength=trainer.tokenizer.get_vocab_size())
    assert trainer.model.output_rank[int(counts.argmax())] == 0  # the most frequent target token heads the list
    result = trainer.fit()
    losses = [row["val_loss"] for row in result.history]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    loaded = load_trained(tmp_path / "run", "last")
    assert torch.equal(loaded.model.output_rank, trainer.model.output_rank)  # the order travels in the checkpoint
    sources = [p.source for p in trainer.splits.valid[:3]]
    assert len(translate(loaded.model, loaded.tokenizer, sources, method="beam", beam=2)) == 3


def test_vectorized_sweep_refuses_the_adaptive_output(cli, tmp_path: Path) -> None:
    result = cli("sweep", *tiny_flags(*ADAPTIVE), "--lambdas", "0.1", "--vectorized", "-o", str(tmp_path / "x"))
    assert result.code == 2
    assert "--vectorized: the stacked model has the full softmax only" in result.err
    assert not (tmp_path / "x").exists()


def test_stacked_trainer_refuses_the_adaptive_output(tmp_path: Path) -> None:
    from decaylab.training.stacked import StackedTrainer

    with pytest.raises(UserError, match="the stacked model has the full softmax only"):
        StackedTrainer([tiny_config(*ADAPTIVE)], [tmp_path / "r"], splits=None, tokenizer=None)
