"""One owner per run and sweep folder (runfolder/lock.py), new runs in used folders, and output paths that are files."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import decaylab
from decaylab.errors import UserError
from decaylab.files import read_jsonl
from decaylab.runfolder.checkpoint import load_trainer_state
from decaylab.runfolder.lock import LOCK_FILE, FolderInUse, FolderLock, holder
from decaylab.sweep import sweep
from decaylab.training import Trainer
from tests.conftest import TINY_OVERRIDES, tiny_config

SRC = str(Path(decaylab.__file__).resolve().parents[1])  # these sources, also in the subprocesses
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
CLI = [sys.executable, "-m", "decaylab.cli"]
HOLD = ("import sys, time\nfrom decaylab.runfolder.lock import FolderLock\nFolderLock(sys.argv[1]).acquire()\n"
        "print('held', flush=True)\ntime.sleep(600)\n")
VOLATILE = {"wall_s", "tokens_per_s"}


def flags(*extra: str) -> list[str]:
    """The tiny config as command-line flags."""
    return [arg for override in TINY_OVERRIDES + list(extra) for arg in ("--set", override)]


def hold_elsewhere(folder: Path) -> subprocess.Popen:
    """Another process that takes `folder`'s lock and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=30)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_second_process_is_refused_naming_the_holder_and_sigkill_leaves_no_stale_lock(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "x"
    other = hold_elsewhere(folder)
    try:
        found = holder(folder)
        assert found is not None and found.pid == other.pid and found.host == platform.node()
        with pytest.raises(FolderInUse) as refused:
            FolderLock(folder).acquire()
        assert re.fullmatch(rf"{re.escape(str(folder))}: in use by python -c \(PID {other.pid} on "
                            rf"{re.escape(platform.node())}, since \d\d:\d\d:\d\d\); wait for it to finish or stop it",
                            str(refused.value)), str(refused.value)
    finally:
        other.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel drops the lock with the process
        other.wait(timeout=30)
    assert holder(folder) is None
    with FolderLock(folder) as mine:
        assert mine.held and holder(folder).pid == os.getpid()
        assert f"pid: {os.getpid()}\n" in (folder / LOCK_FILE).read_text()
    assert holder(folder) is None


def test_the_lock_is_reentrant_in_a_process_and_free_after_the_last_holder(tmp_path: Path) -> None:
    outer, inner = FolderLock(tmp_path / "r"), FolderLock(tmp_path / "r")
    outer.acquire()
    inner.acquire()  # the CLI holds the folder and the Trainer inside takes it again
    inner.release()
    probe = [sys.executable, "-c", "import sys\nfrom decaylab.runfolder.lock import FolderLock\n"
             "try:\n    FolderLock(sys.argv[1]).acquire()\nexcept Exception as exc:\n    print(exc)\n",
             str(tmp_path / "r")]
    still = subprocess.run(probe, env=ENV, capture_output=True, text=True, timeout=60)
    assert "in use by" in still.stdout and f"PID {os.getpid()}" in still.stdout, still.stdout + still.stderr
    outer.release()
    outer.release()  # idempotent
    free = subprocess.run(probe, env=ENV, capture_output=True, text=True, timeout=60)
    assert free.returncode == 0 and free.stdout == "", free.stdout + free.stderr


def test_two_train_processes_on_one_folder_one_is_refused_the_other_intact_and_resumable(tmp_path: Path,
                                                                                          cli) -> None:
    run = tmp_path / "run"
    settings = ("train.epochs=8", "train.eval_every=4")
    first = subprocess.Popen(CLI + ["train", *flags(*settings), "-q", "--output", str(run)], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, lock = time.monotonic() + 120, run / LOCK_FILE
        while not (lock.is_file() and f"pid: {first.pid}\n" in lock.read_text()):  # the first owns the folder ...
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)  # ... and keeps it (frozen mid-run) while the second one starts
        second = subprocess.run(CLI + ["train", *flags("seed=7"), "-q", "--output", str(run)], env=ENV,
                                capture_output=True, text=True, timeout=120)
        first.send_signal(signal.SIGCONT)
        assert second.returncode == 2
        message = one_line(second.stderr)
        assert message.startswith(f"error: {run}: in use by decaylab train (PID {first.pid} on ")
        assert message.endswith("; wait for it to finish or stop it")
        out, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, err
    # The first run is whole: its own config, and exactly the metrics of the same run trained alone.
    assert "seed: 0" in (run / "config.yaml").read_text()
    alone = Trainer(tiny_config(*settings), tmp_path / "alone", quiet=True).fit()
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [{k: v for k, v in row.items() if k not in VOLATILE} for row in metrics] == \
        [{k: v for k, v in row.items() if k not in VOLATILE} for row in alone.history]
    assert load_trainer_state(run / "checkpoints" / "last")["progress"]["step"] == metrics[-1]["step"]
    # ... and resumable (the folder is free again; the checkpoint, tokenizer and config belong together).
    resumed = cli("train", "--resume", str(run), "-q")
    assert resumed.code == 0, resumed.err
    best = min(metrics, key=lambda row: row["val_loss"])
    assert f"best val loss {best['val_loss']:.4f}" in resumed.out and f"at step {best['step']};" in resumed.out
    # A new run there is refused (the folder holds a run) until --overwrite says to replace it.
    again = cli("train", *flags("seed=7"), "-q", "--output", str(run))
    assert again.code == 2
    assert one_line(again.err) == (f"error: {run} already holds a run; resume it with `decaylab train --resume "
                                   f"{run}`, or pass --overwrite to replace it")
    assert read_jsonl(run / "metrics.jsonl") == metrics


def test_overwrite_replaces_the_old_run_and_its_stale_files_and_keeps_the_users(tmp_path: Path, cli) -> None:
    run = tmp_path / "run"
    (run / "plots").mkdir(parents=True)
    (run / "plots" / "mine.png").write_bytes(b"png")  # a folder without a run: nothing in it is touched
    assert cli("train", *flags("train.epochs=1"), "-q", "--output", str(run)).code == 0
    assert (run / "plots" / "mine.png").read_bytes() == b"png"
    (run / "eval.json").write_text(json.dumps({"test": {"loss": 1.0}}))
    (run / "report.html").write_text("<html>old</html>")
    (run / "plots" / "curves.png").write_bytes(b"png")
    (run / "samples.jsonl").write_text("{}\n")
    (run / ".metrics.jsonl.abc.tmp").write_text("half")  # an atomic write cut off by a kill
    (run / "notes.txt").write_text("mine")
    before = (run / "metrics.jsonl").read_text()

    refused = cli("train", *flags("train.epochs=1", "seed=3"), "-q", "--output", str(run))
    assert refused.code == 2 and "already holds a run" in one_line(refused.err)
    assert (run / "metrics.jsonl").read_text() == before and (run / "eval.json").is_file()

    replaced = cli("train", *flags("train.epochs=2", "seed=3"), "-q", "--output", str(run), "--overwrite")
    assert replaced.code == 0, replaced.err
    left = {p.name for p in run.iterdir()}
    assert left == {"config.yaml", "meta.json", "tokenizer.json", "metrics.jsonl", "checkpoints", "notes.txt",
                    LOCK_FILE}
    assert (run / "notes.txt").read_text() == "mine"
    assert "seed: 3" in (run / "config.yaml").read_text()
    assert read_jsonl(run / "metrics.jsonl")[-1]["epoch"] == 2  # the new run's metrics only

    both = cli("train", "--resume", str(run), "--overwrite")
    assert both.code == 2 and "--overwrite" in one_line(both.err) and "--resume" in both.err
    elsewhere = cli("train", "--resume", str(run), "--output", str(tmp_path / "other"))
    assert elsewhere.code == 2 and "--output and --resume name different folders" in one_line(elsewhere.err)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", *flags(), "--output", "{file}"], "--output {file}: is a file, not a folder"),
        (["train", *flags(), "--output", "{file}/sub"], "--output {file}/sub: {file} is a file, not a folder"),
        (["train", "--resume", "{file}"], "--resume {file}: is a file, not a folder"),
        (["sweep", *flags(), "--lambdas", "1", "--output", "{file}"], "--output {file}: is a file, not a folder"),
        (["sweep", *flags(), "--lambdas", "1", "--output", "{file}/sub/deeper"],
         "--output {file}/sub/deeper: {file} is a file, not a folder"),
        (["sweep", "--resume", "{file}"], "{file}: is a file, not a sweep folder"),
        (["report", "{file}", "--screenshot", "{file}/shot.png"],
         "--screenshot {file}/shot.png: cannot be written there ({file}: is a file, not a folder)"),
    ],
)
def test_an_output_path_that_is_a_file_is_one_line(args: list[str], message: str, tmp_path: Path, cli) -> None:
    taken = tmp_path / "taken"
    taken.write_text("a user's file\n")
    result = cli(*(arg.replace("{file}", str(taken)) for arg in args))
    assert result.code == 2
    assert one_line(result.err) == "error: " + message.replace("{file}", str(taken))
    assert taken.read_text() == "a user's file\n"


def test_a_sweep_folder_has_one_owner_and_overwrite_replaces_a_sweep(tmp_path: Path, cli,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "sw"
    common = ["sweep", *flags("train.epochs=1"), "--mode", "decoupled", "-q", "--no-final", "-o", str(out)]
    seen = []
    original = Trainer.fit

    def fit(self):  # who owns what while a trial trains
        seen.append((holder(out), holder(self.paths.root)))
        return original(self)

    monkeypatch.setattr(Trainer, "fit", fit)
    assert cli(*common, "--lambdas", "0.1").code == 0
    monkeypatch.setattr(Trainer, "fit", original)
    assert len(seen) == 2 and all(s is not None and s.pid == os.getpid() and t is not None and t.pid == os.getpid()
                                  for s, t in seen)
    assert holder(out) is None and all(holder(p) is None for p in (out / "trials").iterdir())

    other = hold_elsewhere(out)
    try:
        for args in (["sweep", "--resume", str(out)], [*common, "--lambdas", "0.3", "--overwrite"]):
            refused = cli(*args)
            assert refused.code == 2
            assert one_line(refused.err).startswith(f"error: {out}: in use by python -c (PID {other.pid} on ")
    finally:
        stop(other)
    again = cli(*common, "--lambdas", "0.3")
    assert again.code == 2 and "already holds a sweep; continue it with --resume" in one_line(again.err)
    (out / "notes.txt").write_text("mine")
    replaced = cli(*common, "--lambdas", "0.3", "--overwrite")
    assert replaced.code == 0, replaced.err
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["decoupled-0.3-p0.1", "none-0-p0.1"]
    assert [row["lambda"] for row in read_jsonl(out / "trials.jsonl")] == [0.0, 0.3]
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(UserError, match="--overwrite: starts a new sweep .* does not go with --resume"):
        sweep(resume=out, overwrite=True)
    into = cli("train", *flags(), "-q", "--output", str(out))  # a run may not move into a sweep folder
    assert into.code == 2
    assert one_line(into.err) == f"error: {out} holds a sweep (sweep.yaml); a run needs a folder of its own"
    assert (out / "report.html").is_file() and not (out / "config.yaml").exists()
