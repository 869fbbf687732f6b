"""Deterministic train/valid/test splits and k folds, decided by a hash of each example's key."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from decaylab.config import DataConfig
from decaylab.data.builtin import builtin_datasets, load_builtin, load_builtin_documents
from decaylab.data.io import Pair, read_pairs
from decaylab.data.text import read_documents
from decaylab.errors import UserError

log = logging.getLogger(__name__)


def unit_hash(key: str, salt: str = "split") -> float:
    """Map a key to [0, 1) stably across runs, machines and Python versions."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_pairs(pairs: Sequence[Pair], shares: tuple[float, float, float]) -> tuple[list[Pair], ...]:
    """Split by hash of each pair's key, so adding examples never moves existing ones."""
    train_cut, valid_cut = shares[0], shares[0] + shares[1]
    parts: tuple[list[Pair], list[Pair], list[Pair]] = ([], [], [])
    for pair in pairs:
        u = unit_hash(pair.key)
        parts[0 if u < train_cut else 1 if u < valid_cut else 2].append(pair)
    return parts


def kfold_indices(n: int, folds: int, seed: int) -> list[list[int]]:
    """Disjoint folds covering range(n), fixed by the seed (each index in exactly one fold)."""
    if folds < 2 or folds > n:
        raise UserError(f"folds: must be between 2 and the number of training examples ({n}), got {folds}")
    order = sorted(range(n), key=lambda i: unit_hash(str(i), salt=f"fold-{seed}"))
    return [sorted(order[k::folds]) for k in range(folds)]


@dataclass
class Splits:
    """The three splits of a run plus the fingerprint that identifies their exact contents."""

    train: list[Pair]
    valid: list[Pair]
    test: list[Pair]
    origin: str

    @property
    def fingerprint(self) -> str:
        """SHA-256 over every pair of every split, in order."""
        digest = hashlib.sha256()
        for name, part in (("train", self.train), ("valid", self.valid), ("test", self.test)):
            digest.update(f"\x00{name}\x00".encode())
            for pair in part:
                digest.update(f"{pair.source}\t{pair.target}\n".encode())
        return digest.hexdigest()

    def sizes(self) -> dict[str, int]:
        """Pair counts per split."""
        return {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}


def _keep(pair: Pair, cfg: DataConfig) -> bool:
    lengths = (len(pair.source.split()), len(pair.target.split()))
    if min(lengths) < cfg.min_words:
        return False
    return cfg.max_words is None or max(lengths) <= cfg.max_words


def _cap(pairs: list[Pair], limit: int | None, salt: str) -> list[Pair]:
    """At most `limit` pairs, chosen by hash (a stable subset, not the file's first lines)."""
    if limit is None or len(pairs) <= limit:
        return pairs
    chosen = sorted(pairs, key=lambda p: unit_hash(p.key, salt))[:limit]
    keys = {id(p) for p in chosen}
    return [p for p in pairs if id(p) in keys]


def documents_as_pairs(documents: list[str]) -> list[Pair]:
    """A language model's documents in the pair shape every split, fold and cap works on: no source, the text as
    target, keyed by the text (so identical documents always share a split)."""
    return [Pair("", text, text) for text in documents]


def _load_text(cfg: DataConfig) -> tuple[list[Pair], list[Pair], list[Pair], str]:
    """The documents of `data.name` (a builtin text corpus or a file) split by hash, or the three given files."""
    def read(name: str) -> list[Pair]:
        return documents_as_pairs(read_documents(Path(name), cfg.max_line_chars))

    if cfg.valid_file or cfg.test_file:
        if not (cfg.valid_file and cfg.test_file):
            raise UserError("data.valid_file and data.test_file: give both, or neither (then the file is split)")
        return (read(cfg.name), read(cfg.valid_file), read(cfg.test_file),
                f"files {cfg.name}, {cfg.valid_file}, {cfg.test_file}")
    builtin = builtin_datasets().get(cfg.name)
    if builtin is not None:
        pairs, origin = documents_as_pairs(load_builtin_documents(cfg.name)), f"builtin {cfg.name}"
    else:
        pairs, origin = read(cfg.name), f"file {cfg.name}"
    return (*split_pairs(pairs, cfg.split), origin)


def load_splits(cfg: DataConfig) -> Splits:
    """Resolve `data.name` (builtin or file), filter by length, split and cap each split."""
    if cfg.kind == "text" or (cfg.kind is None and _builtin_kind(cfg.name) == "text"):
        return _finish(*_load_text(cfg), cfg, text=True)
    read = {"fmt": cfg.format, "max_line_chars": cfg.max_line_chars, "on_bad_line": cfg.on_bad_line}
    if cfg.valid_file or cfg.test_file:
        if not (cfg.valid_file and cfg.test_file):
            raise UserError("data.valid_file and data.test_file: give both, or neither (then the file is split)")
        train = read_pairs(Path(cfg.name), **read)
        valid = read_pairs(Path(cfg.valid_file), **read)
        test = read_pairs(Path(cfg.test_file), **read)
        origin = f"files {cfg.name}, {cfg.valid_file}, {cfg.test_file}"
    else:
        if cfg.name in builtin_datasets():
            pairs, origin = load_builtin(cfg.name), f"builtin {cfg.name}"
        elif Path(cfg.name).suffix or Path(cfg.name).exists() or Path(cfg.name).is_symlink() or "/" in cfg.name:
            pairs, origin = read_pairs(Path(cfg.name), **read), f"file {cfg.name}"
        else:
            known = ", ".join(sorted(builtin_datasets())) or "(none installed)"
            raise UserError(f"data.name: {cfg.name!r} is neither a builtin dataset ({known}) nor a file")
        train, valid, test = split_pairs(pairs, cfg.split)
    return _finish(train, valid, test, origin, cfg, text=False)


def _builtin_kind(name: str) -> str:
    """"text" or "pairs" for a builtin dataset; "pairs" for anything else (a file is read as pairs by default)."""
    info = builtin_datasets().get(name)
    return info.kind if info is not None else "pairs"


def _finish(train: list[Pair], valid: list[Pair], test: list[Pair], origin: str, cfg: DataConfig,
            text: bool) -> Splits:
    """Length-filter the pairs (not documents), cap each split, and refuse an empty training or validation split."""
    if not text:
        before = len(train) + len(valid) + len(test)
        train, valid, test = ([p for p in part if _keep(p, cfg)] for part in (train, valid, test))
        dropped = before - len(train) - len(valid) - len(test)
        if dropped:
            log.info("length filter (data.min_words/max_words) dropped %d of %d pairs", dropped, before)
    train = _cap(train, cfg.max_examples, "cap-train")
    valid = _cap(valid, cfg.max_valid_examples, "cap-valid")
    test = _cap(test, cfg.max_test_examples, "cap-test")
    unit = "documents" if text else "pairs"
    if not train:
        raise UserError(f"{origin}: the training split is empty after filtering (check data.min_words/max_words)")
    if not valid:
        raise UserError(f"{origin}: the validation split is empty; give more {unit} or a larger data.split share")
    return Splits(train, valid, test, origin)
