"""A trained run from Python: `decaylab.load(path)` with generate, evaluate, model, tokenizer, config, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import decaylab
from decaylab.errors import DamagedFile
from decaylab.evaluation.evaluate import evaluate_run
from decaylab.files import read_jsonl
from decaylab.generation import continue_prompts, translate
from decaylab.runfolder.load import load_trained
from decaylab.training import Trainer
from tests.conftest import tiny_config
from tests.test_cli import run as run_cli
from tests.test_decoder import lm_config

SOURCES = ["the cat sleeps .", "the dog eats fish ."]


@pytest.fixture(scope="module")
def pairs_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("api") / "pairs"
    Trainer(tiny_config(), folder, quiet=True).fit()
    return folder


def test_load_exposes_the_runs_parts(pairs_run: Path) -> None:
    run = decaylab.load(pairs_run)
    assert isinstance(run, decaylab.Run) and run.path == pairs_run and run.checkpoint == "best"
    assert run.config.model.arch == "rnn" and not run.language_model
    assert run.tokenizer.token_to_id("</s>") == 2 and run.tokenizer.get_vocab_size() > 4
    assert not run.model.training
    assert run.metrics == read_jsonl(pairs_run / "metrics.jsonl") and len(run.metrics) == 3
    assert run.best == min(run.metrics, key=lambda row: row["val_loss"])
    assert run.meta["seed"] == run.config.seed
    assert "Run(" in repr(run)


def test_generate_equals_the_search_and_the_command(pairs_run: Path) -> None:
    run = decaylab.load(pairs_run)
    trained = load_trained(pairs_run)
    beam = run.generate(SOURCES, beam=5)
    limit, _ = run.input_limit()
    assert beam == translate(trained.model, trained.tokenizer, SOURCES, method="beam", beam=5,
                             max_input_tokens=limit)
    assert run.generate(SOURCES[0], beam=5) == beam[0]  # one string in, one string out
    sampled = run.generate(SOURCES, method="sample", top_k=5, seed=3)
    assert sampled == run.generate(SOURCES, method="sample", top_k=5, seed=3)
    proc = run_cli("generate", str(pairs_run), "--beam", "5", *[a for s in SOURCES for a in ("--prompt", s)])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == beam
    with pytest.raises(ValueError, match=r"top_p: must be in \(0, 1\]"):
        run.generate(SOURCES, method="sample", top_p=0)
    with pytest.warns(UserWarning, match="input 0: .* cut"):
        run.generate([" ".join(["the cat"] * 400)])


def test_evaluate_writes_eval_json_as_the_command_does(pairs_run: Path, tmp_path: Path) -> None:
    run = decaylab.load(pairs_run)
    result = run.evaluate(split="valid", max_examples=4)
    assert json.loads((pairs_run / "eval.json").read_text())["valid"] == result
    assert result == evaluate_run(pairs_run, "valid", max_examples=4)
    assert {"loss", "ppl", "bleu", "chrf", "gap"} <= set(result) and result["examples"] == 4
    with pytest.raises(ValueError, match="beam: must be an integer >= 1"):
        run.evaluate(beam=0)


def test_a_damaged_checkpoint_names_the_keyword_that_still_works(pairs_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(pairs_run, copy)
    weights = copy / "checkpoints" / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(DamagedFile, match='checkpoints/last is intact: use checkpoint="last"'):
        decaylab.load(copy)
    assert isinstance(decaylab.load(copy, checkpoint="last").generate("the cat sleeps ."), str)


def test_a_language_model_continues_prompts(tmp_path: Path) -> None:
    Trainer(lm_config(), tmp_path / "lm", quiet=True).fit()
    run = decaylab.load(tmp_path / "lm")
    assert run.language_model and run.context == run.config.model.max_positions
    text = run.generate("God said,", max_new_tokens=8)
    assert text.startswith("God said,")
    assert text == continue_prompts(run.model, run.tokenizer, ["God said,"], max_new_tokens=8,
                                    max_context=run.context)[0]
    sampled = run.generate(["God said,"], method="sample", seed=1, max_new_tokens=8)
    assert sampled == run.generate(["God said,"], method="sample", seed=1, max_new_tokens=8)
    result = run.evaluate("test")
    assert 0 < result["bits_per_character"] < 10
