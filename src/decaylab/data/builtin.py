"""The registry of datasets shipped inside the package (built by scripts/build_bible_datasets.py)."""

from __future__ import annotations

import hashlib
import json
import lzma
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from decaylab.data.io import Pair
from decaylab.errors import UserError

BUILTIN_DIR = Path(str(resources.files("decaylab") / "data" / "builtin"))


@dataclass(frozen=True)
class BuiltinInfo:
    """What `decaylab data list` shows about one builtin dataset."""

    name: str
    file: str
    pairs: int
    sha256: str
    source_lang: str
    target_lang: str
    source_name: str
    target_name: str
    licence: str
    description: str
    packages: tuple[dict[str, str], ...]

    @property
    def path(self) -> Path:
        """Location of the compressed TSV inside the installed package."""
        return BUILTIN_DIR / self.file


@cache
def builtin_datasets() -> dict[str, BuiltinInfo]:
    """All builtin datasets by name, from the shipped `datasets.json`."""
    index = BUILTIN_DIR / "datasets.json"
    if not index.is_file():
        return {}
    raw: dict[str, dict[str, Any]] = json.loads(index.read_text(encoding="utf-8"))
    fields = BuiltinInfo.__dataclass_fields__
    return {
        name: BuiltinInfo(name=name, **{k: (tuple(v) if k == "packages" else v)
                                        for k, v in entry.items() if k in fields})
        for name, entry in raw.items()
    }


def get_builtin(name: str) -> BuiltinInfo:
    """Look up a builtin dataset, or fail naming the ones that exist."""
    datasets = builtin_datasets()
    if name not in datasets:
        known = ", ".join(sorted(datasets)) or "(none installed)"
        raise UserError(f"data.name: unknown dataset {name!r} and no such file; builtin datasets: {known}")
    return datasets[name]


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_builtin(name: str, verify: bool = True) -> list[Pair]:
    """All pairs of a builtin dataset, keyed by verse id, after checking the shipped checksum."""
    info = get_builtin(name)
    if verify and sha256_file(info.path) != info.sha256:
        raise UserError(f"{info.path}: checksum mismatch; the installed data file is damaged, reinstall decaylab")
    with lzma.open(info.path, "rt", encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle]
    return [Pair(source, target, key) for key, source, target in rows]
