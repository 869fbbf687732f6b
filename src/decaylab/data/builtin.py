"""The registry of datasets shipped inside the package (built by scripts/build_*.py; see PROVENANCE.md).

Two kinds: ``pairs`` (source/target translation pairs, ``<name>.tsv.xz``) and ``text`` (plain-text documents for
language modelling, ``<name>.txt.xz``: documents separated by one blank line).
"""

from __future__ import annotations

import hashlib
import json
import lzma
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from decaylab.data.io import Pair
from decaylab.errors import UserError

BUILTIN_DIR = Path(str(resources.files("decaylab") / "data" / "builtin"))

Kind = Literal["pairs", "text"]
KINDS: tuple[Kind, ...] = ("pairs", "text")
#: What each kind holds, as the errors and `decaylab data list` say it.
KIND_WORDS: dict[Kind, str] = {"pairs": "source/target pairs", "text": "plain-text documents"}


@dataclass(frozen=True)
class BuiltinInfo:
    """What `decaylab data list` shows about one builtin dataset (the fields of the other kind are None)."""

    name: str
    file: str
    sha256: str
    licence: str
    description: str
    packages: tuple[dict[str, str], ...]
    kind: Kind = "pairs"
    # kind "pairs"
    pairs: int | None = None
    source_lang: str | None = None
    target_lang: str | None = None
    source_name: str | None = None
    target_name: str | None = None
    # kind "text"
    documents: int | None = None
    characters: int | None = None
    language: str | None = None

    @property
    def path(self) -> Path:
        """Location of the compressed file inside the installed package."""
        return BUILTIN_DIR / self.file

    @property
    def size(self) -> str:
        """How big it is, in the units of its kind (``30865 pairs``, ``9992 documents, 3990104 characters``)."""
        if self.kind == "text":
            return f"{self.documents} documents, {self.characters} characters"
        return f"{self.pairs} pairs"


@cache
def builtin_datasets() -> dict[str, BuiltinInfo]:
    """All builtin datasets by name, from the shipped `datasets.json` (an entry without a kind holds pairs)."""
    index = BUILTIN_DIR / "datasets.json"
    if not index.is_file():
        return {}
    raw: dict[str, dict[str, Any]] = json.loads(index.read_text(encoding="utf-8"))
    fields = BuiltinInfo.__dataclass_fields__
    datasets = {}
    for name, entry in raw.items():
        if entry.get("kind", "pairs") not in KINDS:
            raise UserError(f"{index}: dataset {name!r} has kind {entry['kind']!r}; known kinds: {', '.join(KINDS)}")
        values = {k: (tuple(v) if k == "packages" else v) for k, v in entry.items() if k in fields}
        datasets[name] = BuiltinInfo(name=name, **values)
    return datasets


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


def _checked(name: str, kind: Kind, verify: bool) -> BuiltinInfo:
    """A builtin dataset of the given kind, its shipped checksum verified; another kind is a one-line error."""
    info = get_builtin(name)
    if info.kind != kind:
        model = "model.arch=decoder" if info.kind == "text" else "model.arch=rnn or transformer"
        raise UserError(f"data.name: builtin dataset {name!r} holds {KIND_WORDS[info.kind]} (kind {info.kind}), "
                        f"not {KIND_WORDS[kind]}; it trains {model}")
    if verify and sha256_file(info.path) != info.sha256:
        raise UserError(f"{info.path}: checksum mismatch; the installed data file is damaged, reinstall decaylab")
    return info


def load_builtin(name: str, verify: bool = True) -> list[Pair]:
    """All pairs of a builtin pair dataset, keyed by verse id, after checking the shipped checksum."""
    info = _checked(name, "pairs", verify)
    with lzma.open(info.path, "rt", encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle]
    return [Pair(source, target, key) for key, source, target in rows]


def load_builtin_documents(name: str, verify: bool = True) -> list[str]:
    """All documents of a builtin text corpus, in order, after checking the shipped checksum."""
    info = _checked(name, "text", verify)
    with lzma.open(info.path, "rt", encoding="utf-8", newline="") as handle:
        text = handle.read()
    return text.removesuffix("\n").split("\n\n") if text.strip() else []
