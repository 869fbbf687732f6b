"""The sweep folder: sweep.yaml (what was asked), trials.jsonl, summary.json, shared/, trials/, final/."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from decaylab.errors import UserError
from decaylab.files import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl
from decaylab.runfolder.layout import SWEEP_RECORD

RECORD_VERSION = 1
# What a sweep and its report write into its folder; `--overwrite` removes these and only these.
SWEEP_ENTRIES = (SWEEP_RECORD, "trials.jsonl", "summary.json", "shared", "trials", "final", "final.new", "optuna.db",
                 "optuna.db-journal", "optuna.db-wal", "optuna.db-shm", "report.html", "plots")


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
            if self.root.exists():
                raise UserError(f"{self.root}: is a file, not a sweep folder")
            raise UserError(f"{self.root}: sweep folder not found")
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
        """Every trials.jsonl row written so far."""
        return read_jsonl(self.trials_file)

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        """Replace trials.jsonl atomically."""
        atomic_write_jsonl(self.trials_file, rows)

    def summary(self) -> dict[str, Any] | None:
        """summary.json, if written."""
        if not self.summary_file.is_file():
            return None
        return json.loads(self.summary_file.read_text(encoding="utf-8"))

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Replace summary.json atomically."""
        atomic_write_json(self.summary_file, summary)


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
