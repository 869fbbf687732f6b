"""`decaylab sweep --backend ray`: trials as Ray tasks on a two-node cluster started with `ray start` (one per
module, tests/ray_cluster.py), compared trial by trial with the local backend.

Without Ray these tests skip, except under CI=true, where a missing Ray is a failure (`make test` installs the
`ray` extra).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from decaylab.errors import UserError
from decaylab.files import read_jsonl
from decaylab.sweep import sweep
from tests.conftest import tiny_config
from tests.objectives import char_lm

VOLATILE = {"wall_s", "tokens_per_s"}
# Long enough (several evaluations) that a worker can be killed in the middle of a trial.
CONFIG = ("train.epochs=4",)
GRID = {"strategy": "grid", "lambdas": "1e-2,3", "modes": "coupled", "final": False}

# Looked up, not imported: Ray fixes its authentication mode when it is first imported, and this process must
# import it only once `ray_auth` has set the test cluster's token.
if importlib.util.find_spec("ray") is None:
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true requires the Ray tests, and Ray is not installed; `make test` installs decaylab[ray]",
                    pytrace=False)
    pytest.skip("Ray is not installed (pip install decaylab[ray])", allow_module_level=True)


def stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows]


def lock_pid(folder: Path) -> int:
    """The PID the folder's lock file names: the process that trained in it last."""
    from decaylab.runfolder.lock import LOCK_FILE

    return int((folder / LOCK_FILE).read_text().split("pid: ")[1].split()[0])


def same_trials(a: Path, b: Path) -> None:
    """Equal trials.jsonl rows and equal metrics rows of every trial (timings aside)."""
    rows_a, rows_b = read_jsonl(a / "trials.jsonl"), read_jsonl(b / "trials.jsonl")
    assert stable(rows_a) == stable(rows_b)
    for row in rows_a:
        assert stable(read_jsonl(a / row["run"] / "metrics.jsonl")) == stable(read_jsonl(b / row["run"] /
                                                                                          "metrics.jsonl"))


@pytest.fixture(scope="module")
def ray_auth():
    """This process uses the test cluster's token (tests/ray_cluster.py, "Authentication") from its first Ray
    connection on, for the rest of the module (Ray reads it once per process)."""
    from tests.ray_cluster import auth_env

    auth = auth_env()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
        patch.delenv("RAY_ADDRESS", raising=False)
        for name, value in auth.items():
            patch.setenv(name, value)
        yield auth


@pytest.fixture(scope="module")
def cluster(ray_auth):
    from tests.ray_cluster import start_cluster

    started = start_cluster(ray_auth)
    try:
        yield started
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        started.stop()


@pytest.fixture(scope="module")
def joined(cluster):
    """This process connected to the cluster for the rest of the module: the sweeps use that connection (as they use
    a user's own `ray.init`), so Ray keeps their worker processes instead of starting new ones for every sweep."""
    import ray

    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    yield cluster
    ray.shutdown()


@pytest.fixture(scope="module")
def local_grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "g"
    sweep(tiny_config(*CONFIG), output=out, **GRID)
    return out


def test_a_grid_on_two_nodes_equals_the_local_backend(cluster, local_grid: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    result = sweep(tiny_config(*CONFIG), output=out, backend="ray", address=cluster.address, **GRID)
    same_trials(out, local_grid)
    local_best = min(read_jsonl(local_grid / "trials.jsonl"), key=lambda row: row["best_val_loss"])
    assert result.summary["backend"] == "ray" and result.best["lambda"] == local_best["lambda"]
    workers = {lock_pid(out / row["run"]) for row in result.trials}
    assert os.getpid() not in workers  # every trial trained in a Ray worker, not in this process
    import ray

    assert not ray.is_initialized()  # it connected by the address and left again (the cluster keeps running)


def test_without_an_address_a_local_instance_is_started(ray_auth, tmp_path: Path) -> None:
    import ray

    result = sweep(objective="tests.objectives:char_lm", lambdas="1", no_zero=True, epochs=1, final=False,
                   output=tmp_path / "s", backend="ray", workers=1)
    assert [row["status"] for row in result.trials] == ["done"]
    assert lock_pid(tmp_path / "s" / result.trials[0]["run"]) != os.getpid()
    assert not ray.is_initialized()  # the instance it started is stopped again


def test_the_cluster_has_two_nodes(joined) -> None:
    import ray

    nodes = [node for node in ray.nodes() if node["Alive"]]
    assert len(nodes) == 2 and {node["Resources"].get("CPU") for node in nodes} == {1.0}


def test_a_killed_worker_is_retried_and_the_result_is_unchanged(joined, local_grid: Path, tmp_path: Path) -> None:
    out = tmp_path / "k"
    killed: dict[str, object] = {}

    def kill_one_mid_trial() -> None:
        """SIGKILL the first worker seen with a trial half done (an evaluation written, the trial not finished)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            finished = {row["trial"] for row in read_jsonl(out / "trials.jsonl")} if (out / "trials.jsonl").exists() \
                else set()
            for run in sorted((out / "trials").glob("*")) if (out / "trials").exists() else []:
                metrics = run / "metrics.jsonl"
                if run.name in finished or not metrics.exists() or not read_jsonl(metrics):
                    continue
                pid = lock_pid(run)
                if pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    killed.update(trial=run.name, pid=pid, rows=len(read_jsonl(metrics)))
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_mid_trial, daemon=True)
    killer.start()
    sweep(tiny_config(*CONFIG), output=out, backend="ray", address=joined.address, **GRID)
    killer.join(timeout=5)
    assert killed, "no trial was caught in the middle"
    assert 1 <= killed["rows"] < 4
    assert lock_pid(out / "trials" / killed["trial"]) != killed["pid"]  # the retry ran in another worker process
    same_trials(out, local_grid)
    steps = [row["step"] for row in read_jsonl(out / "trials" / killed["trial"] / "metrics.jsonl")]
    assert steps == sorted(set(steps))  # no row written twice

    # --resume on Ray trains nothing again
    stamps = {p: p.stat().st_mtime_ns for p in (out / "trials").glob("*/metrics.jsonl")}
    again = sweep(resume=out, backend="ray", address=joined.address, final=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert stable(again.trials) == stable(read_jsonl(local_grid / "trials.jsonl"))


def test_objective_cv_seeds_halving_and_optuna_run_on_ray(joined, tmp_path: Path) -> None:
    # CV folds × seed repeats (4 jobs) of an objective imported by name
    args = {"strategy": "cv", "folds": 2, "seeds": 2, "examples": 40, "lambdas": "1", "no_zero": True, "epochs": 2,
            "final": False}
    local = sweep(objective="tests.objectives:char_lm", output=tmp_path / "l", **args)
    remote = sweep(objective="tests.objectives:char_lm", output=tmp_path / "r", backend="ray",
                   address=joined.address, workers=1, **args)
    assert len(remote.trials) == 4
    same_trials(tmp_path / "r", tmp_path / "l")
    # --workers 1: one trial at a time (each takes its folder only after the one before wrote its last file). The
    # margin: Linux may stamp one file finely and a later one coarsely (a clock tick earlier); two trials at once
    # would overlap by a whole trial (tenths of a second).
    from decaylab.runfolder.lock import LOCK_FILE

    runs = [tmp_path / "r" / row["run"] for row in remote.trials]
    for before, after in zip(runs, runs[1:], strict=False):
        assert max(p.stat().st_mtime for p in before.rglob("*")) <= (after / LOCK_FILE).stat().st_mtime + 0.02
    assert remote.best["lambda"] == local.best["lambda"]
    # successive halving: one runner call per rung, survivors continued from their run folders
    args = {"strategy": "halving", "lambdas": "0.1,1,3", "no_zero": True, "eta": 2, "epochs": 2, "final": False}
    local = sweep(objective=char_lm, output=tmp_path / "hl", **args)
    remote = sweep(objective=char_lm, output=tmp_path / "hr", backend="ray", address=joined.address, **args)
    same_trials(tmp_path / "hr", tmp_path / "hl")
    assert remote.summary["halving"]["rungs"] == local.summary["halving"]["rungs"]
    study = sweep(objective=char_lm, strategy="optuna", trials=2, lambdas="log:1e-3:3:2", epochs=2, final=False,
                  output=tmp_path / "o", backend="ray", address=joined.address, workers=2)
    assert len(study.trials) == 2 and study.summary["optuna"]["complete"] + study.summary["optuna"]["pruned"] == 2
    assert {lock_pid(tmp_path / "o" / row["run"]) for row in study.trials} - {os.getpid()}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"address": "127.0.0.1:6379"}, "--address: names a Ray cluster"),
    ({"backend": "spark"}, "--backend: must be local or ray"),
    ({"backend": "ray", "vectorized": True}, "--backend ray: runs each trial as a Ray task; --vectorized"),
])
def test_bad_backend_options_are_refused(kwargs: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        sweep(tiny_config(), lambdas="1", output=tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_an_unreachable_address_is_one_line_in_seconds(tmp_path: Path) -> None:
    from tests.ray_cluster import free_port

    started = time.monotonic()
    with pytest.raises(UserError, match="--address 127.0.0.1:[0-9]+: no Ray cluster answers there"):
        sweep(tiny_config(), lambdas="1", output=tmp_path / "x", backend="ray", address=f"127.0.0.1:{free_port()}",
              final=False)
    assert time.monotonic() - started < 30


def test_the_command_line_refuses_an_address_without_the_ray_backend(cli, tmp_path: Path) -> None:
    result = cli("sweep", "--lambdas", "1", "--address", "127.0.0.1:6379", "-o", str(tmp_path / "x"))
    assert result.code == 2 and "--address: names a Ray cluster to run the trials on; it goes with --backend ray" \
        in result.err
    result = cli("sweep", "--lambdas", "1", "--backend", "ray", "--workers", "0", "-o", str(tmp_path / "x"))
    assert result.code == 2 and "--workers: must be at least 1" in result.err


def test_without_ray_installed_the_error_says_how_to_install_it(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(UserError, match=r"pip install decaylab\[ray\]"):
        sweep(tiny_config(), lambdas="1", output=tmp_path / "x", backend="ray", final=False)
