"""decaylab.integrations.transformers: a Regularization inside transformers.Trainer, its callback, `audit --hf-config`.

transformers is a dev dependency (and the `hf` extra), so under CI these run, never skip.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration, Trainer, TrainingArguments

from decaylab.files import read_jsonl
from decaylab.integrations.transformers import (
    DecaylabCallback,
    RegularizedTrainer,
    build_optimizer,
    hf_config_model,
    trainer_decay_names,
)
from decaylab.regularization import Regularization
from tests.test_cli import run as run_cli

VOCAB, BLOCK = 40, 16


def gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=BLOCK, n_embd=16, n_layer=2, n_head=2,
                                      bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0))


def t5() -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    return T5ForConditionalGeneration(T5Config(vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                               num_heads=2, decoder_start_token_id=0))


def arguments(tmp_path: Path, **changes) -> TrainingArguments:
    settings = {"output_dir": str(tmp_path / "hf"), "use_cpu": True, "report_to": "none", "learning_rate": 2e-3,
                "per_device_train_batch_size": 8, "disable_tqdm": True, **changes}
    return TrainingArguments(**settings)


def blocks(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Sequences with a learnable pattern (each token is the previous plus one, mod the vocabulary)."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, VOCAB, (n, 1), generator=generator)
    ids = (starts + torch.arange(BLOCK)) % VOCAB
    return [{"input_ids": row, "labels": row} for row in ids]


def groups(optimizer: torch.optim.Optimizer) -> list[dict]:
    """Each param group's settings, with its parameters as identities (`initial_lr` is the LR scheduler's mark)."""
    return [{**{k: v for k, v in g.items() if k not in ("params", "initial_lr")},
             "params": [id(p) for p in g["params"]]} for g in optimizer.param_groups]


def per_parameter(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """λ each parameter gets from its group."""
    where = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    return {name: where[id(p)] for name, p in model.named_parameters()}


@pytest.mark.parametrize(("settings", "optim", "name", "kwargs"), [
    ({"mode": "decoupled", "weight_decay": 0.1, "decay_set": "hf"}, "adamw_torch", "adamw", {}),
    ({"mode": "decoupled", "weight_decay": 0.05, "decay_set": "matrices_no_embedding",
      "multipliers": {r"lm_head|wte": 0.5}}, "adamw_torch", "adamw", {}),
    ({"mode": "coupled", "weight_decay": 1e-3, "decay_set": "no_bias_norm"}, "adamw_torch", "adam", {}),
    ({"mode": "l2", "weight_decay": 1e-3, "decay_set": "no_bias_norm"}, "adamw_torch", "adamw", {}),
    ({"mode": "decoupled", "weight_decay": 0.1, "decay_set": "hf", "decay_scaling": "schedule"}, "adamw_torch",
     "adamw", {}),
    ({"mode": "decoupled", "weight_decay": 0.01, "decay_set": "no_bias_norm"}, "sgd", "sgd", {"momentum": 0.9}),
])
def test_the_trainers_optimizer_is_the_regularizations(tmp_path: Path, settings: dict, optim: str, name: str,
                                                       kwargs: dict) -> None:
    model = gpt2()
    args = arguments(tmp_path, optim=optim, adam_beta1=0.8, adam_epsilon=1e-7,
                     optim_args="momentum=0.9" if optim == "sgd" else None)
    reg = Regularization(**settings)
    trainer = RegularizedTrainer(model=model, args=args, regularization=reg)
    trainer.create_optimizer_and_scheduler(num_training_steps=20)
    adam = {"betas": (0.8, 0.999), "eps": 1e-7} if name != "sgd" else {}
    expected = Regularization(**settings).optimizer(model, name, lr=2e-3, total_steps=20, **adam, **kwargs)
    assert type(trainer.optimizer) is type(expected)
    assert groups(trainer.optimizer) == groups(expected)  # the same groups, λ, lr and hyperparameters
    assert per_parameter(model, trainer.optimizer) == per_parameter(model, expected)
    assert trainer.decay_audit["rows"] and all("decayed" in row for row in trainer.decay_audit["rows"])
    assert build_optimizer(model, args, Regularization(**settings), 20).param_groups[0].keys() == \
        expected.param_groups[0].keys()


@pytest.mark.parametrize("make", [gpt2, t5])
def test_the_hf_decay_set_is_the_trainers_default(make) -> None:
    model = make()
    plan = Regularization(decay_set="hf").plan(model)
    decayed = {info.name for info in plan.params if info.decayed}
    # create_optimizer groups named_parameters() (a tied weight once, under its first name) by membership in the list
    trainer = set(Trainer.get_decay_parameter_names(None, model))
    assert trainer == set(trainer_decay_names(model))
    assert decayed == {name for name, _ in model.named_parameters() if name in trainer}


def test_a_second_lambda_in_the_arguments_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"weight_decay=0.01 would be a second λ"):
        RegularizedTrainer(model=gpt2(), args=arguments(tmp_path, weight_decay=0.01),
                           regularization=Regularization(mode="decoupled", weight_decay=0.1))
    with pytest.raises(ValueError, match="optim='adafactor'"):
        RegularizedTrainer(model=gpt2(), args=arguments(tmp_path, optim="adafactor"),
                           regularization=Regularization()).create_optimizer()


def test_the_l2_penalty_is_in_the_training_loss_only(tmp_path: Path) -> None:
    model = gpt2()
    reg = Regularization(mode="l2", weight_decay=0.5, decay_set="hf")
    trainer = RegularizedTrainer(model=model, args=arguments(tmp_path), regularization=reg)
    batch = {k: torch.stack([b[k] for b in blocks(4, 1)]) for k in ("input_ids", "labels")}
    plain = Trainer(model=model, args=arguments(tmp_path))
    model.train()
    assert trainer.compute_loss(model, dict(batch)).item() == pytest.approx(
        plain.compute_loss(model, dict(batch)).item() + reg.penalty(model).item(), rel=1e-6)
    model.eval()
    assert trainer.compute_loss(model, dict(batch)).item() == pytest.approx(
        plain.compute_loss(model, dict(batch)).item(), rel=1e-6)


def test_the_callback_writes_a_run_folder_the_report_renders(tmp_path: Path) -> None:
    from decaylab.report import write_report

    run = tmp_path / "run"
    reg = Regularization(mode="decoupled", weight_decay=0.1, decay_set="hf")
    trainer = RegularizedTrainer(model=gpt2(), args=arguments(tmp_path, num_train_epochs=3, eval_strategy="epoch",
                                                              logging_strategy="epoch", save_strategy="no"),
                                 train_dataset=blocks(32, 1), eval_dataset=blocks(16, 2), regularization=reg,
                                 run_dir=run)
    trainer.train()
    rows = read_jsonl(run / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [1.0, 2.0, 3.0] and [row["step"] for row in rows] == [4, 8, 12]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] and rows[0]["train_loss"] > 0
    assert {"decay_norm", "nodecay_norm", "weight_norm", "penalty", "decay_factor", "lr", "gap"} <= set(rows[0])
    assert rows[0]["decay_factor"] == pytest.approx(1 - rows[0]["lr"] * 0.1)  # AdamW: w ← (1 − lr·λ)·w
    audit = json.loads((run / "audit.json").read_text())
    assert audit == trainer.decay_audit
    model = trainer.model
    assert {row["name"] for row in audit["rows"] if row["decayed"]} == {
        name for name, _ in model.named_parameters() if name in set(trainer_decay_names(model))}
    assert (run / "checkpoints" / "best" / "model.safetensors").is_file()
    page = write_report(run).read_text(encoding="utf-8")
    assert "audit unavailable" not in page and "transformers.Trainer" in page
    with pytest.raises(ValueError, match="either run_dir"):
        DecaylabCallback()


def test_audit_hf_config_builds_the_architecture_and_checks_the_trainers_set(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 768,
                                  "n_layer": 12, "n_head": 12}))
    model = hf_config_model(config)  # GPT-2 small, on the meta device: no memory, nothing downloaded
    assert sum(p.numel() for p in model.parameters()) == 124_439_808
    assert all(p.device.type == "meta" for p in model.parameters())
    proc = run_cli("audit", "--hf-config", str(config))
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "matches transformers.Trainer.get_decay_parameter_names on this model: 51 of 148" in out
    assert "transformer.h.0.ln_1.weight" in out and "no_bias_norm" in out
    (tmp_path / "bad.json").write_text('{"vocab_size": 3}')
    bad = run_cli("audit", "--hf-config", str(tmp_path / "bad.json"))
    assert bad.returncode == 2 and "needs a 'model_type'" in bad.stderr
