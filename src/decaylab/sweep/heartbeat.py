"""Finding Optuna trials whose process died: a heartbeat per running trial, and a retry of each stale one.

Optuna's RDB storages (PostgreSQL, MySQL, SQLite) record a heartbeat per running trial; a trial whose last
heartbeat is older than the grace period is "stale": `optuna.storages.fail_stale_trials` marks it FAIL and calls
the storage's stale-trial callback. Optuna beats only inside `Study.optimize`, and decaylab's workers use
`ask`/`tell` (to count the trial budget in the storage), so `Heartbeat` records the beats itself and the workers
call `fail_stale` before each `ask` and while the leader waits.

The callback here (`retry_stale`) enqueues the stale trial again with its parameters and its run folder's name,
so the process that picks it up continues the folder from its last checkpoint when it can see it (same machine
or a shared file system) and trains it afresh otherwise. The FAIL trial counts for nothing; its retry takes its
slot of `--trials`.
"""

from __future__ import annotations

import inspect
import threading
import warnings
from typing import Any

from decaylab.errors import UserError

DEFAULT_S = 60  # beat every minute on a database server: one tiny UPDATE per running trial
GRACE_FACTOR = 2  # stale after two missed beats (Optuna's own default grace period)
MAX_RETRIES = 2  # a point that kills its process every time (out of memory, say) is given up after this many
JOURNAL_PREFIX = "journal:"


def heartbeat_seconds(given: int | None, url: str) -> int | None:
    """The heartbeat interval for storage `url`: `given` (0 turns it off), else 60 s on a database server and none
    on SQLite (one machine: `--resume` finds cut-off trials by PID). A journal file has no heartbeat in Optuna."""
    if given is not None and (isinstance(given, bool) or not isinstance(given, int) or given < 0):
        raise UserError(f"--heartbeat: seconds between a running trial's heartbeats, a whole number ≥ 1, or 0 to "
                        f"turn it off (got {given!r})")
    if url.startswith(JOURNAL_PREFIX):
        if given:
            raise UserError("--heartbeat: Optuna's journal storage has no heartbeat; use a database URL "
                            "(postgresql://…) to have dead workers' trials retried, or leave --heartbeat out")
        return None
    if given is not None:
        return given or None
    return None if url.startswith("sqlite") else DEFAULT_S


def storage_kwargs(interval: int | None) -> dict[str, Any]:
    """RDBStorage arguments for a heartbeat every `interval` seconds (none for None)."""
    import optuna

    if interval is None:
        return {}
    # Optuna 4.9 renamed failed_trial_callback to heartbeat_stale_trial_callback (the old name warns)
    callback = "heartbeat_stale_trial_callback"
    if callback not in inspect.signature(optuna.storages.RDBStorage).parameters:
        callback = "failed_trial_callback"
    return {"heartbeat_interval": interval, "grace_period": GRACE_FACTOR * interval, callback: retry_stale}


def retry_stale(study, frozen) -> None:
    """Optuna's stale-trial callback: enqueue the trial again (same parameters, same run folder), at most
    MAX_RETRIES times in a row."""
    attrs = frozen.user_attrs
    if "run" not in attrs or attrs.get("retries", 0) >= MAX_RETRIES:
        return  # it died before it named its folder, or too often: its slot goes to a new trial
    keep = {k: v for k, v in attrs.items() if k == "zero"}
    study.enqueue_trial(dict(frozen.params), user_attrs={**keep, "continue": attrs["run"],
                                                          "retry_of": frozen.number,
                                                          "retries": attrs.get("retries", 0) + 1})


def fail_stale(study) -> None:
    """Mark trials without a recent heartbeat FAIL and enqueue their retries (a no-op without a heartbeat)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class Heartbeat:
    """`with Heartbeat(storage, trial_id, interval):` records a beat now and then every `interval` seconds."""

    def __init__(self, storage, trial_id: int, interval: int | None) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self.interval is not None:
            self.storage.record_heartbeat(self.trial_id)  # at once: a trial without any beat is never found stale
            self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.trial_id}", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a dropped connection: the next beat may get through; training goes on meanwhile
                pass

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
