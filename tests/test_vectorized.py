"""The vectorized engine: each stacked replica follows its independent run (tiny preset, fixture pairs)."""

from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path

import pytest
import torch

from decaylab.config import Config, RNNConfig, build_config, config_to_dict
from decaylab.files import read_jsonl
from decaylab.models import build_model
from decaylab.models.stacked_rnn import StackedSeq2Seq
from decaylab.sweep import sweep
from decaylab.training import Trainer
from decaylab.training.loop import KILL_ENV
from decaylab.training.stacked import StackedTrainer
from tests.conftest import tiny_config
from tests.test_sweep import CLI, stable, tiny_flags

COMPARED = ("val_loss", "train_loss", "train_eval_loss", "decay_norm", "nodecay_norm", "penalty", "decay_factor",
            "lr")


def variant(base: Config, **regularization) -> Config:
    """`base` with other regularization settings (and `dropout` for the model)."""
    raw = config_to_dict(base)
    dropout = regularization.pop("dropout", None)
    raw["regularization"].update(regularization)
    if dropout is not None:
        raw["model"]["dropout"] = dropout
    return build_config(raw)


def assert_same_trajectory(stacked: list[dict], single: list[dict], tol: float = 2e-4) -> None:
    assert [r["step"] for r in stacked] == [r["step"] for r in single]
    for a, b in zip(stacked, single, strict=True):
        for key in COMPARED:
            assert a[key] == pytest.approx(b[key], rel=tol, abs=tol), (a["step"], key, a[key], b[key])


def run_both(configs: list[Config], tmp_path: Path, data, budgets=None):
    """(stacked replicas, independent histories) of the same configs."""
    splits, tokenizer = data
    replicas = StackedTrainer(configs, [tmp_path / f"v{i}" for i in range(len(configs))], splits=splits,
                              tokenizer=tokenizer, budgets=budgets).fit()
    singles = []
    for i, cfg in enumerate(configs):
        try:
            singles.append(Trainer(cfg, tmp_path / f"s{i}", splits=splits, tokenizer=tokenizer, quiet=True).fit()
                           .history)
        except Exception:  # diverged: what it wrote before
            singles.append(read_jsonl(tmp_path / f"s{i}" / "metrics.jsonl"))
    return replicas, singles


@pytest.mark.parametrize("cell,bidirectional,attention,layers,tie",
                         [c for c in itertools.product(["gru", "lstm"], [True, False],
                                                       ["dot", "general", "additive", "none"], [1, 2], [True, False])
                          if c[3] == 1 or c[2] in ("general", "additive")])
def test_stacked_model_equals_each_seq2seq(cell, bidirectional, attention, layers, tie) -> None:
    torch.manual_seed(0)
    cfg = RNNConfig(cell=cell, bidirectional=bidirectional, attention=attention, layers=layers,
                      tie_embeddings=tie, hidden=16, embed_dim=12, dropout=0.0)
    models = [build_model(cfg, 50) for _ in range(3)]
    names = [n for n, _ in models[0].named_parameters()]
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).requires_grad_()
              for n in names}
    src = torch.randint(4, 50, (4, 7))
    src_len = torch.tensor([7, 3, 5, 1])
    src[torch.arange(7)[None] >= src_len[:, None]] = 0
    tgt = torch.randint(4, 50, (4, 7))
    tgt[2, 4:] = 0  # a padded target
    stacked = StackedSeq2Seq(cfg, params, [0.0] * 3)(src, src_len, tgt[:, :-1], tgt[:, 1:])
    single = torch.stack([m(src, src_len, tgt[:, :-1], tgt[:, 1:]) for m in models])
    torch.testing.assert_close(stacked, single, rtol=1e-5, atol=1e-4)
    stacked.sum().backward()
    single.sum().backward()
    for k, model in enumerate(models):
        for name, p in model.named_parameters():
            torch.testing.assert_close(params[name].grad[k], p.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_each_replica_follows_its_independent_run(optimizer: str, tmp_path: Path, data) -> None:
    extra = ["train.lr=0.3", "train.momentum=0.9"] if optimizer == "sgd" else ["train.lr=0.01"]
    base = tiny_config("model.dropout=0", "train.clip_norm=0.5", "train.schedule=cosine", "train.warmup_steps=2",
                       "train.eval_every=4", f"train.optimizer={optimizer}", *extra)
    configs = [variant(base, mode="none", weight_decay=0.0),
               variant(base, mode="decoupled", weight_decay=0.3),
               variant(base, mode="decoupled", weight_decay=0.5, decay_scaling="schedule"),
               variant(base, mode="coupled", weight_decay=0.02),
               variant(base, mode="l2", weight_decay=0.02),
               variant(base, mode="none", weight_decay=0.0, l1=0.003)]
    replicas, singles = run_both(configs, tmp_path, data)
    for replica, single in zip(replicas, singles, strict=True):
        assert replica.status == "done"
        assert_same_trajectory(replica.history, single)
    # the settings really differ: the decayed replicas end with smaller weights than λ = 0
    norms = [r.history[-1]["decay_norm"] for r in replicas]
    assert norms[1] < norms[0] and norms[3] < norms[0]


def test_early_stopping_budgets_and_divergence_per_replica(tmp_path: Path, data) -> None:
    base = tiny_config("model.dropout=0", "train.optimizer=sgd", "train.momentum=0", "train.lr=1.0",
                       "train.clip_norm=null", "train.eval_every=2", "train.patience=1", "train.epochs=6")
    configs = [variant(base, mode="none", weight_decay=0.0),
               variant(base, mode="l2", weight_decay=1e6),  # w <- w(1 - 1e6): the penalty overflows at step 3
               variant(base, mode="decoupled", weight_decay=0.05),
               variant(base, mode="coupled", weight_decay=0.01),
               variant(base, mode="decoupled", weight_decay=0.1)]
    replicas, singles = run_both(configs, tmp_path, data, budgets=[None, None, None, None, 1])
    assert [r.status for r in replicas] == ["done", "diverged", "done", "done", "done"]
    for replica, single in zip(replicas, singles, strict=True):
        assert_same_trajectory(replica.history, single[:len(replica.history)])
    assert len(replicas[1].history) == len(singles[1]) == 1  # stopped where its own run stopped
    # patience stopped two replicas early; the others went on without them
    assert replicas[0].progress["stopped_early"] and replicas[3].progress["stopped_early"]
    assert len(replicas[0].history) == len(singles[0]) < len(replicas[2].history) == len(singles[2])
    assert replicas[4].history[-1]["epoch"] == 1  # its budget


def test_dropout_draws_do_not_depend_on_the_other_replicas(tmp_path: Path, data) -> None:
    splits, tokenizer = data
    base = tiny_config("model.dropout=0.2", "train.epochs=2")
    a, b = variant(base, mode="decoupled", weight_decay=0.1), variant(base, mode="none", dropout=0.4)
    pair = StackedTrainer([a, b], [tmp_path / "a", tmp_path / "b"], splits=splits, tokenizer=tokenizer).fit()
    alone = StackedTrainer([a], [tmp_path / "a2"], splits=splits, tokenizer=tokenizer,
                           names=["a"]).fit()
    # the same masks: equal up to the rounding of GEMMs batched over 2 vs 1 replicas (other masks: ~4e-4 apart)
    assert_same_trajectory(pair[0].history, alone[0].history, tol=1e-5)
    assert abs(pair[0].history[-1]["val_loss"] - pair[1].history[-1]["val_loss"]) > 1e-3


def test_vectorized_sweep_matches_the_sequential_sweep(tmp_path: Path) -> None:
    cfg = tiny_config("model.dropout=0")
    common = {"lambdas": "1e-3,0.3", "modes": "decoupled,coupled", "final": False}
    sequential = sweep(cfg, output=tmp_path / "seq", **common)
    vectorized = sweep(cfg, output=tmp_path / "vec", vectorized=True, replicas=3, **common)
    assert [r["trial"] for r in vectorized.trials] == [r["trial"] for r in sequential.trials]
    for v, s in zip(vectorized.trials, sequential.trials, strict=True):
        assert v["best_val_loss"] == pytest.approx(s["best_val_loss"], rel=1e-4)
    assert vectorized.best["lambda"] == sequential.best["lambda"]
    assert vectorized.summary["engine"] == "vectorized" and sequential.summary["engine"] == "sequential"
    assert len({r["stack"] for r in vectorized.trials}) == 2  # 5 points in stacks of at most 3
    for row in vectorized.trials:  # every replica wrote an ordinary run folder
        run = tmp_path / "vec" / row["run"]
        assert (run / "config.yaml").is_file() and (run / "checkpoints" / "best").is_dir()


def assert_engines_agree(vectorized, sequential, rel: float) -> None:
    """The same trials (trial, fold, rung), each with the same best val loss and epochs, and the same chosen λ."""

    def key(row: dict) -> tuple:
        return row["trial"], row["fold"], row["rung"]

    assert sorted(map(key, vectorized.trials)) == sorted(map(key, sequential.trials))
    by_key = {key(r): r for r in sequential.trials}
    for row in vectorized.trials:
        assert row["best_val_loss"] == pytest.approx(by_key[key(row)]["best_val_loss"], rel=rel)
        assert row["epochs"] == by_key[key(row)]["epochs"]
    assert vectorized.best["lambda"] == sequential.best["lambda"]


@pytest.mark.parametrize("strategy,options", [("cv", {"folds": 2}), ("halving", {"eta": 2})])
def test_vectorized_cv_and_halving_match_the_sequential_engine(strategy: str, options: dict, tmp_path: Path) -> None:
    cfg = tiny_config("model.dropout=0", "train.epochs=4", "train.lr=0.01")
    common = {"strategy": strategy, "lambdas": "1e-3,0.03,1,3", "modes": "decoupled", "final": False, **options}
    sequential = sweep(cfg, output=tmp_path / "seq", **common)
    vectorized = sweep(cfg, output=tmp_path / "vec", vectorized=True, **common)
    assert_engines_agree(vectorized, sequential, rel=1e-4)
    # one stack per fold (cv) or per rung (halving), not one per trial, each counted once in the compute time
    stacks = {r["stack"]: r["stack_wall_s"] for r in vectorized.trials}
    assert len(stacks) == (2 if strategy == "cv" else 3)
    assert vectorized.summary["compute_s"] == pytest.approx(sum(stacks.values()))


def test_a_killed_vectorized_sweep_resumes_exactly(tmp_path: Path) -> None:
    out = tmp_path / "v"
    args = ["sweep", *tiny_flags("train.eval_every=2", "model.dropout=0.1"), "--lambdas", "1e-2,1",
            "--mode", "decoupled", "--vectorized", "--no-final", "-q"]
    killed = subprocess.run(CLI + args + ["-o", str(out)], env={**os.environ, KILL_ENV: "7"}, capture_output=True,
                            text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr  # all three replicas stopped at their step-6 checkpoints
    assert not read_jsonl(out / "trials.jsonl")
    resumed = sweep(resume=out, vectorized=True, final=False)
    fresh = sweep(tiny_config("train.eval_every=2", "model.dropout=0.1"), lambdas="1e-2,1", modes="decoupled",
                  output=tmp_path / "fresh", vectorized=True, final=False)
    for a, b in zip(resumed.trials, fresh.trials, strict=True):
        assert stable(read_jsonl(out / a["run"] / "metrics.jsonl")) == \
            stable(read_jsonl(tmp_path / "fresh" / b["run"] / "metrics.jsonl"))


def test_a_replica_folder_resumes_with_the_sequential_trainer(tmp_path: Path, data) -> None:
    splits, tokenizer = data
    cfg = variant(tiny_config("model.dropout=0", "train.eval_every=4", "train.max_steps=8"), mode="decoupled",
                  weight_decay=0.2)
    StackedTrainer([cfg], [tmp_path / "r"], splits=splits, tokenizer=tokenizer).fit()
    longer = variant(tiny_config("model.dropout=0", "train.eval_every=4", "train.max_steps=12"), mode="decoupled",
                     weight_decay=0.2)
    # the schedule length differs (constant lr, so it does not matter); continue 8 -> 12 with the Trainer
    continued = Trainer(longer, tmp_path / "r", splits=splits, tokenizer=tokenizer, resume=True, quiet=True).fit()
    straight = Trainer(longer, tmp_path / "s", splits=splits, tokenizer=tokenizer, quiet=True).fit()
    assert_same_trajectory(continued.history, straight.history)


def test_a_stack_resumes_when_a_finished_replica_precedes_the_others(tmp_path: Path, data) -> None:
    splits, tokenizer = data

    def configs(steps: int) -> list[Config]:
        base = tiny_config("model.dropout=0", "train.eval_every=2", f"train.max_steps={steps}")
        return [variant(base, mode="decoupled", weight_decay=0.1), variant(base, mode="coupled", weight_decay=0.01)]

    folders = [tmp_path / "a", tmp_path / "b"]
    StackedTrainer(configs(2), folders, splits=splits, tokenizer=tokenizer).fit()
    # the first replica ran out of patience at the step-2 evaluation (a kill came before the stack's rows)
    state_file = folders[0] / "checkpoints" / "last" / "trainer_state.pt"
    state = torch.load(state_file, weights_only=True)
    state["progress"]["stopped_early"] = True
    torch.save(state, state_file)
    replicas = StackedTrainer(configs(6), folders, splits=splits, tokenizer=tokenizer).fit()
    assert [len(r.history) for r in replicas] == [1, 3]
    straight = Trainer(configs(6)[1], tmp_path / "s", splits=splits, tokenizer=tokenizer, quiet=True).fit()
    assert_same_trajectory(replicas[1].history, straight.history)


@pytest.mark.parametrize("args,message", [
    (["--strategy", "optuna", "--vectorized"], "--vectorized: works with --strategy grid, cv, halving"),
    (["--vectorized", "--workers", "2"], "use --workers 1"),
    (["--replicas", "2"], "--replicas: needs --vectorized"),
])
def test_vectorized_options_are_checked(args: list[str], message: str, cli, tmp_path: Path) -> None:
    result = cli("sweep", *tiny_flags(), "-o", str(tmp_path / "x"), *args)
    assert result.code == 2
    assert message in result.err
    assert not (tmp_path / "x").exists()


def test_stacked_trainer_refuses_an_arch_without_a_stacked_form(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    """A config whose `model.arch` has no stacked model (models.STACKED_MODELS) is refused by name."""
    from decaylab.errors import UserError
    from decaylab.models import STACKED_MODELS

    monkeypatch.delitem(STACKED_MODELS, "transformer")
    base = tiny_config("model.arch=transformer")
    with pytest.raises(UserError, match=r"no stacked form of model\.arch 'transformer' \(it trains 'rnn', 'decoder'\)"):
        StackedTrainer([base], [tmp_path / "r"], splits=None, tokenizer=None)


def test_a_stack_of_one_names_its_diverged_replica(tmp_path: Path, data, capsys: pytest.CaptureFixture[str]) -> None:
    splits, tokenizer = data
    base = tiny_config("model.dropout=0", "train.optimizer=sgd", "train.momentum=0", "train.lr=1.0",
                       "train.clip_norm=null", "train.eval_every=2")
    replicas = StackedTrainer([variant(base, mode="l2", weight_decay=1e6)], [tmp_path / "r0"], splits=splits,
                              tokenizer=tokenizer, quiet=False).fit()
    assert replicas[0].status == "diverged"
    assert "r0: step" in capsys.readouterr().err
