"""The vectorized engine for both Transformers (models/stacked_transformer.py through training/stacked.py): the
stacked model against each single model, each replica against its sequential run (with dropout too: the masks
are the sequential run's on the CPU), resumes, and `sweep --vectorized` through the report, `generate` and
`evaluate`. Every mode through both engines is in tests/test_rules.py."""

from __future__ import annotations

import functools
import itertools
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from decaylab.config import Config, DecoderConfig, TransformerConfig
from decaylab.data.splits import Splits, load_splits
from decaylab.data.tokenizer import PAD_ID, train_tokenizer
from decaylab.errors import UserError
from decaylab.files import read_jsonl
from decaylab.models import STACKED_MODELS, build_model, build_stacked
from decaylab.sweep import sweep
from decaylab.training import Trainer
from decaylab.training.loop import KILL_ENV
from decaylab.training.stacked import StackedTrainer
from tests.conftest import tiny_config
from tests.test_decoder import lm_config, lm_flags
from tests.test_sweep import CLI, stable, tiny_flags
from tests.test_vectorized import assert_engines_agree, assert_same_trajectory, run_both, variant

ARCHS = ("transformer", "decoder")
VARIANTS = list(itertools.product(ARCHS, ["learned", "rotary"], ["layernorm", "rmsnorm"], [True, False],
                                  [True, False]))


def arch_config(arch: str, *overrides: str) -> Config:
    """The tiny config of `arch`: the fixture pairs (rnn, transformer) or the fixture text (decoder)."""
    if arch == "decoder":
        return lm_config(*overrides)
    return tiny_config(*(["model.arch=transformer"] if arch == "transformer" else []), *overrides)


@functools.cache
def arch_data(arch: str) -> tuple[Splits, object]:
    """The splits and tokenizer of `arch_config(arch)`, built once per session."""
    cfg = arch_config(arch)
    splits = load_splits(cfg.data)
    texts = [p.source for p in splits.train] + [p.target for p in splits.train]
    return splits, train_tokenizer(texts, cfg.tokenizer)


def arch_flags(arch: str, *extra: str) -> list[str]:
    """`arch_config(arch, *extra)` as `--set` flags."""
    base = lm_flags() if arch == "decoder" else tiny_flags("model.arch=transformer")
    return base + [arg for item in extra for arg in ("--set", item)]


def stacked_and_singles(arch: str, positions: str = "learned", norm: str = "layernorm", bias: bool = True,
                        tie: bool = True, dropouts: tuple[float, ...] = (0.0, 0.0, 0.0),
                        attention_dropout: float = 0.0):
    """Three single models (seeds 0..2) of the tiny preset, their stack (seed k's stream as generator k), a batch."""
    config = TransformerConfig if arch == "transformer" else DecoderConfig
    cfg = config(preset="tiny", positions=positions, norm=norm, bias=bias, tie_embeddings=tie,
                 attention_dropout=attention_dropout, dropout=0.0)
    models, generators = [], []
    for k, rate in enumerate(dropouts):
        torch.manual_seed(k)
        models.append(build_model(cfg.model_copy(update={"dropout": rate}), 50))
        generators.append(torch.Generator().manual_seed(100 + k))
    names = [n for n, _ in models[0].named_parameters()]
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).requires_grad_()
              for n in names}
    stacked = build_stacked(cfg, params, list(dropouts), generators)
    tgt = torch.randint(4, 50, (4, 8))
    tgt[2, 5:] = PAD_ID  # a padded target (a text's last block is shorter)
    if arch == "transformer":
        src_len = torch.tensor([7, 3, 5, 1])
        src = torch.randint(4, 50, (4, 7)).masked_fill(torch.arange(7)[None] >= src_len[:, None], PAD_ID)
    else:
        src, src_len = torch.zeros(4, 0, dtype=torch.long), torch.zeros(4, dtype=torch.long)
    return models, params, stacked, (src, src_len, tgt[:, :-1], tgt[:, 1:])


@pytest.mark.parametrize("arch,positions,norm,bias,tie", VARIANTS)
def test_stacked_model_equals_each_single_model(arch: str, positions: str, norm: str, bias: bool, tie: bool) -> None:
    models, params, stacked, batch = stacked_and_singles(arch, positions, norm, bias, tie)
    losses = stacked(*batch, label_smoothing=0.1)
    singles = torch.stack([m(*batch, label_smoothing=0.1) for m in models])
    torch.testing.assert_close(losses, singles, rtol=1e-5, atol=1e-4)
    losses.sum().backward()
    singles.sum().backward()
    for k, model in enumerate(models):
        for name, p in model.named_parameters():  # the embeddings' pad row included
            torch.testing.assert_close(params[name].grad[k], p.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("arch", ARCHS)
def test_dropout_draws_are_the_single_models(arch: str) -> None:
    """Replica k's generator in the state of the global one gives single model k's masks: its residual and
    embedding dropout (its own rate, 0 for one replica) and the attention dropout, bit for bit."""
    models, params, stacked, batch = stacked_and_singles(arch, dropouts=(0.1, 0.0, 0.3), attention_dropout=0.2)
    losses = stacked(*batch)
    singles = []
    for k, model in enumerate(models):
        torch.manual_seed(100 + k)
        singles.append(model.train()(*batch))
    torch.testing.assert_close(losses, torch.stack(singles), rtol=1e-5, atol=1e-4)
    losses.sum().backward()
    torch.stack(singles).sum().backward()
    for k, model in enumerate(models):
        for name, p in model.named_parameters():
            torch.testing.assert_close(params[name].grad[k], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    # other draws give other numbers (the comparison above is not vacuous)
    assert not torch.allclose(stacked(*batch), losses)
    torch.testing.assert_close(stacked.eval()(*batch), torch.stack([m.eval()(*batch) for m in models]), rtol=1e-5,
                               atol=1e-4)


@pytest.mark.parametrize("arch,optimizer", list(itertools.product(ARCHS, ["adam", "sgd"])))
def test_each_replica_follows_its_sequential_run(arch: str, optimizer: str, tmp_path: Path) -> None:
    """Every mode in one stack, with clipping, warmup, a cosine schedule, and dropout that differs per replica."""
    extra = ["train.lr=0.1", "train.momentum=0.9"] if optimizer == "sgd" else ["train.lr=0.003"]
    base = arch_config(arch, "model.dropout=0.1", "model.attention_dropout=0.1", "train.clip_norm=0.5",
                       "train.schedule=cosine", "train.warmup_steps=2", "train.eval_every=4", "train.max_steps=12",
                       f"train.optimizer={optimizer}", *extra)
    configs = [variant(base, mode="none", weight_decay=0.0),
               variant(base, mode="decoupled", weight_decay=0.3, dropout=0.0),
               variant(base, mode="decoupled", weight_decay=0.5, decay_scaling="schedule", dropout=0.2),
               variant(base, mode="coupled", weight_decay=0.02),
               variant(base, mode="l2", weight_decay=0.02),
               variant(base, mode="none", weight_decay=0.0, l1=0.003)]
    replicas, singles = run_both(configs, tmp_path, arch_data(arch))
    for replica, single in zip(replicas, singles, strict=True):
        assert replica.status == "done"
        assert_same_trajectory(replica.history, single, tol=1e-4)
    norms = [r.history[-1]["decay_norm"] for r in replicas]
    assert norms[1] < norms[0] and norms[3] < norms[0]  # the settings really differ


def test_patience_budgets_and_divergence_per_replica(tmp_path: Path) -> None:
    base = arch_config("transformer", "model.dropout=0", "train.optimizer=sgd", "train.momentum=0", "train.lr=0.5",
                       "train.clip_norm=null", "train.eval_every=2", "train.patience=1", "train.epochs=4")
    configs = [variant(base, mode="none", weight_decay=0.0),
               variant(base, mode="l2", weight_decay=1e6),  # the penalty overflows within a few steps
               variant(base, mode="decoupled", weight_decay=0.05),
               variant(base, mode="decoupled", weight_decay=0.1)]
    replicas, singles = run_both(configs, tmp_path, arch_data("transformer"), budgets=[None, None, None, 1])
    assert [r.status for r in replicas] == ["done", "diverged", "done", "done"]
    for replica, single in zip(replicas, singles, strict=True):
        assert_same_trajectory(replica.history, single[:len(replica.history)])
    assert len(replicas[1].history) == len(singles[1])  # stopped where its own run stopped
    assert replicas[3].history[-1]["epoch"] == 1  # its budget
    stopped = [r.progress["stopped_early"] for r in replicas]
    assert any(stopped), [len(r.history) for r in replicas]  # patience ran out for some, the others went on


@pytest.mark.parametrize("arch", ARCHS)
def test_a_replica_folder_resumes_with_the_sequential_trainer(arch: str, tmp_path: Path) -> None:
    """With dropout: the replica's checkpoint carries its dropout stream, so the Trainer goes on with the masks
    the sequential run draws, and continuing 8 -> 12 steps equals the sequential run of 12."""
    splits, tokenizer = arch_data(arch)

    def config(steps: int) -> Config:
        return variant(arch_config(arch, "model.dropout=0.1", "train.eval_every=4", f"train.max_steps={steps}",
                                   "train.lr=0.003"), mode="decoupled", weight_decay=0.2)

    StackedTrainer([config(8)], [tmp_path / "r"], splits=splits, tokenizer=tokenizer).fit()
    # the schedule length differs (constant lr, so it does not matter)
    continued = Trainer(config(12), tmp_path / "r", splits=splits, tokenizer=tokenizer, resume=True, quiet=True).fit()
    straight = Trainer(config(12), tmp_path / "s", splits=splits, tokenizer=tokenizer, quiet=True).fit()
    assert_same_trajectory(continued.history, straight.history, tol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_killed_vectorized_sweep_resumes_exactly(arch: str, tmp_path: Path) -> None:
    out = tmp_path / "v"
    extra = ("train.eval_every=2", "train.max_steps=10", "model.dropout=0.1")
    args = ["sweep", *arch_flags(arch, *extra), "--lambdas", "1e-2,1", "--mode", "decoupled", "--vectorized",
            "--no-final", "-q"]
    killed = subprocess.run(CLI + args + ["-o", str(out)], env={**os.environ, KILL_ENV: "7"}, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr  # the three replicas stopped at their step-6 checkpoints
    assert not read_jsonl(out / "trials.jsonl")
    resumed = sweep(resume=out, vectorized=True, final=False)
    fresh = sweep(arch_config(arch, *extra), lambdas="1e-2,1", modes="decoupled", output=tmp_path / "fresh",
                  vectorized=True, final=False)
    for a, b in zip(resumed.trials, fresh.trials, strict=True):
        assert stable(read_jsonl(out / a["run"] / "metrics.jsonl")) == \
            stable(read_jsonl(tmp_path / "fresh" / b["run"] / "metrics.jsonl"))


@pytest.mark.parametrize("arch", ARCHS)
def test_vectorized_grid_sweep_matches_the_sequential_one_and_reports(arch: str, tmp_path: Path) -> None:
    """A tiny `--vectorized` grid: the sequential sweep's numbers, ordinary replica folders that `generate` and
    `evaluate` read, and a report."""
    from decaylab.report import write_report

    cfg = arch_config(arch, "model.dropout=0.1", "train.lr=0.003")
    common = {"lambdas": "1e-2,0.3", "modes": "decoupled,coupled"}
    sequential = sweep(cfg, output=tmp_path / "seq", final=False, **common)
    vectorized = sweep(cfg, output=tmp_path / "vec", vectorized=True, **common)
    assert [r["trial"] for r in vectorized.trials] == [r["trial"] for r in sequential.trials]
    for v, s in zip(vectorized.trials, sequential.trials, strict=True):
        assert v["best_val_loss"] == pytest.approx(s["best_val_loss"], rel=1e-5)
    assert vectorized.summary["engine"] == "vectorized" and len({r["stack"] for r in vectorized.trials}) == 1
    page = write_report(vectorized.path).read_text()
    assert "decoupled" in page and "coupled" in page
    if arch == "decoder":  # a continuation's chrF against the real text is no verdict on a language model
        assert "Samples" in page and "chrF on the" not in page
    run = tmp_path / "vec" / vectorized.trials[1]["run"]
    meta = json.loads((run / "meta.json").read_text())
    assert meta["engine"]["name"] == "vectorized"
    prompt = ["--prompt", "God said,", "--max-new-tokens", "5"] if arch == "decoder" else ["--input", "-"]
    out = subprocess.run(CLI + ["generate", str(run), *prompt], input="el gato\n", capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr
    out = subprocess.run(CLI + ["evaluate", str(run), "--split", "valid"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads((run / "eval.json").read_text())["valid"]["loss"] == pytest.approx(
        vectorized.trials[1]["best_val_loss"], rel=1e-5)


@pytest.mark.parametrize("arch,strategy,options", [("transformer", "cv", {"folds": 2}),
                                                   ("decoder", "halving", {"eta": 2})])
def test_vectorized_cv_and_halving_match_the_sequential_engine(arch: str, strategy: str, options: dict,
                                                               tmp_path: Path) -> None:
    cfg = arch_config(arch, "model.dropout=0", "train.epochs=4", "train.lr=0.003")
    common = {"strategy": strategy, "lambdas": "1e-3,0.3,3", "modes": "decoupled", "final": False, **options}
    sequential = sweep(cfg, output=tmp_path / "seq", **common)
    vectorized = sweep(cfg, output=tmp_path / "vec", vectorized=True, **common)
    assert_engines_agree(vectorized, sequential, rel=1e-5)


def test_an_architecture_without_a_stacked_form_is_refused_by_name(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    monkeypatch.delitem(STACKED_MODELS, "decoder")
    with pytest.raises(UserError, match=r"--vectorized: the stacked engine has no stacked form of model\.arch "
                                        r"'decoder' \(it trains 'rnn', 'transformer'\)"):
        sweep(arch_config("decoder"), lambdas="0,0.1", vectorized=True, output=tmp_path / "s", final=False)
    assert not (tmp_path / "s").exists()
    with pytest.raises(UserError, match=r"no stacked form of model\.arch 'decoder'"):
        StackedTrainer([arch_config("decoder")], [tmp_path / "r"], splits=None, tokenizer=None)
