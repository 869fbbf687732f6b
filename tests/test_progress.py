"""The training progress bar: a rich bar on a terminal, plain lines in a pipe, silence with --quiet."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from decaylab.training.progress import StepProgress
from tests.conftest import TINY_PAIRS


def test_off_a_terminal_lines_go_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    with StepProgress(total=3, done=0) as bar:
        bar.step(1.5)
        bar.say("evaluated")
    captured = capsys.readouterr()
    assert captured.err == "evaluated\n" and captured.out == ""


def test_quiet_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with StepProgress(total=3, done=0, quiet=True) as bar:
        bar.say("evaluated")
    assert capsys.readouterr().err == ""


def test_a_terminal_gets_a_bar_counting_steps(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    command = [sys.executable, "-m", "decaylab.cli", "train", "--data", str(TINY_PAIRS), "--preset", "tiny",
               "--epochs", "3", "--set", "tokenizer.vocab_size=120", "--set", "tokenizer.min_frequency=1",
               "--set", "data.split=[0.8, 0.1, 0.1]", "--output", str(tmp_path / "run")]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=follower, env={**os.environ, "COLUMNS": "200"})
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the process has exited
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=120) == 0
    screen = b"".join(chunks).decode(errors="replace")
    assert "3/3" in screen and "loss" in screen  # the bar reached the last step
    assert "val " in screen  # evaluation lines are printed above it
