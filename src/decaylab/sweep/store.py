"""The sweep folder: sweep.yaml (what was asked), trials.jsonl, summary.json, shared/, trials/, final/."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from decaylab.errors import DamagedFile, UserError
from decaylab.files import atomic_write_json, atomic_write_jsonl, atomic_write_text, not_found, read_jsonl
from decaylab.runfolder.layout import SWEEP_RECORD

RECORD_VERSION = 1
# What a sweep and its report write into its folder; `--overwrite` removes these and only these.
SWEEP_ENTRIES = (SWEEP_RECORD, "trials.jsonl", "summary.json", "wall.json", "shared", "trials", "final", "final.new",
                 "optuna.db", "optuna.db-journal", "optuna.db-wal", "optuna.db-shm", "report.html", "plots")


@dataclass(frozen=True)
class SweepStore:
    """Paths and atomic reads/writes of one sweep folder."""

    root: Path

    @property
    def record_file(self) -> Path:
        return self.root / SWEEP_RECORD

    @property
    def trials_file(self) -> Path:
        return self.root / "trials.jsonl"

    @property
    def summary_file(self) -> Path:
        return self.root / "summary.json"

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def clock_file(self) -> Path:
        return self.root / "wall.json"

    def run_dir(self, key: str) -> Path:
        """The normal run folder of one trial."""
        return self.root / "trials" / key

    def is_sweep(self) -> bool:
        """True when the folder holds a sweep record."""
        return self.record_file.is_file()

    def clear(self) -> None:
        """Remove the sweep's files (SWEEP_ENTRIES and their leftover temp files); a user's own files stay."""
        for name in SWEEP_ENTRIES:
            entry = self.root / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.exists() or entry.is_symlink():
                entry.unlink()
            for tmp in self.root.glob(f".{name}.*.tmp"):  # an atomic write cut off by a kill
                tmp.unlink(missing_ok=True)

    def read_record(self) -> dict[str, Any]:
        """The sweep.yaml mapping, or a clear error when the folder is not a sweep."""
        if not self.root.is_dir():
            if self.root.exists() and not self.root.is_symlink():
                raise UserError(f"{self.root}: is a file, not a sweep folder")
            raise UserError(not_found(self.root, "sweep folder"))
        if not self.is_sweep():
            raise UserError(f"{self.root}: not a decaylab sweep folder (no sweep.yaml)")
        try:
            data = yaml.safe_load(self.record_file.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            raise UserError(f"{self.record_file}: not valid YAML") from None
        if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
            raise UserError(f"{self.record_file}: not a sweep record of this decaylab version")
        return data

    def write_record(self, record: dict[str, Any]) -> None:
        """Write sweep.yaml atomically."""
        atomic_write_text(self.record_file, yaml.safe_dump(record, sort_keys=False, allow_unicode=True))

    def check_same(self, stored: dict[str, Any], new: dict[str, Any]) -> None:
        """Refuse to continue a sweep with settings other than the ones it started with."""
        difference = first_difference(stored, new)
        if difference is not None:
            where, old, now = difference
            raise UserError(f"{self.root}: this sweep was started with {where}={_show(old)}, not {_show(now)}; "
                            "resume it with its own settings (just --resume DIR) or start a new sweep elsewhere")

    def rows(self) -> list[dict[str, Any]]:
        """Every trials.jsonl row written so far (a partial last line, a write cut off, is left out)."""
        try:
            return read_jsonl(self.trials_file)
        except DamagedFile as exc:
            raise exc.saying("the sweep cannot go on with it; the trial run folders are not affected") from None

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        """Replace trials.jsonl atomically."""
        atomic_write_jsonl(self.trials_file, rows)

    def summary(self) -> dict[str, Any] | None:
        """summary.json, if written."""
        if not self.summary_file.is_file():
            return None
        try:
            data = json.loads(self.summary_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return None  # written again at the end of the sweep
        return data if isinstance(data, dict) else None

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Replace summary.json atomically."""
        atomic_write_json(self.summary_file, summary)


class SweepClock:
    """The sweep's wall time over all its invocations, so a resumed sweep counts the earlier ones too.

    `wall.json` holds the seconds of the invocations before this one and the start time of the one running. An
    invocation cut off by a kill never wrote its end: it ran until the last file it wrote in the sweep folder.
    """

    def __init__(self, store: SweepStore, started: float) -> None:
        """`started`: this invocation's time.perf_counter() at its start."""
        self.store, self.started = store, started
        self.earlier = self._earlier()
        self._write(self.earlier, time.time() - (time.perf_counter() - started))

    def _earlier(self) -> float:
        try:
            data = json.loads(self.store.clock_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            data = None
        if not isinstance(data, dict):  # a sweep from before wall.json: its last finished invocation, if any
            summary = self.store.summary() or {}
            return float(summary["wall_s"]) if _seconds(summary.get("wall_s")) else 0.0
        wall = float(data["wall_s"]) if _seconds(data.get("wall_s")) else 0.0
        if _seconds(data.get("started")):  # that invocation was cut off
            wall += max(0.0, last_write(self.store.root, skip=self.store.clock_file) - data["started"])
        return wall

    def _write(self, wall_s: float, running_since: float | None) -> None:
        atomic_write_json(self.store.clock_file, {"wall_s": wall_s, "started": running_since})

    def total(self) -> float:
        """Seconds over every invocation so far, this one included."""
        return self.earlier + time.perf_counter() - self.started

    def stop(self) -> float:
        """Record this invocation as finished; returns the total."""
        total = self.total()
        self._write(total, None)
        return total


def _seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def last_write(root: Path, skip: Path | None = None) -> float:
    """The newest modification time (seconds since the epoch) of any file under `root`."""
    newest = 0.0
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if path == skip:
                continue
            try:
                newest = max(newest, path.stat().st_mtime)
            except OSError:  # removed meanwhile (a temp file)
                continue
    return newest


def first_difference(old: Any, new: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """The dotted path and both values of the first place two JSON-like values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            found = first_difference(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
            if found is not None:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found = first_difference(a, b, f"{where}[{i}]")
            if found is not None:
                return found
        return None
    return None if old == new else (where or "(top level)", old, new)


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


class TrialBook:
    """The rows of trials.jsonl keyed by (trial, rung); every change rewrites the file atomically."""

    def __init__(self, store: SweepStore) -> None:
        self.store = store
        self.rows: dict[tuple[str, int | None], dict[str, Any]] = {
            (row["trial"], row.get("rung")): row for row in store.rows()}
        self.order: dict[str, int] = {}  # trial key -> position in the plan, so the file order is the plan's

    def plan(self, keys: list[str]) -> None:
        """Fix the file order of these trial keys (after any planned before)."""
        for key in keys:
            self.order.setdefault(key, len(self.order))

    def get(self, key: str, rung: int | None = None) -> dict[str, Any] | None:
        """The row of a trial (at a rung), if one was written."""
        return self.rows.get((key, rung))

    def record(self, row: dict[str, Any]) -> None:
        """Add or replace a row and rewrite trials.jsonl."""
        self.rows[(row["trial"], row.get("rung"))] = row
        ordered = sorted(self.rows.values(), key=lambda r: (r.get("rung") or 0, self.order.get(r["trial"], 10**9),
                                                             r["trial"]))
        self.store.write_rows(ordered)

    def all(self) -> list[dict[str, Any]]:
        """Every row, in file order."""
        return sorted(self.rows.values(), key=lambda r: (r.get("rung") or 0, self.order.get(r["trial"], 10**9),
                                                         r["trial"]))
