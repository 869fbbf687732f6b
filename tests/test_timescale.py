"""λ through its EMA timescale τ (issue 14 item 3): the derivation per decay scaling, proven on a trained run's
weights; the refusals; `--taus` sweeps; `decaylab recommend` against a hand computation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from decaylab.cli import app
from decaylab.config import load_config
from decaylab.data.prepare import encode_pairs, epoch_groups, resolve_timescale
from decaylab.data.tokenizer import PAD_ID
from decaylab.errors import UserError
from decaylab.files import read_jsonl
from decaylab.runfolder.checkpoint import MODEL_FILE, read_tensors
from decaylab.runfolder.layout import load_run_config
from decaylab.sweep import sweep
from decaylab.sweep.spec import build_spec, parse_taus
from decaylab.training import Trainer
from tests.conftest import TINY_OVERRIDES, tiny_config

LR = 0.01


def hand_steps_per_epoch(config) -> float:
    """The mean number of batches the training loop cuts per epoch (its own `epoch_groups`), counted here."""
    from decaylab.data.splits import load_splits
    from decaylab.data.tokenizer import train_tokenizer

    splits = load_splits(config.data)
    tokenizer = train_tokenizer([p.source for p in splits.train] + [p.target for p in splits.train],
                                config.tokenizer)
    train = encode_pairs(tokenizer, splits.train)
    counts = [len(epoch_groups(config, train, e)) for e in range(config.train.epochs)]
    return sum(counts) / len(counts)


@pytest.mark.parametrize(("settings", "hand_lambda"), [
    # λ = 1/(c_peak·τ_iter): c_peak = η_max for `lr` and `corrected` (AdamC: η_max²/η_max), 1 for `schedule`
    (["regularization.mode=decoupled", "regularization.decay_scaling=lr"], lambda tau_iter: 1 / (LR * tau_iter)),
    (["regularization.mode=decoupled", "regularization.decay_scaling=schedule"], lambda tau_iter: 1 / tau_iter),
    (["regularization.mode=decoupled", "regularization.decay_scaling=corrected"],
     lambda tau_iter: 1 / (LR * tau_iter)),
    # coupled under plain SGD without momentum is decoupled `lr` decay (Loshchilov & Hutter 2019, Prop. 1)
    (["regularization.mode=coupled", "train.optimizer=sgd", "train.momentum=0"], lambda tau_iter: 1 / (LR * tau_iter)),
], ids=["lr", "schedule", "corrected", "coupled-sgd"])
def test_tau_gives_a_per_step_decay_of_one_over_tau_iter_at_the_peak_lr(settings, hand_lambda, tmp_path: Path,
                                                                         one_thread) -> None:
    tau = 3.0
    config = tiny_config(*settings, f"train.lr={LR}", "train.epochs=2", "model.dropout=0",
                         "model.tie_embeddings=false", f"regularization.tau_epochs={tau}")
    tau_iter = tau * hand_steps_per_epoch(config)
    trainer = Trainer(config, tmp_path / "run", quiet=True)
    # The source embedding's pad row gets no gradient (padding_idx), so only the decay moves it: from ones, after
    # T steps it is (1 − c·λ)^T, which with the derived λ is (1 − 1/τ_iter)^T.
    trainer.model.src_embed.weight.data[PAD_ID].fill_(1.0)
    assert "src_embed.weight" in {info.name for info in trainer.reg.plan(trainer.model).decayed}
    trainer.fit()

    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["regularization"]
    assert written["tau_epochs"] == tau
    assert written["weight_decay"] == pytest.approx(hand_lambda(tau_iter), rel=1e-12)
    assert written["timescale"]["tau_iter"] == pytest.approx(tau_iter, rel=1e-12)
    assert written["timescale"]["peak_lr"] == LR
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    steps = rows[-1]["step"]
    row = read_tensors(tmp_path / "run" / "checkpoints" / "last" / MODEL_FILE)["src_embed.weight"][PAD_ID]
    assert row.double().mean().item() == pytest.approx((1 - 1 / tau_iter) ** steps, rel=1e-5)
    assert float(row.max() - row.min()) == 0.0
    if "regularization.mode=decoupled" in settings:  # the factor the trainer records at each evaluation
        assert all(r["decay_factor"] == pytest.approx(1 - 1 / tau_iter, rel=1e-12) for r in rows)

    from decaylab.report import collect, findings

    headline = findings.run_verdict(collect.load_run(tmp_path / "run")).headline  # the run's report says both
    assert f"τ = 3 epochs (λ = {written['weight_decay']:.4g})" in headline

    # the resolved config loads again (τ and λ together are not "both given") and resolves to the same λ
    reloaded = load_run_config(tmp_path / "run")
    again = resolve_timescale(reloaded, trainer.train_data)
    assert again.regularization.weight_decay == reloaded.regularization.weight_decay == written["weight_decay"]


def test_resolution_leaves_a_config_without_tau_alone(data) -> None:
    splits, tokenizer = data
    config = tiny_config("regularization.mode=decoupled", "regularization.weight_decay=0.1")
    assert resolve_timescale(config, encode_pairs(tokenizer, splits.train)) is config


@pytest.mark.parametrize(("overrides", "message"), [
    (["regularization.weight_decay=0.1", "regularization.mode=decoupled"],
     "regularization.tau_epochs=2 and regularization.weight_decay=0.1 both set λ; give one of them"),
    ([], "mode='none' decays nothing"),
    (["regularization.mode=l2"], "mode='l2' adds a penalty"),
    (["regularization.mode=coupled"], "mode='coupled' with optimizer 'adam': Adam divides λ·w by √v̂"),
    (["regularization.mode=coupled", "train.optimizer=sgd"], "mode='coupled' with SGD momentum 0.9"),
])
def test_tau_is_refused_where_it_has_no_meaning(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)) as info:
        load_config(None, ["regularization.tau_epochs=2", *overrides])
    assert "\n" not in str(info.value)


def test_timescale_record_without_tau_is_refused() -> None:
    with pytest.raises(UserError, match="regularization.timescale records how a run derived"):
        load_config(None, ["regularization.mode=decoupled", "regularization.weight_decay=0.1",
                           "regularization.timescale={steps_per_epoch: 4, tau_iter: 8, peak_lr: 0.002, rule: x}"])


def test_train_refusal_is_one_line_with_exit_2(cli, tmp_path: Path) -> None:
    result = cli("train", "--set", "regularization.mode=l2", "--set", "regularization.tau_epochs=2",
                 "--output", str(tmp_path / "r"))
    assert result.code == 2 and result.err.count("\n") == 1 and "regularization.tau_epochs" in result.err
    assert not (tmp_path / "r").exists()


def test_taus_grid_parsing() -> None:
    assert parse_taus("log:1:8:4") == [1.0, 2.0, 4.0, 8.0]
    assert parse_taus("4, 1,1") == [1.0, 4.0]  # sorted, deduplicated
    spec = build_spec(taus="log:0.5:2:3")
    assert spec.taus == [0.5, 1.0, 2.0] and spec.lambdas == [0.0]  # the baseline λ = 0 (τ = ∞)
    assert build_spec(taus="1,2", no_zero=True).lambdas == []
    for text, message in [("0,1", "τ must be > 0 epochs"), ("log:0:1:3", "LO and HI of a log grid must be > 0"),
                          ("", "--taus: empty list"), ("log:1:2", "expected log:LO:HI:N"), ("a", "not a number")]:
        with pytest.raises(UserError, match=re.escape(message)):
            parse_taus(text)
    with pytest.raises(UserError, match="--taus and --lambdas: give one"):
        build_spec(lambdas="0.1", taus="1")


def test_sweep_over_taus_shows_tau_and_the_lambda_it_gives(tmp_path: Path, one_thread) -> None:
    from decaylab.report import collect, findings

    base = tiny_config(f"train.lr={LR}", "model.dropout=0")
    per_epoch = hand_steps_per_epoch(base)
    result = sweep(base, taus="1,4", output=tmp_path / "s", vectorized=True)
    rows = read_jsonl(tmp_path / "s" / "trials.jsonl")
    assert [(r["mode"], r.get("tau")) for r in rows] == [("none", None), ("decoupled", 1.0), ("decoupled", 4.0)]
    for row in rows[1:]:
        assert row["lambda"] == pytest.approx(1 / (LR * row["tau"] * per_epoch), rel=1e-12)
        trained = yaml.safe_load((tmp_path / "s" / row["run"] / "config.yaml").read_text())["regularization"]
        assert (trained["tau_epochs"], trained["weight_decay"]) == (row["tau"], row["lambda"])
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert [(e["mode"], e["tau"], e["lambda"]) for e in summary["table"]] == [
        ("none", None, 0.0), ("decoupled", 4.0, rows[2]["lambda"]), ("decoupled", 1.0, rows[1]["lambda"])]
    assert summary["spec"]["taus"] == [1.0, 4.0] and summary["steps_per_epoch"] == per_epoch
    assert result.best["lambda"] == summary["chosen"]["lambda"]
    if summary["chosen"]["mode"] != "none":
        assert summary["chosen"]["tau"] in (1.0, 4.0)

    swept = collect.load_sweep(tmp_path / "s")  # the report's tables show both axes
    points = findings.points_table(swept)
    assert points["headers"][:3] == ["mode", "τ (epochs)", "λ"]
    assert [[c["text"] for c in r["cells"][:3]] for r in points["rows"]] == [
        ["none", "∞", "0"], ["decoupled", "4", f"{rows[2]['lambda']:g}"], ["decoupled", "1", f"{rows[1]['lambda']:g}"]]
    assert "τ (epochs)" in findings.trials_table(swept)["headers"]


def test_optuna_samples_tau(tmp_path: Path, one_thread) -> None:
    base = tiny_config(f"train.lr={LR}", "model.dropout=0", "train.epochs=1")
    per_epoch = hand_steps_per_epoch(base)
    sweep(base, strategy="optuna", trials=2, taus="log:1:4:3", no_zero=True, pruner="none", output=tmp_path / "o",
          final=False)
    rows = read_jsonl(tmp_path / "o" / "trials.jsonl")
    assert len(rows) == 2
    for row in rows:
        assert 1.0 <= row["tau"] <= 4.0
        assert row["lambda"] == pytest.approx(1 / (LR * row["tau"] * per_epoch), rel=1e-12)


def test_sweep_command_refuses_taus_with_a_mode_without_timescale(cli, tmp_path: Path) -> None:
    result = cli("sweep", "--taus", "1,2", "--mode", "l2", "--output", str(tmp_path / "s"),
                 *[a for o in TINY_OVERRIDES for a in ("--set", o)])
    assert result.code == 2 and result.err.startswith("error: --taus: mode='l2' adds a penalty")
    result = cli("sweep", "--taus", "1,2", "--lambdas", "0.1", "--output", str(tmp_path / "s"))
    assert result.code == 2 and "--taus and --lambdas: give one" in result.err
    assert not (tmp_path / "s").exists()


def test_recommend_prints_steps_and_the_lambda_of_each_timescale() -> None:
    args = [a for o in TINY_OVERRIDES for a in ("--set", o)] + ["--lr", str(LR), "--points", "3"]
    result = CliRunner().invoke(app, ["recommend", *args, "--set", "regularization.mode=decoupled",
                                      "--set", "regularization.weight_decay=0.1"])
    assert result.exit_code == 0, result.output
    config = tiny_config(f"train.lr={LR}")
    per_epoch = hand_steps_per_epoch(config)
    total = round(per_epoch * config.train.epochs)  # no max_steps: every batch of the 3 epochs
    out = result.output
    assert f"{per_epoch:.6g} steps per epoch" in out and f"{total} total steps = 3 epochs" in out
    assert "Wang & Aitchison, ICML 2025, arXiv 2405.13698" in out
    assert "between about one epoch and the total number of epochs" in out
    table = [line for line in out.splitlines() if re.match(r"^│\s*[\d.]+\s*│", line)]
    cells = [[c.strip() for c in line.strip("│").split("│")] for line in table]
    assert [c[0] for c in cells] == ["1", "1.73", "3"]  # one epoch, log-spaced, the whole run
    for tau_text, steps, lam_lr, lam_schedule, lam_corrected in cells:
        tau_iter = float(tau_text) * per_epoch
        assert steps == f"{tau_iter:,.0f}"
        assert float(lam_lr) == pytest.approx(1 / (LR * tau_iter), rel=5e-4)
        assert float(lam_schedule) == pytest.approx(1 / tau_iter, rel=5e-4)
        assert lam_corrected == lam_lr
    assert f"its λ = 0.1 gives τ = {1 / (LR * 0.1) / per_epoch:.3g} epochs" in out
    assert "decaylab sweep --taus log:1:3:3" in out
