"""Damaged run-folder files, a full disk, and the small cases of issue 18: one line, exit code 2, what still works.

Damaged files are made by truncating or overwriting the files of a real tiny run; the full disk is a real small
tmpfs (mounted as root; skipped with a reason where that is not permitted, except under CI=true).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from decaylab.errors import DamagedFile, WriteError
from decaylab.files import atomic_write_text, load_jsonl, read_jsonl
from decaylab.runfolder.checkpoint import intact_checkpoints
from decaylab.runfolder.load import load_trained
from decaylab.sweep.store import SweepClock, SweepStore
from decaylab.training import Trainer
from tests.conftest import TINY_OVERRIDES, tiny_config

VOLATILE = {"wall_s", "tokens_per_s"}


def stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows]


def flags(*extra: str) -> list[str]:
    out = []
    for override in TINY_OVERRIDES + list(extra):
        out += ["--set", override]
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (3 epochs: evaluations and checkpoints at steps 4, 8 and 12)."""
    run = tmp_path_factory.mktemp("damaged") / "run"
    Trainer(tiny_config(), run, quiet=True).fit()
    return run


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A fresh copy of the trained run, to damage."""
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    path = tmp_path / "sources.txt"
    path.write_text("the cat sleeps .\n")
    return path


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


DAMAGES = {"truncated": truncate, "empty": empty, "random": random_bytes}
REASONS = {"truncated": "(truncated)", "empty": "(empty)", "random": "random or overwritten bytes"}


def one_line(result) -> str:
    """The error line of a failed command (exactly one line, exit code 2)."""
    assert result.code == 2, result.err
    assert result.err.count("\n") == 1 and result.err.startswith("error: "), result.err
    return result.err.strip()


# -- model.safetensors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_best_model_names_the_file_and_the_intact_last(run: Path, sources: Path, cli, damage: str) -> None:
    DAMAGES[damage](run / "checkpoints" / "best" / "model.safetensors")
    for args in (["generate", str(run), "--input", str(sources)], ["evaluate", str(run), "--max-examples", "2"]):
        line = one_line(cli(*args))
        assert f"{run}/checkpoints/best/model.safetensors is damaged " in line
        assert REASONS[damage] in line
        assert line.endswith("checkpoints/last is intact: use --checkpoint last")
    ok = cli("generate", str(run), "--input", str(sources), "--checkpoint", "last")  # what the message says works
    assert ok.code == 0, ok.err
    assert len(ok.out.splitlines()) == 1


def test_report_with_a_damaged_checkpoint_is_one_line(run: Path, cli) -> None:
    truncate(run / "checkpoints" / "best" / "model.safetensors")
    line = one_line(cli("report", str(run), "--samples", "0"))
    assert "checkpoints/best/model.safetensors is damaged (truncated)" in line
    assert "checkpoints/last is intact (generate and evaluate work with --checkpoint last)" in line
    assert not (run / "report.html").exists()


def test_both_checkpoints_damaged_says_nothing_is_left(run: Path, sources: Path, cli) -> None:
    random_bytes(run / "checkpoints" / "best" / "model.safetensors")
    truncate(run / "checkpoints" / "last" / "model.safetensors")
    line = one_line(cli("generate", str(run), "--input", str(sources), "--checkpoint", "last"))
    assert "checkpoints/last/model.safetensors is damaged (truncated)" in line
    assert "checkpoints/best cannot be used either, so no weights of this run are left" in line
    assert intact_checkpoints(run) == "no checkpoint is intact"


@pytest.mark.parametrize(("file", "damage"), [("model.safetensors", "truncated"), ("trainer_state.pt", "truncated"),
                                              ("trainer_state.pt", "random"), ("trainer_state.pt", "empty")])
def test_resume_from_a_damaged_last_checkpoint(run: Path, cli, file: str, damage: str) -> None:
    DAMAGES[damage](run / "checkpoints" / "last" / file)
    before = (run / "metrics.jsonl").read_bytes()
    line = one_line(cli("train", "--resume", str(run)))
    assert f"{run}/checkpoints/last/{file} is damaged " in line and REASONS[damage] in line
    assert line.endswith("cannot resume from it; checkpoints/best is intact (generate and evaluate work with "
                         "--checkpoint best)")
    assert (run / "metrics.jsonl").read_bytes() == before  # nothing was touched


def test_a_trainer_state_with_code_in_it_is_refused_by_weights_only(run: Path, cli) -> None:
    import torch

    torch.save({"progress": Path("x")}, run / "checkpoints" / "last" / "trainer_state.pt")  # not a plain tensor dict
    line = one_line(cli("train", "--resume", str(run)))
    assert "trainer_state.pt is damaged (holds objects that weights_only=True refuses to load" in line


# -- tokenizer.json ---------------------------------------------------------------------------------------------


def test_corrupt_tokenizer_is_one_line_everywhere(run: Path, sources: Path, cli) -> None:
    truncate(run / "tokenizer.json")
    for args in (["generate", str(run), "--input", str(sources)], ["evaluate", str(run)],
                 ["report", str(run), "--samples", "0"]):
        line = one_line(cli(*args))
        assert f"{run}/tokenizer.json is damaged (truncated: EOF while parsing" in line
        assert "can only be used with the tokenizer they were trained with" in line
    line = one_line(cli("train", "--resume", str(run)))
    assert "tokenizer.json is damaged" in line and "so the run cannot resume" in line


def test_a_deleted_tokenizer_is_never_rebuilt_on_resume(run: Path, cli) -> None:
    (run / "tokenizer.json").unlink()
    line = one_line(cli("train", "--resume", str(run)))
    assert line == (f"error: {run}/tokenizer.json: missing; {run}/checkpoints/last was trained with it and a "
                    "tokenizer trained again could have another vocabulary, so the run cannot resume: restore "
                    "tokenizer.json from a copy of the run, or start a new run")
    assert not (run / "tokenizer.json").exists()


def test_a_tokenizer_of_another_vocabulary_does_not_match_the_checkpoint(run: Path, sources: Path, cli) -> None:
    from decaylab.data.splits import load_splits
    from decaylab.data.tokenizer import save_tokenizer, train_tokenizer

    cfg = tiny_config("tokenizer.vocab_size=100")
    splits = load_splits(cfg.data)
    other = train_tokenizer([p.source for p in splits.train] + [p.target for p in splits.train], cfg.tokenizer)
    save_tokenizer(other, run / "tokenizer.json")
    line = one_line(cli("generate", str(run), "--input", str(sources)))
    assert "checkpoints/best/model.safetensors: does not match the run's tokenizer.json and config.yaml" in line
    assert "size mismatch" in line


# -- metrics.jsonl ----------------------------------------------------------------------------------------------


def test_partial_last_metrics_line_is_dropped_on_resume(run: Path, cli, caplog) -> None:
    """A kill while appending leaves a partial line after the checkpoint's rows: resume drops it and says so."""
    rows = read_jsonl(run / "metrics.jsonl")
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 16, "epoch": 4.0, "train_lo')
    result = cli("train", "--resume", str(run))
    assert result.code == 0, result.err
    # a warning on stderr (through logging, which pytest captures here)
    assert f"{run}/metrics.jsonl:4: dropped a partial last line (a write was cut off); resuming with the 3 " \
           "complete rows up to step 12" in caplog.text
    assert (run / "metrics.jsonl").read_text().endswith("}\n")
    assert stable(read_jsonl(run / "metrics.jsonl")) == stable(rows)


def test_a_cut_off_row_of_the_checkpoint_is_said_to_be_lost(run: Path, cli, caplog) -> None:
    data = (run / "metrics.jsonl").read_bytes()
    (run / "metrics.jsonl").write_bytes(data[:-40])  # the row of step 12 (the checkpoint's) cut off
    result = cli("train", "--resume", str(run))
    assert result.code == 0, result.err
    assert "the rows after step 8 up to the checkpoint's step 12 are lost" in caplog.text
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [4, 8]


def test_report_tolerates_a_partial_last_metrics_line(run: Path, cli, caplog) -> None:
    data = (run / "metrics.jsonl").read_bytes()
    (run / "metrics.jsonl").write_bytes(data[:-40])
    result = cli("report", str(run), "--samples", "0")
    assert result.code == 0, result.err
    assert "metrics.jsonl:3: left out a partial last line" in caplog.text
    assert "report.html" in result.out


def test_a_damaged_metrics_line_before_the_last_is_one_line(run: Path, cli) -> None:
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[1] = '{"step": 8, "val_lo\n'
    (run / "metrics.jsonl").write_text("".join(lines))
    for args in (["train", "--resume", str(run)], ["report", str(run), "--samples", "0"]):
        line = one_line(cli(*args))
        assert f"{run}/metrics.jsonl:2 is damaged (not valid JSON: Unterminated string" in line
        assert "the checkpoints are not affected: generate and evaluate still work" in line


def test_load_jsonl_tells_a_partial_last_line_from_damage(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a"')
    assert load_jsonl(path).rows == [{"a": 1}, {"a": 2}] and load_jsonl(path).partial_line == 3
    path.write_text('{"a": 1}\n{"a"\n')  # a complete line (it has its newline) that is not JSON: damage
    with pytest.raises(DamagedFile, match=r"rows.jsonl:2 is damaged \(not valid JSON"):
        load_jsonl(path)
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DamagedFile, match="expected a JSON object, found list"):
        load_jsonl(path)
    store = SweepStore(tmp_path)
    store.trials_file.write_text('{"trial": "a"}\n{"trial": "b", "sta')
    assert store.rows() == [{"trial": "a"}]  # a sweep resumes past a cut-off trials.jsonl append


# -- writing: modes, failed writes, a full disk -----------------------------------------------------------------


def test_model_file_follows_the_umask_like_every_other_run_file(trained: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    config_mode = stat.S_IMODE((trained / "config.yaml").stat().st_mode)
    assert config_mode == 0o666 & ~mask
    for which in ("best", "last"):
        for file in (trained / "checkpoints" / which).iterdir():
            assert stat.S_IMODE(file.stat().st_mode) == config_mode, file


def test_a_failed_write_removes_its_temp_file_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "kept.txt"
    atomic_write_text(target, "old\n")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    from decaylab.files import atomic_write

    with pytest.raises(WriteError, match=r"could not write .*kept.txt \(No space left on device\)") as info:
        atomic_write(target, fail)
    assert info.value.full
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1200 KiB tmpfs: room for the run's files and its first checkpoints, not for the second `last`."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)], capture_output=True,
                              text=True, timeout=30)
        problem = None if proc.returncode == 0 else (proc.stderr or proc.stdout).strip() or f"exit {proc.returncode}"
    except OSError as exc:  # no mount command
        problem = str(exc)
    if problem is not None:
        reason = f"cannot mount a tmpfs here ({problem})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI runs as root where mounting works")
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_the_run_resumes(small_disk: Path, trained: Path, cli) -> None:
    run = small_disk / "run"
    line = one_line(cli("train", *flags(), "--output", str(run), "-q"))
    assert line == (f"error: could not write {run}/checkpoints/last/trainer_state.pt (No space left on device); "
                    f"checkpoints/last (step 4) and checkpoints/best are intact; continue with `decaylab train "
                    f"--resume {run}` once there is space")
    leftovers = [p for p in run.rglob("*") if p.name.endswith((".tmp", ".new", ".old"))]
    assert leftovers == []
    assert load_trained(run, "last").model is not None  # the intact checkpoints load
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [4, 8]  # best (step 8) was written
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    result = cli("train", "--resume", str(run), "-q")
    assert result.code == 0, result.err
    assert stable(read_jsonl(run / "metrics.jsonl")) == stable(read_jsonl(trained / "metrics.jsonl"))


# -- the smaller ones -------------------------------------------------------------------------------------------


def test_data_show_prints_markup_in_the_data_as_text(tmp_path: Path, cli) -> None:
    data = tmp_path / "markup.tsv"
    data.write_text("".join(f"a [/x] b [bold]{i}\tc [red]d[/red] {i}\n" for i in range(20)))
    result = cli("data", "show", str(data), "-n", "20")
    assert result.code == 0, result.err
    assert "a [/x] b [bold]" in result.out and "c [red]d[/red]" in result.out


@pytest.mark.parametrize(("suffix", "line"), [(".tsv", "a\x00b\tc\n"),
                                              (".jsonl", '{"source": "a\x00b", "target": "c"}\n'),
                                              (".jsonl", '{"source": "a\\u0000b", "target": "c"}\n')])
def test_a_nul_byte_is_a_bad_line(tmp_path: Path, cli, suffix: str, line: str) -> None:
    from decaylab.data.io import read_pairs

    good = "x y\tz w\n" if suffix == ".tsv" else '{"source": "x y", "target": "z w"}\n'
    data = tmp_path / f"nul{suffix}"
    data.write_text(good * 3 + line + good)
    error = one_line(cli("data", "show", str(data)))
    assert error.startswith(f"error: {data}:4: ") and "NUL" in error
    assert error.endswith("(set data.on_bad_line=skip to skip such lines)")
    assert len(read_pairs(data, on_bad_line="skip")) == 4


def test_a_symlink_loop_is_reported_as_one(tmp_path: Path, run: Path, cli) -> None:
    loop = tmp_path / "loop.tsv"
    loop.symlink_to(tmp_path / "back.tsv")
    (tmp_path / "back.tsv").symlink_to(loop)
    for args in (["data", "show", str(loop)], ["train", "--config", str(loop), "--output", str(tmp_path / "o")],
                 ["generate", str(run), "--input", str(loop)], ["generate", str(loop), "--input", "-"],
                 ["report", str(loop)]):
        assert one_line(cli(*args)) == f"error: {loop}: a symlink loop (too many levels of symbolic links)", args
    broken = tmp_path / "broken.tsv"
    broken.symlink_to(tmp_path / "nowhere.tsv")
    assert "a broken symlink (to" in one_line(cli("data", "show", str(broken)))


def test_sweep_clock_counts_earlier_and_cut_off_invocations(tmp_path: Path) -> None:
    store = SweepStore(tmp_path)
    first = SweepClock(store, time.perf_counter() - 30.0)  # a new sweep that has run 30 s
    assert first.earlier == 0.0
    assert abs(first.stop() - 30.0) < 1.0
    second = SweepClock(store, time.perf_counter() - 5.0)  # resumed: counts the first invocation
    assert abs(second.earlier - 30.0) < 1.0
    # killed 12 s after it started, its last write 7 s after its start: it counts until that write
    started = json.loads(store.clock_file.read_text())["started"]
    (tmp_path / "trials.jsonl").write_text("{}\n")
    os.utime(tmp_path / "trials.jsonl", (started + 7.0, started + 7.0))
    third = SweepClock(store, time.perf_counter())
    assert abs(third.earlier - (30.0 + 7.0)) < 1.0


def test_errors_keep_their_words_across_worker_processes() -> None:
    import pickle

    damaged = DamagedFile("runs/x/tokenizer.json", "empty").saying("restore it")
    again = pickle.loads(pickle.dumps(damaged))
    assert str(again) == str(damaged) == "runs/x/tokenizer.json is damaged (empty); restore it"
    full = pickle.loads(pickle.dumps(WriteError("could not write a (No space left on device)", "go on", True)))
    assert (str(full), full.detail, full.full) == ("could not write a (No space left on device); go on",
                                                   "could not write a (No space left on device)", True)


def test_evaluate_refuses_to_replace_a_damaged_eval_json(run: Path, cli) -> None:
    (run / "eval.json").write_text('{"valid": {"loss": 4.1')
    line = one_line(cli("evaluate", str(run), "--max-examples", "2"))
    assert line == (f"error: {run}/eval.json is damaged (truncated); it holds only earlier `decaylab evaluate` "
                    "results: remove it and evaluate again")
    assert (run / "eval.json").read_text() == '{"valid": {"loss": 4.1'


def test_a_damaged_shared_file_of_a_sweep_says_every_trial_needs_it(trained: Path, tmp_path: Path) -> None:
    from decaylab.data.splits import load_splits
    from decaylab.sweep.shared import load_shared

    base = tiny_config()
    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.copy(trained / "tokenizer.json", shared / "tokenizer.json")
    (shared / "init.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(DamagedFile, match=r"init.safetensors is damaged \(truncated\); every trial of the sweep "
                                          "was trained from it: restore it"):
        load_shared(shared, base, load_splits(base.data).fingerprint)


def test_a_full_disk_in_a_sweep_says_how_to_resume_the_sweep(tmp_path: Path) -> None:
    from decaylab.sweep import sweep

    def full_disk(ctx, jobs, workers, on_result):
        raise WriteError("could not write T/checkpoints/last/model.safetensors (No space left on device); "
                         "checkpoints/last (step 4) is intact", "continue with `decaylab train --resume T` once "
                         "there is space", True)

    out = tmp_path / "s"
    with pytest.raises(WriteError) as info:
        sweep(tiny_config(), lambdas="1e-2", modes="decoupled", output=out, final=False, runner=full_disk)
    assert str(info.value) == ("could not write T/checkpoints/last/model.safetensors (No space left on device); "
                               f"checkpoints/last (step 4) is intact; continue with `decaylab sweep --resume {out}` "
                               "once there is space")


def test_report_names_a_damaged_meta_json(run: Path, cli) -> None:
    (run / "meta.json").write_bytes(b"")
    line = one_line(cli("report", str(run), "--samples", "0"))
    assert line == (f"error: {run}/meta.json is damaged (empty); the checkpoints are not affected; remove the file "
                    "and the report leaves out the run's provenance")
