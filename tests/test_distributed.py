"""Data-parallel training (training/distributed.py): 2 gloo ranks on the CPU, started by torchrun as a user would.

One torchrun start trains every registered rule (and a language model, and the resume test's reference) with 2
ranks through `decaylab train` (tests/ddp_runs.py); each test compares one of those runs with the same config
trained here in one process. The shares are tested without processes; the launcher and the resume with a killed
rank start torchrun themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from decaylab.config import Config, dump_yaml
from decaylab.data.prepare import encode_run_data, epoch_groups
from decaylab.data.splits import load_splits
from decaylab.data.tokenizer import train_tokenizer
from decaylab.errors import UserError
from decaylab.files import read_jsonl
from decaylab.regularization.rules import MODES, RULES
from decaylab.training import Trainer
from decaylab.training.distributed import KILL_RANK_ENV, check_shares, free_port
from decaylab.training.loop import KILL_ENV, Shard
from tests.conftest import tiny_config
from tests.test_decoder import lm_config
from tests.test_trainer import stable

if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    if os.environ.get("CI") == "true":
        raise RuntimeError("torch.distributed with gloo is missing: the data-parallel tests cannot run")
    pytest.skip("torch.distributed with gloo is missing", allow_module_level=True)

RUNS = Path(__file__).parent / "ddp_runs.py"
RULE_NAMES = [*MODES, "l1"]  # every mode of the registry, and the term that combines with any mode
# clipping and a cosine schedule on, dropout off: two ranks draw other dropout masks than one process
BASE = ["model.dropout=0", "train.clip_norm=0.5", "train.schedule=cosine", "train.eval_every=4", "train.lr=0.01"]
COMPARED = ("train_loss", "val_loss", "train_eval_loss", "gap", "decay_norm", "nodecay_norm", "weight_norm",
            "penalty", "decay_factor", "lr")
# resume: dropout on, so each rank's own random stream must come back from the checkpoint
RESUME = ["train.epochs=4", "train.eval_every=3", "train.batch_tokens=128", "model.dropout=0.2",
          "regularization.mode=decoupled", "regularization.weight_decay=0.05"]


def rule_config(name: str) -> Config:
    """The tiny config with rule `name` on (its λ in its own field)."""
    rule = RULES[name]
    sets = [f"regularization.mode={name if rule.is_mode else 'none'}"]
    if rule.strength is not None:
        sets.append(f"regularization.{rule.strength}={0.05 if rule.strength == 'weight_decay' else 0.002}")
    return tiny_config(*BASE, *sets)


def lm() -> Config:
    """A decoder-only language model (text blocks, not pairs) with decoupled decay. At lr 0.01 its training is
    chaotic: one process with the blocks of each batch in reverse order (a change of rounding only) ends 5e-2 away."""
    return lm_config("model.dropout=0", "train.eval_every=5", "regularization.mode=decoupled",
                     "regularization.weight_decay=0.1", "train.lr=3e-3", "train.clip_norm=1.0")


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    """The torchrun command line of `nproc` ranks on the loopback interface (a free port each time)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), *args]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every run of this module trained with 2 ranks in one torchrun start: OUT/<name>/ for each config."""
    root = tmp_path_factory.mktemp("ranks")
    configs = {name: rule_config(name) for name in RULE_NAMES}
    configs.update(lm=lm(), resume=tiny_config(*RESUME))
    files = []
    for name, config in configs.items():
        files.append(root / f"{name}.yaml")
        files[-1].write_text(dump_yaml(config))
    proc = subprocess.run(torchrun(str(RUNS), str(root / "out"), str(root / "touches.json"), *map(str, files)),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def assert_same_run(two: Path, one: Path) -> None:
    """Two runs' metrics rows agree to float rounding, and so do their final weights."""
    rows2, rows1 = read_jsonl(two / "metrics.jsonl"), read_jsonl(one / "metrics.jsonl")
    assert [r["step"] for r in rows2] == [r["step"] for r in rows1] and rows1
    for a, b in zip(rows2, rows1, strict=True):
        for key in COMPARED:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-5), (a["step"], key, a[key], b[key])
    w2, w1 = (load_file(run / "checkpoints" / "last" / "model.safetensors") for run in (two, one))
    assert w2.keys() == w1.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("name", RULE_NAMES)
def test_two_ranks_equal_one_process_for_every_rule(name: str, two_ranks: Path, tmp_path: Path, one_thread) -> None:
    Trainer(rule_config(name), tmp_path / name, quiet=True).fit()
    assert_same_run(two_ranks / "out" / name, tmp_path / name)
    if RULES[name].decays:  # the rule acted, once: its decayed weights end smaller than with no rule at all
        end = read_jsonl(two_ranks / "out" / name / "metrics.jsonl")[-1]["decay_norm"]
        assert end < read_jsonl(two_ranks / "out" / "none" / "metrics.jsonl")[-1]["decay_norm"] - 1e-4


def test_two_ranks_equal_one_process_for_a_language_model(two_ranks: Path, tmp_path: Path, one_thread) -> None:
    Trainer(lm(), tmp_path / "lm", quiet=True).fit()
    assert_same_run(two_ranks / "out" / "lm", tmp_path / "lm")


def test_rank_zero_alone_touches_the_run_folders(two_ranks: Path) -> None:
    zero = json.loads((two_ranks / "touches-0.json").read_text())
    assert any("metrics.jsonl" in line for line in zero)  # the audit hook saw rank 0 write
    assert json.loads((two_ranks / "touches-1.json").read_text()) == []  # rank 1 opened nothing there
    files = sorted(p.name for p in (two_ranks / "out" / "none").iterdir())
    assert files == [".lock", "checkpoints", "config.yaml", "meta.json", "metrics.jsonl", "tokenizer.json"]
    meta = json.loads((two_ranks / "out" / "none" / "meta.json").read_text())
    assert meta["data_parallel"] == {"ranks": 2}


def test_a_killed_two_rank_run_resumes_to_the_same_metrics(two_ranks: Path, tmp_path: Path) -> None:
    (tmp_path / "cfg.yaml").write_text(dump_yaml(tiny_config(*RESUME)))
    killed = tmp_path / "killed"
    # rank 1 dies after step 8 (as a node would); torchrun stops rank 0, whose last checkpoint is step 6's
    env = {**os.environ, KILL_ENV: "8", KILL_RANK_ENV: "1"}
    proc = subprocess.run(torchrun("-m", "decaylab.cli", "train", "-c", str(tmp_path / "cfg.yaml"), "-o",
                                   str(killed), "-q"), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert read_jsonl(killed / "metrics.jsonl")[-1]["step"] == 6
    # resumed by the launcher (`--nproc 2` starts torchrun itself)
    proc = subprocess.run([sys.executable, "-m", "decaylab.cli", "train", "--resume", str(killed), "--nproc", "2",
                           "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best val loss" in proc.stdout
    reference = read_jsonl(two_ranks / "out" / "resume" / "metrics.jsonl")
    assert reference[-1]["step"] == 24
    assert stable(read_jsonl(killed / "metrics.jsonl")) == stable(reference)


def test_nproc_with_more_ranks_than_a_batch_holds_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "cfg.yaml").write_text(dump_yaml(tiny_config("train.batch_tokens=64")))  # some batch holds 1 pair
    proc = subprocess.run([sys.executable, "-m", "decaylab.cli", "train", "-c", str(tmp_path / "cfg.yaml"), "-o",
                           str(tmp_path / "run"), "--nproc", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "holds 1 example, so a rank would get none" in proc.stderr, proc.stderr


def test_bad_usage_is_one_line_before_any_process_starts(cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
                                                         ) -> None:
    result = cli("train", "--nproc", "0", "-o", str(tmp_path / "a"))
    assert result.code == 2 and result.err.startswith("error: train: --nproc: must be >= 1")
    result = cli("sweep", "--vectorized", "--nproc", "2", "--data", "x.tsv")
    assert result.code == 2 and "--vectorized" in result.err and result.err.count("\n") == 1
    result = cli("sweep", "--nproc=2")
    assert result.code == 2 and "--workers" in result.err and result.err.count("\n") == 1
    result = cli("train", "--nproc", "2", "--resume", str(tmp_path), "--overwrite")
    assert result.code == 2 and "--overwrite" in result.err and result.err.count("\n") == 1
    result = cli("train", "--nproc", "2", "--set", f"data.name={tmp_path / 'missing.tsv'}")
    assert result.code == 2 and result.err.count("\n") == 1
    # under torchrun (its environment), other commands and a second launcher are refused; rank 0 alone says so
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    result = cli("sweep", "--vectorized")
    assert result.code == 2 and "only `decaylab train`" in result.err
    result = cli("train", "--nproc", "2", "-o", str(tmp_path / "b"))
    assert result.code == 2 and "already one of torchrun's 2 ranks" in result.err
    monkeypatch.setenv("RANK", "1")
    result = cli("sweep", "--vectorized")
    assert result.code == 2 and result.err == ""


@pytest.fixture(scope="module")
def encoded() -> dict[str, tuple[Config, object]]:
    """The training split of the tiny pairs and of the tiny text, encoded."""
    out = {}
    for kind, config in (("pairs", tiny_config("train.batch_tokens=128")), ("text", lm())):
        splits = load_splits(config.data)
        tokenizer = train_tokenizer([p.source for p in splits.train] + [p.target for p in splits.train],
                                    config.tokenizer)
        out[kind] = config, encode_run_data(config, tokenizer, splits)[0]
    return out


@pytest.mark.parametrize("kind", ["pairs", "text"])
@pytest.mark.parametrize("world", [2, 3])
def test_the_shares_of_a_batch_are_the_batch(kind: str, world: int, encoded) -> None:
    config, data = encoded[kind]
    for group in epoch_groups(config, data, 0):
        whole = data.batch(group)
        shares = [Shard(rank, world).cut(data, group) for rank in range(world)]
        assert sorted(i for rank in range(world) for i in group[rank::world]) == sorted(group)
        assert all(share.n_tokens == whole.n_tokens == data.target_tokens(group) for share in shares)
        # each share's own targets add up to the global batch's: the global count is the right divisor
        assert sum(len(share.target_index) for share in shares) == whole.n_tokens
    assert Shard().cut(data, group).n_tokens == whole.n_tokens


def test_more_ranks_than_a_batch_holds_are_refused_by_name(encoded) -> None:
    config, data = encoded["pairs"]
    smallest = min(len(g) for e in range(config.train.epochs) for g in epoch_groups(config, data, e))
    check_shares(config, data, smallest)
    with pytest.raises(UserError, match=rf"on {smallest + 1} processes: batch \d+ of epoch \d+ holds {smallest} "
                                        rf"examples, so a rank would get none; use at most {smallest} processes"):
        check_shares(config, data, smallest + 1)
