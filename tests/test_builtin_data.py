"""The shipped datasets: expected counts, checksums that match, splits that are fixed and disjoint, kinds kept apart."""

from __future__ import annotations

import hashlib
import json
import lzma
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from decaylab.cli import app
from decaylab.config import DataConfig
from decaylab.data import builtin
from decaylab.data.builtin import BUILTIN_DIR, builtin_datasets, load_builtin, load_builtin_documents, sha256_file
from decaylab.data.splits import load_splits
from decaylab.errors import UserError

EXPECTED_PAIRS = {"bible-en-es": 30865, "bible-kjv-web": 31095}
#: documents, characters (the documents' characters, separators not counted)
EXPECTED_TEXT = {"austen-novels": (9992, 3990104), "shakespeare-plays": (30954, 4612820)}


def test_every_builtin_dataset_is_registered_with_its_kind() -> None:
    datasets = builtin_datasets()
    assert {name: info.pairs for name, info in datasets.items() if info.kind == "pairs"} == EXPECTED_PAIRS
    assert {name: (info.documents, info.characters) for name, info in datasets.items()
            if info.kind == "text"} == EXPECTED_TEXT
    for info in datasets.values():
        assert info.file == info.name + (".tsv.xz" if info.kind == "pairs" else ".txt.xz")
        assert info.licence == "Public domain" and info.packages and info.description
        assert info.path.stat().st_size < 3_000_000  # a few MB at most


def test_sha256sums_file_matches_the_shipped_files() -> None:
    by_file = {info.file: info for info in builtin_datasets().values()}
    listed = set()
    for line in (BUILTIN_DIR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert sha256_file(BUILTIN_DIR / name) == digest
        assert by_file[name].sha256 == digest
        listed.add(name)
    assert listed == set(by_file)


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


@pytest.mark.parametrize("name", sorted(EXPECTED_TEXT))
def test_text_corpus_matches_its_checksum_and_counts(name: str) -> None:
    info = builtin_datasets()[name]
    assert info.kind == "text" and info.language == "en" and info.pairs is None
    assert sha256_file(info.path) == info.sha256
    raw = lzma.decompress(info.path.read_bytes()).decode("utf-8")
    assert raw.endswith("\n") and not raw.endswith("\n\n") and not raw.startswith("\n")
    assert "\r" not in raw and "\t" not in raw
    documents = load_builtin_documents(name)
    assert (len(documents), sum(map(len, documents))) == EXPECTED_TEXT[name] == (info.documents, info.characters)
    assert "\n\n".join(documents) + "\n" == raw
    for document in documents:
        assert document and document == document.strip()
        assert all(line.strip() for line in document.split("\n"))  # no blank line inside a document
        assert not re.search(r"[_*#\\<>]", document)  # no markup left


def test_text_corpora_start_where_the_works_start() -> None:
    austen = load_builtin_documents("austen-novels")
    assert austen[0].startswith("The family of Dashwood had long been settled in Sussex.")
    assert "\n" not in austen[0]  # prose paragraphs are unwrapped
    plays = load_builtin_documents("shakespeare-plays")
    assert plays[0].startswith("THESEUS:\nNow, fair Hippolyta, our nuptial hour\n")
    assert all(re.match(r"[^\n]+:\n", document) for document in plays)  # every speech names its speaker


def test_kinds_are_refused_across() -> None:
    with pytest.raises(UserError, match="'austen-novels' holds plain-text documents \\(kind text\\)") as text_err:
        load_builtin("austen-novels")
    with pytest.raises(UserError, match="'bible-en-es' holds source/target pairs \\(kind pairs\\)") as pair_err:
        load_builtin_documents("bible-en-es")
    assert "\n" not in str(text_err.value) + str(pair_err.value)
    with pytest.raises(UserError, match="kind text.*it trains model.arch=decoder"):
        load_splits(DataConfig(name="shakespeare-plays", kind="pairs"))  # what an encoder-decoder's config asks
    assert load_splits(DataConfig(name="shakespeare-plays")).train[0].source == ""  # no kind: the dataset's own


def test_a_damaged_text_corpus_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for path in BUILTIN_DIR.iterdir():
        if path.suffix != ".xz" or path.name.startswith("austen"):
            shutil.copy(path, tmp_path / path.name)
    blob = bytearray((tmp_path / "austen-novels.txt.xz").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tmp_path / "austen-novels.txt.xz").write_bytes(bytes(blob))
    monkeypatch.setattr(builtin, "BUILTIN_DIR", tmp_path)
    builtin.builtin_datasets.cache_clear()
    try:
        with pytest.raises(UserError, match="checksum mismatch"):
            load_builtin_documents("austen-novels")
    finally:
        builtin.builtin_datasets.cache_clear()


def test_datasets_json_entries_without_a_kind_hold_pairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = json.loads((BUILTIN_DIR / "datasets.json").read_text())
    for entry in index.values():
        entry.pop("kind")
    (tmp_path / "datasets.json").write_text(json.dumps(index))
    monkeypatch.setattr(builtin, "BUILTIN_DIR", tmp_path)
    builtin.builtin_datasets.cache_clear()
    try:
        assert {info.kind for info in builtin.builtin_datasets().values()} == {"pairs"}
    finally:
        builtin.builtin_datasets.cache_clear()


def test_data_list_shows_both_kinds() -> None:
    result = CliRunner().invoke(app, ["data", "list"])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 2}
    assert "text" in rows["austen-novels"] and "9992 documents" in rows["austen-novels"]
    assert "text" in rows["shakespeare-plays"] and "30954 documents" in rows["shakespeare-plays"]
    assert "pairs" in rows["bible-en-es"] and "30865 pairs" in rows["bible-en-es"]


def test_data_show_and_export_a_text_corpus(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "show", "austen-novels", "-n", "2"])
    assert result.exit_code == 0, result.output
    assert "9992 documents" in result.output and "The family of Dashwood" in result.output
    result = CliRunner().invoke(app, ["data", "show", "austen-novels", "--split", "valid"])
    assert isinstance(result.exception, UserError) and "text corpus" in str(result.exception)
    out = tmp_path / "plays.txt"
    result = CliRunner().invoke(app, ["data", "export", "shakespeare-plays", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8").removesuffix("\n").split("\n\n") == load_builtin_documents(
        "shakespeare-plays")
