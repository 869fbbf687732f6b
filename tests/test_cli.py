"""The command line as a user types it: the documented commands work, bad input is one line and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_OVERRIDES, TINY_PAIRS

CLI = [sys.executable, "-m", "decaylab.cli"]


def run(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, input=stdin, timeout=300, cwd=cwd)


def tiny_flags() -> list[str]:
    flags = []
    for override in TINY_OVERRIDES:
        if not override.startswith(("data.name", "model.preset", "train.epochs")):
            flags += ["--set", override]
    return flags


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "t"
    proc = run(
        "train", "--data", str(TINY_PAIRS), "--preset", "tiny", "--epochs", "2", "--output", str(out), *tiny_flags()
    )
    assert proc.returncode == 0, proc.stderr
    assert "best val loss" in proc.stdout
    return out


def test_help_lists_every_command() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("train", "generate", "evaluate", "data", "demo", "audit"):
        assert command in proc.stdout


def test_generate_from_file_and_stdin(trained_run: Path, tmp_path: Path) -> None:
    sources = tmp_path / "sources.txt"
    sources.write_text("the cat sleeps .\nthe dog runs .\n")
    for args, stdin in ((["--input", str(sources), "--beam", "5"], None), (["--input", "-"], sources.read_text())):
        proc = run("generate", str(trained_run), *args, stdin=stdin)
        assert proc.returncode == 0, proc.stderr
        assert len(proc.stdout.splitlines()) == 2


def test_evaluate_writes_eval_json(trained_run: Path) -> None:
    proc = run("evaluate", str(trained_run), "--split", "test")
    assert proc.returncode == 0, proc.stderr
    assert "BLEU signature: nrefs:1" in proc.stdout
    result = json.loads((trained_run / "eval.json").read_text())["test"]
    assert result["fingerprint_matches_training"] is True
    assert result["gap"] == pytest.approx(result["loss"] - result["train_loss"])


def test_bad_generation_option_is_one_line(trained_run: Path) -> None:
    proc = run("generate", str(trained_run), "--input", "-", "--method", "sample", "--temperature", "0",
               stdin="the cat sleeps .\n")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: generate: ") and "temperature" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_resume_of_finished_run_is_a_no_op(trained_run: Path) -> None:
    proc = run("train", "--resume", str(trained_run), "-q")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data", "no-such-dataset", "--output", "x"], "data.name: 'no-such-dataset'"),
        (["train", "--data", "missing.tsv", "--output", "x"], "missing.tsv: file not found"),
        (["train", "--set", "model.hiden=3", "--output", "x"], "'model.hiden': unknown key"),
        (["train", "--lr", "-1", "--output", "x"], "'train.lr': Input should be greater than 0"),
        (["train", "--set", "regularization.weight_decay=.nan", "--output", "x"], "'regularization.weight_decay'"),
        (["train", "--resume", "."], "not a decaylab run folder"),
        (["generate", "nowhere", "--input", "-"], "nowhere: run folder not found"),
        (["evaluate", ".", "--split", "dev"], "--split: must be one of"),
        (["audit", "--compare", "hf,flax"], "error: --compare: unknown decay set 'flax'; allowed values are all, "
                                            "no_bias_norm, matrices, matrices_no_embedding, hf, timm, nanogpt"),
    ],
)
def test_bad_input_is_one_line_with_exit_code_2(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli(*args)
    err = result.err
    assert result.code == 2, err
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_installed_command_reports_errors_without_traceback(tmp_path: Path) -> None:
    proc = run("train", "--data", "no-such-dataset", "--output", "x", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: data.name: 'no-such-dataset'")
    assert "Traceback" not in proc.stderr


def test_bad_tsv_line_is_named(tmp_path: Path, cli) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nonly one column\n")
    result = cli("train", "--data", str(bad), "--output", str(tmp_path / "r"))
    assert result.code == 2
    assert "bad.tsv:2: expected 2 tab-separated columns" in result.err


@pytest.mark.parametrize("args,message", [
    (["generate", "--input", "-", "--beam", "0"], "generate: --beam: must be >= 1 (got 0)"),
    (["generate", "--input", "-", "--beam", "-2"], "generate: --beam: must be >= 1 (got -2)"),
    (["generate", "--input", "-", "--top-p", "0"], "generate: --top-p: must be in (0, 1]"),
    (["generate", "--input", "-", "--top-p", "1.5"], "generate: --top-p: must be in (0, 1]"),
    (["generate", "--input", "-", "--top-k", "-1"], "generate: --top-k: must be >= 0"),
    (["generate", "--input", "-", "--method", "nucleus"], "generate: --method: must be one of greedy, beam, sample"),
    (["evaluate", "--beam", "0"], "evaluate: --beam: must be >= 1 (got 0)"),
    (["evaluate", "--max-examples", "0"], "evaluate: --max-examples: must be >= 1 (got 0)"),
    (["evaluate", "--max-examples", "-3"], "evaluate: --max-examples: must be >= 1 (got -3)"),
])
def test_numeric_generation_options_are_validated(trained_run: Path, cli, args: list[str], message: str) -> None:
    result = cli(args[0], str(trained_run), *args[1:])
    assert result.code == 2
    assert result.err.strip() == f"error: {message}" or result.err.startswith(f"error: {message}")


def test_invalid_utf8_input_names_its_line(trained_run: Path, tmp_path: Path) -> None:
    bad = b"the cat sleeps .\nthe dog \xff runs .\n"
    proc = subprocess.run(CLI + ["generate", str(trained_run), "--input", "-"], input=bad, capture_output=True,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.decode().strip() == "error: stdin:2: not valid UTF-8 (byte 8 of the line)"
    (tmp_path / "in.txt").write_bytes(bad)
    proc = run("generate", str(trained_run), "--input", str(tmp_path / "in.txt"))
    assert proc.returncode == 2 and f"{tmp_path / 'in.txt'}:2: not valid UTF-8" in proc.stderr


def test_a_huge_input_line_is_cut_to_the_models_limit(trained_run: Path, tmp_path: Path) -> None:
    meta = json.loads((trained_run / "meta.json").read_text())
    longest = meta["data"]["max_source_tokens"]
    assert longest > 1  # recorded by training: the limit is twice it
    sources = tmp_path / "long.txt"
    huge = "the cat sleeps . " * 300_000  # 5 MiB in one line
    sources.write_text("the dog runs .\n" + " ".join(["the cat"] * 400) + "\n" + huge + "\n")
    proc = run("generate", str(trained_run), "--input", str(sources))
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 3
    warnings = proc.stderr.strip().splitlines()
    assert len(warnings) == 2 and warnings[0].startswith(f"warning: {sources}:2: ")
    assert f"({2 * longest} tokens: twice the longest training source" in warnings[0]
    assert warnings[1].startswith(f"warning: {sources}:3: far more than this model takes")
    # outputs are bounded by the cut source: floor(limit * 1.5) + 10 tokens at most
    assert all(len(line.split()) <= int(2 * longest * 1.5) + 10 for line in proc.stdout.splitlines())


def test_translate_cuts_long_sources_and_says_which(trained_run: Path) -> None:
    from decaylab.generation import translate
    from decaylab.runfolder.load import load_trained

    trained = load_trained(trained_run)
    cut: list[tuple[int, int]] = []
    texts = ["the cat", " ".join(["the dog runs ."] * 10), "x" * 10_000]
    limited = translate(trained.model, trained.tokenizer, texts, max_input_tokens=8,
                        on_cut=lambda i, n: cut.append((i, n)))
    assert [i for i, _ in cut] == [1, 2] and cut[0][1] > 8 and cut[1][1] == -1  # -1: cut by characters first
    ids = trained.tokenizer.encode_batch(limited)
    assert all(len(e.ids) <= int(8 * 1.5) + 10 for e in ids)  # outputs bounded by the cut sources
    unlimited = translate(trained.model, trained.tokenizer, texts[:1], max_input_tokens=8)
    assert unlimited[0] == limited[0]  # a source within the limit is untouched
    with pytest.raises(ValueError, match="max_input_tokens"):
        translate(trained.model, trained.tokenizer, texts, max_input_tokens=1)


def test_audit_compare_marks_where_the_decay_sets_disagree() -> None:
    """`decaylab audit --compare hf,timm,nanogpt`: a column per set, ≠ on the rows where they differ, a summary."""
    from typer.testing import CliRunner

    from decaylab.cli import app

    args = ["audit", "--set", "model.arch=transformer", "--set", "model.preset=tiny", "--set", "model.norm=rmsnorm",
            "--set", "model.encoder_layers=1", "--set", "model.decoder_layers=1", "--vocab-size", "40",
            "--compare", "hf,timm,nanogpt,olmo2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "decay sets compared on Transformer: hf, timm, nanogpt, olmo2" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.startswith("│ ")}
    # the embeddings: decayed by hf, timm and nanoGPT, not by OLMo 2; the attention matrices: by all four
    assert "≠" in rows["embed.weight"] and "olmo2: nn.Embedding weight" in rows["embed.weight"]
    assert "≠" not in rows["encoder.0.attention.query.weight"]
    assert "hf: name matches r'bias'" in rows["encoder.0.attention.query.bias"]
    # 42 tensors in the one-layer model (RMSNorm has no bias); they differ on embeddings (3), Linear biases (16)
    # and the RMSNorm gains (7)
    assert "hf, timm, nanogpt, olmo2 disagree on 26 of 42 trainable tensors of Transformer" in out
    assert "decay audit" not in out  # the comparison replaces the single-set audit
