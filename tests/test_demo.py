"""`decaylab demo`: the printed comparison is the run folders' numbers, paired by seed; the bar is applied right."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from decaylab.config import load_config
from decaylab.demo import DEMO_CONFIG, run_demo
from decaylab.demo.compare import paired
from decaylab.errors import UserError
from tests.conftest import FIXTURES
from tests.test_cli import run

# The demo's own config (configs/demo_lm.yaml) shrunk to the fixture text: a few seconds, not minutes.
QUICK = [f"data.name={FIXTURES / 'tiny_text.txt'}", "data.split=[0.8, 0.1, 0.1]", "data.block_size=32",
         "tokenizer.vocab_size=200", "tokenizer.min_frequency=1", "model.d_model=32", "model.layers=1",
         "model.ffn=64", "train.batch_tokens=256", "train.epochs=2", "train.threads=1"]
NUMBER = r"[-+]?\d+\.\d+"


def folder_numbers(root: Path) -> dict[tuple[str, int], tuple[float, float]]:
    """(mode, seed) -> (lowest val loss in metrics.jsonl, test loss in eval.json), read from the trial folders."""
    numbers = {}
    for run_dir in sorted((root / "trials").iterdir()):
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        test = json.loads((run_dir / "eval.json").read_text())["test"]
        seed = int(re.search(r"seed(\d+)$", run_dir.name).group(1))
        numbers[(run_dir.name.split("-")[0], seed)] = (min(r["val_loss"] for r in rows), test["loss"])
    return numbers


def test_printed_comparison_is_the_run_folders_numbers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    reg = load_config(DEMO_CONFIG).regularization
    result = run_demo(tmp_path / "demo", QUICK, quiet=True, seeds=3)
    out = capsys.readouterr().out
    numbers = folder_numbers(tmp_path / "demo")
    assert len(numbers) == 6  # λ = 0 and the config's λ, three seeds each
    seed_lines = [line for line in out.splitlines() if re.match(r"^│\s+\d+ │", line)]
    assert len(seed_lines) == 3
    val_diffs, test_diffs = [], []
    for line in seed_lines:
        cells = [c.strip() for c in line.strip("│").split("│")]
        seed = int(cells[0])
        (val_0, test_0), (val_l, test_l) = numbers[("none", seed)], numbers[(reg.mode, seed)]
        printed = [float(x) for x in re.findall(NUMBER, " ".join(cells[1:]))]
        assert printed == pytest.approx([val_0, val_l, val_l - val_0, test_0, test_l, test_l - test_0], abs=6e-5)
        val_diffs.append(val_l - val_0)
        test_diffs.append(test_l - test_0)
    for split, diffs in (("validation", val_diffs), ("test", test_diffs)):
        line = next(line for line in out.splitlines() if line.startswith(f"{split}, paired over seeds"))
        mean, se, ses = (float(x) for x in re.findall(NUMBER, line)[:3])
        want_se = statistics.stdev(diffs) / len(diffs) ** 0.5
        assert mean == pytest.approx(statistics.mean(diffs), abs=6e-5)
        assert se == pytest.approx(want_se, abs=6e-5)
        assert ses == pytest.approx(statistics.mean(diffs) / want_se, abs=0.06)
        wins = sum(d < 0 for d in diffs)
        assert f"lower in {wins} of 3 seeds" in line
        assert ("meets the bar" in line) == (statistics.mean(diffs) <= -2 * want_se)
    assert result.val.n == result.test.n == 3
    for what in (f"{reg.mode} λ = {reg.weight_decay:g}", reg.decay_set, "seeds 0, 1, 2", "2 epochs"):
        assert what in out
    assert (tmp_path / "demo" / "report.html").is_file()


def test_the_bar_is_two_standard_errors_below_zero() -> None:
    def rows(values: list[float]) -> list[dict]:
        return [{"seed": i, "status": "done", "best_val_loss": v} for i, v in enumerate(values)]

    zero = rows([5.0, 5.0, 5.0, 5.0])
    clear = paired(rows([4.90, 4.92, 4.91, 4.89]), zero, "best_val_loss")
    assert clear.wins == 4 and clear.meets_bar and clear.ses is not None and clear.ses < -2
    noisy = paired(rows([4.90, 5.08, 4.95, 5.02]), zero, "best_val_loss")  # mean −0.0125, SE 0.040
    assert noisy.wins == 2 and not noisy.meets_bar
    worse = paired(rows([5.1, 5.1, 5.2, 5.1]), zero, "best_val_loss")
    assert worse.mean is not None and worse.mean > 0 and not worse.meets_bar


def test_one_seed_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="at least 2 seeds"):
        run_demo(tmp_path / "d", QUICK, seeds=1)
    proc = run("demo", "--seeds", "1", "--output", str(tmp_path / "d"))
    assert proc.returncode == 2 and "at least 2 seeds" in proc.stderr
