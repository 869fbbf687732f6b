"""Optuna sweeps on a real PostgreSQL server (tests/pg_server.py starts a throw-away cluster): a leader and `--join`
workers in separate processes, a worker killed in the middle of a trial, a resumed leader.

Without PostgreSQL's binaries or the psycopg driver the module is skipped, except under CI=true, where that is a
failure (`.ci/run` installs the server, `make test` the driver through the `postgres` extra).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from decaylab.files import read_jsonl
from decaylab.sweep import sweep
from decaylab.training.loop import KILL_ENV, TrainingLoop
from tests.pg_server import missing, postgres_server
from tests.test_sweep import lock_pid, tiny_flags

PROBLEM = missing()
if PROBLEM is not None:
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI=true requires the PostgreSQL tests: {PROBLEM} (.ci/run installs the server, "
                           "`make test` the driver)")
    pytest.skip(PROBLEM, allow_module_level=True)

CLI = [sys.executable, "-m", "decaylab.cli"]
TRIALS = 5
EPOCHS, STEPS = 3, 12  # 4 optimizer steps per epoch on the fixture pairs
# eval every 2 steps, so a kill at step 7 leaves a checkpoint at step 6 for the retry to continue from
FLAGS = [*tiny_flags("train.epochs=3", "train.eval_every=2"), "--strategy", "optuna", "--lambdas", "log:1e-4:1:5",
         "--pruner", "none", "-q"]


def test_the_server_is_stopped_and_removed_when_the_test_body_fails() -> None:
    import psycopg

    with pytest.raises(RuntimeError, match="a failing test"), postgres_server() as running:
        with psycopg.connect(f"host=127.0.0.1 port={running.port} user=decaylab dbname=postgres") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        raise RuntimeError("a failing test")
    assert not running.folder.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"host=127.0.0.1 port={running.port} user=decaylab dbname=postgres", connect_timeout=5)


@pytest.fixture(scope="module")
def server():
    """One cluster for the module; every test uses a database of its own."""
    with postgres_server() as running:
        yield running


def start(args: list[str], kill_at: int | None = None) -> subprocess.Popen:
    env = {**os.environ, **({KILL_ENV: str(kill_at)} if kill_at is not None else {})}
    return subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen, code: int = 0) -> None:
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == code, err


def finish_all(procs: list[subprocess.Popen]) -> None:
    """Wait for every process; when one fails, kill the others rather than leave them running."""
    try:
        for proc in procs:
            finish(proc)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def study_of(url: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=url)


def new_database(server, name: str) -> str:
    import optuna

    url = server.create_database(name)
    optuna.storages.RDBStorage(url)  # the schema first, so the processes do not race to create its tables
    return url


def steps_of(run: Path) -> list[int]:
    return [row["step"] for row in read_jsonl(run / "metrics.jsonl")]


@pytest.fixture(scope="module")
def three(server, tmp_path_factory: pytest.TempPathFactory):
    """A leader and two --join workers, each with its own output folder, on one study of TRIALS trials."""
    root = tmp_path_factory.mktemp("three")
    url = new_database(server, "three")
    common = ["sweep", *FLAGS, "--trials", str(TRIALS), "--storage", url, "--study", "three"]
    procs = [start(common + ["-o", str(root / "a")])]
    procs += [start(common + ["--join", "-o", str(root / name)]) for name in ("b", "c")]
    finish_all(procs)
    return root, url, [proc.pid for proc in procs]


def test_leader_and_two_joiners_complete_exactly_the_trials_none_twice(three) -> None:
    root, url, pids = three
    trials = study_of(url, "three").trials
    counted = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(counted) == TRIALS
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in trials)
    assert all(t.user_attrs.get("over_budget") for t in trials if t.state.name == "FAIL")  # slots given back unrun
    assert sum(1 for t in counted if t.user_attrs.get("zero")) == 1  # λ = 0 enqueued exactly once
    # every trial trained once, in the folder of the process that ran it, and nowhere else
    folders = {name: {run.name for run in (root / name / "trials").glob("*")} for name in "abc"}
    assert sum(len(runs) for runs in folders.values()) == TRIALS
    by_pid = dict(zip(pids, "abc", strict=True))
    for t in counted:
        run = root / by_pid[t.user_attrs["pid"]] / "trials" / t.user_attrs["run"]
        assert lock_pid(run) == t.user_attrs["pid"]
        steps = steps_of(run)
        assert steps == sorted(set(steps)) and read_jsonl(run / "metrics.jsonl")[-1]["epoch"] == EPOCHS
    assert len({t.user_attrs["pid"] for t in counted}) >= 2  # the work was shared (the leader starts first)
    rows = read_jsonl(root / "a" / "trials.jsonl")  # the whole study, as the leader saw it at the end
    assert sorted(r["trial_number"] for r in rows) == sorted(t.number for t in counted)
    assert len({r["trial"] for r in rows}) == TRIALS
    assert (root / "a" / "summary.json").is_file() and (root / "a" / "final" / "eval.json").is_file()
    assert not any((root / name / "summary.json").exists() for name in "bc")  # joiners leave it to the leader


@pytest.fixture(scope="module")
def kill_runs(server, tmp_path_factory: pytest.TempPathFactory):
    """The two kill scenarios below, side by side (each is a chain of single-threaded processes, one at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        leader = pool.submit(leader_killed, server, tmp_path_factory.mktemp("killed") / "a")
        joiner = pool.submit(joiner_killed, server, tmp_path_factory.mktemp("joiner-killed"))
        return {"leader": leader.result(), "joiner": joiner.result()}


def leader_killed(server, out: Path):
    """The leader killed with SIGKILL at step 7 of its first trial; then a --join worker in its folder finishes the
    study (it finds the dead trial by its stale heartbeat, 2 × 2 s, and continues it from its checkpoint)."""
    url = new_database(server, "killed")
    common = ["sweep", *FLAGS, "--trials", str(TRIALS), "--storage", url, "--study", "killed", "--heartbeat", "2",
              "-o", str(out)]
    leader = start(common, kill_at=7)
    finish(leader, -9)
    joiner = start(common + ["--join"])
    finish(joiner)
    return out, url, leader.pid, joiner.pid


def test_a_killed_worker_s_trial_is_found_by_its_heartbeat_and_continued(kill_runs) -> None:
    out, url, leader, joiner = kill_runs["leader"]
    trials = study_of(url, "killed").trials
    lost = [t for t in trials if t.state.name == "FAIL" and not t.user_attrs.get("over_budget")]
    assert len(lost) == 1 and lost[0].user_attrs["pid"] == leader  # the trial it was training when it died
    assert "row" not in lost[0].user_attrs  # so it is no row of trials.jsonl
    counted = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(counted) == TRIALS  # the retry took the dead trial's slot: still exactly --trials
    retry = [t for t in counted if t.user_attrs.get("retry_of") is not None]
    assert len(retry) == 1 and retry[0].user_attrs["retry_of"] == lost[0].number
    assert retry[0].user_attrs["run"] == lost[0].user_attrs["run"] and retry[0].params == lost[0].params
    assert {t.user_attrs["pid"] for t in counted} == {joiner}
    run = out / "trials" / retry[0].user_attrs["run"]
    assert lock_pid(run) == joiner
    steps = steps_of(run)
    # the dead leader's evaluations up to its checkpoint at step 6, then the joiner's from step 8: none twice
    assert steps == list(range(2, STEPS + 1, 2))
    assert sum(1 for _ in (out / "trials").iterdir()) == TRIALS  # the retry reused the dead trial's folder
    assert not (out / "summary.json").exists()  # the leader's part: see the resume below


def test_a_resumed_leader_recomputes_nothing_that_finished(kill_runs, monkeypatch: pytest.MonkeyPatch) -> None:
    out, url, _, _ = kill_runs["leader"]
    before = len(study_of(url, "killed").trials)
    stamps = {path: path.stat().st_mtime_ns for path in out.glob("trials/**/*") if path.is_file()}
    steps: list[int] = []
    original = TrainingLoop._settle

    def counting(self, step, *args):
        steps.append(step)
        return original(self, step, *args)

    monkeypatch.setattr(TrainingLoop, "_settle", counting)
    result = sweep(resume=out)
    assert steps == []  # not one optimizer step: every trial had finished (the final model is a copied trial)
    assert len(study_of(url, "killed").trials) == before  # no trial asked for
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
    rows = read_jsonl(out / "trials.jsonl")
    assert len(rows) == len(result.trials) == TRIALS and len({r["trial"] for r in rows}) == TRIALS
    assert {r["status"] for r in rows} == {"done"}
    assert result.summary["optuna"]["complete"] == TRIALS and result.final["reused_trial"] is not None
    again = sweep(resume=out)  # and once more: the same answer, still nothing trained
    assert steps == [] and again.final["test"] == result.final["test"] and again.best == result.best


def joiner_killed(server, root: Path):
    """A --join worker, alone (so it creates the study), killed with SIGKILL at step 7 of its first trial; then the
    leader, in a folder of its own, runs the study to its end."""
    url = new_database(server, "joiner_killed")
    common = ["sweep", *FLAGS, "--trials", str(TRIALS), "--storage", url, "--study", "jk", "--heartbeat", "2"]
    joiner = start(common + ["--join", "-o", str(root / "b")], kill_at=7)
    finish(joiner, -9)
    leader = start(common + ["-o", str(root / "a")])
    finish(leader)
    return root, url, leader.pid, joiner.pid


def test_a_killed_joiner_s_trial_is_retried_by_the_leader_afresh_in_its_own_folder(kill_runs) -> None:
    root, url, leader, joiner = kill_runs["joiner"]
    trials = study_of(url, "jk").trials
    lost = [t for t in trials if t.state.name == "FAIL" and not t.user_attrs.get("over_budget")]
    assert len(lost) == 1 and lost[0].user_attrs["pid"] == joiner
    counted = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(counted) == TRIALS and {t.user_attrs["pid"] for t in counted} == {leader}
    retry = [t for t in counted if t.user_attrs.get("retry_of") == lost[0].number]
    assert len(retry) == 1 and retry[0].user_attrs["run"] == lost[0].user_attrs["run"]
    name = lost[0].user_attrs["run"]
    # the leader cannot see the joiner's folder, so it trained the point from the start in its own
    assert steps_of(root / "a" / "trials" / name) == list(range(2, STEPS + 1, 2))
    assert steps_of(root / "b" / "trials" / name) == [2, 4, 6]  # the dead joiner's part, left where it was
    rows = read_jsonl(root / "a" / "trials.jsonl")
    assert len(rows) == TRIALS and len({r["trial"] for r in rows}) == TRIALS  # the lost trial once, as its retry
    assert [r["run"] for r in rows if r["trial"] == name] == [f"trials/{name}"]
    assert json.loads((root / "a" / "summary.json").read_text())["optuna"]["complete"] == TRIALS
