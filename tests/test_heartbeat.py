"""sweep/heartbeat.py without a server: the interval chosen per storage, and a stale trial failed and enqueued again
(on an SQLite file, whose RDB storage beats the same way PostgreSQL's does)."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import optuna
import pytest

from decaylab.errors import UserError
from decaylab.sweep.heartbeat import (
    DEFAULT_S,
    GRACE_FACTOR,
    MAX_RETRIES,
    Heartbeat,
    fail_stale,
    heartbeat_seconds,
    retry_stale,
    storage_kwargs,
)


@pytest.mark.parametrize(
    ("given", "url", "expected"),
    [
        (None, "postgresql+psycopg://u@db/s", DEFAULT_S),
        (None, "mysql://u@db/s", DEFAULT_S),
        (None, "sqlite:///s.db", None),  # one machine: --resume finds cut-off trials by PID
        (None, "journal:/shared/s.log", None),
        (0, "postgresql://u@db/s", None),
        (5, "sqlite:///s.db", 5),
        (0, "journal:/shared/s.log", None),
    ],
)
def test_the_interval_per_storage(given, url: str, expected) -> None:
    assert heartbeat_seconds(given, url) == expected


@pytest.mark.parametrize(("given", "url"), [(-1, "sqlite:///s.db"), (True, "sqlite:///s.db"), (2.5, "sqlite:///s"),
                                            (3, "journal:/shared/s.log")])
def test_a_bad_interval_is_refused_naming_the_option(given, url: str) -> None:
    with pytest.raises(UserError, match="--heartbeat: "):
        heartbeat_seconds(given, url)


def test_the_storage_takes_the_arguments_without_a_deprecation_warning(tmp_path: Path) -> None:
    kwargs = storage_kwargs(3)
    assert kwargs["heartbeat_interval"] == 3 and kwargs["grace_period"] == 3 * GRACE_FACTOR
    assert storage_kwargs(None) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # Optuna ≥ 4.9 warns about the old callback name
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}", **kwargs)
    assert storage.get_heartbeat_interval() == 3


def test_a_trial_without_heartbeats_is_failed_and_enqueued_with_its_folder(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}", **storage_kwargs(1))
        study = optuna.create_study(storage=storage, study_name="s")
        beating, dead = study.ask(), study.ask()
    for trial, run in ((beating, "t0000-a"), (dead, "t0001-b")):
        trial.suggest_float("lambda", 1e-4, 1.0, log=True)
        trial.set_user_attr("run", run)
    storage.record_heartbeat(dead._trial_id)  # one beat, then its process "dies"
    with Heartbeat(storage, beating._trial_id, 1):
        time.sleep(GRACE_FACTOR * 1 + 1.5)
        fail_stale(study)
    states = {t.number: t.state.name for t in study.trials}
    assert states[beating.number] == "RUNNING" and states[dead.number] == "FAIL"  # only the silent one
    waiting = [t for t in study.trials if t.state.name == "WAITING"]
    assert len(waiting) == 1
    assert waiting[0].system_attrs["fixed_params"] == {"lambda": dead.params["lambda"]}  # until it is asked
    assert waiting[0].user_attrs == {"continue": "t0001-b", "retry_of": dead.number, "retries": 1}


def test_a_trial_that_keeps_dying_is_given_up(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
        frozen = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params={}, distributions={},
                                           user_attrs={"run": "t0001-b", "retries": MAX_RETRIES})
        retry_stale(study, frozen)
        retry_stale(study, optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params={},
                                                     distributions={}, user_attrs={}))  # died before naming a folder
    assert study.trials == []  # its slot goes to a new trial instead


def test_every_process_uses_the_interval_the_study_was_created_with(tmp_path: Path) -> None:
    from decaylab.sweep.optuna_search import create_or_load_study, study_heartbeat

    settings = {"storage": f"sqlite:///{tmp_path / 's.db'}", "study": "s", "metric": "loss", "seed": 0, "trials": 4,
                "pruner": "none", "zero": True, "dropouts": None}
    first = create_or_load_study({**settings, "heartbeat": 7})
    assert study_heartbeat(first) == 7
    for other in (None, 2):  # a joiner with the default, or with its own --heartbeat: the study's 7 s wins
        assert study_heartbeat(create_or_load_study({**settings, "heartbeat": other})) == 7
    assert len(first.trials) == 1  # λ = 0 enqueued once, by the creator
