"""The shipped datasets: expected pair counts, checksums that match, splits that are fixed and disjoint."""

from __future__ import annotations

import hashlib

import pytest

from decaylab.config import DataConfig
from decaylab.data.builtin import BUILTIN_DIR, builtin_datasets, load_builtin, sha256_file
from decaylab.data.splits import load_splits

EXPECTED_PAIRS = {"bible-en-es": 30865, "bible-kjv-web": 31095}


def test_both_bible_datasets_are_registered() -> None:
    assert {name: info.pairs for name, info in builtin_datasets().items()} == EXPECTED_PAIRS


def test_sha256sums_file_matches_the_shipped_files() -> None:
    for line in (BUILTIN_DIR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert sha256_file(BUILTIN_DIR / name) == digest
        assert builtin_datasets()[name.removesuffix(".tsv.xz")].sha256 == digest


@pytest.mark.parametrize("name", sorted(EXPECTED_PAIRS))
def test_builtin_loads_clean_pairs(name: str) -> None:
    pairs = load_builtin(name)
    assert len(pairs) == EXPECTED_PAIRS[name]
    assert len({p.key for p in pairs}) == len(pairs)  # verse ids are unique
    assert pairs[0].key == "Gen.1.1" and pairs[-1].key.startswith("Rev.22.")
    for pair in pairs[:: len(pairs) // 200]:
        assert pair.source and pair.target
        assert "<" not in pair.source + pair.target and "¶" not in pair.source + pair.target


def test_builtin_splits_are_fixed_and_disjoint() -> None:
    splits = load_splits(DataConfig(name="bible-en-es"))
    sizes = splits.sizes()
    assert sum(sizes.values()) == EXPECTED_PAIRS["bible-en-es"]
    assert 0.88 < sizes["train"] / EXPECTED_PAIRS["bible-en-es"] < 0.92
    keys = [{p.key for p in part} for part in (splits.train, splits.valid, splits.test)]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    digest = hashlib.sha256("".join(sorted(keys[2])).encode()).hexdigest()
    again = load_splits(DataConfig(name="bible-en-es"))
    assert hashlib.sha256("".join(sorted(p.key for p in again.test)).encode()).hexdigest() == digest
