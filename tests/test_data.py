"""User data files: every kind of bad line is reported with file and line; splits and folds are deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from decaylab.config import DataConfig
from decaylab.data import Pair, kfold_indices, load_splits, read_pairs, split_pairs
from decaylab.data.batching import bucket_batches, collate
from decaylab.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from decaylab.errors import UserError


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_reads_tsv_and_normalizes_whitespace(tmp_path: Path) -> None:
    path = write(tmp_path / "p.tsv", "a  b\tc\n\nd\t e f \n")
    assert [(p.source, p.target) for p in read_pairs(path)] == [("a b", "c"), ("d", "e f")]


def test_reads_jsonl(tmp_path: Path) -> None:
    path = write(tmp_path / "p.jsonl", json.dumps({"source": "hola", "target": "hello"}) + "\n")
    assert read_pairs(path)[0].target == "hello"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.tsv: file not found"):
        read_pairs(tmp_path / "nope.tsv")


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"empty\.tsv: no pairs found"):
        read_pairs(write(tmp_path / "empty.tsv", ""))


def test_wrong_column_count_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "p.tsv", "a\tb\nc\td\te\n")
    with pytest.raises(UserError, match=r"p\.tsv:2: expected 2 tab-separated columns .* found 3"):
        read_pairs(path)


def test_invalid_utf8_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "p.tsv", b"a\tb\nc\t\xff\xfe\n")
    with pytest.raises(UserError, match=r"p\.tsv:2: not valid UTF-8"):
        read_pairs(path)


def test_line_too_long(tmp_path: Path) -> None:
    path = write(tmp_path / "p.tsv", "a\tb\n" + "x" * 50 + "\ty\n")
    with pytest.raises(UserError, match=r"p\.tsv:2: line has 52 characters, over data\.max_line_chars=20"):
        read_pairs(path, max_line_chars=20)


def test_bad_json_line(tmp_path: Path) -> None:
    path = write(tmp_path / "p.jsonl", '{"source": "a", "target": "b"}\n{"source": 1}\n')
    with pytest.raises(UserError, match=r"p\.jsonl:2: expected an object"):
        read_pairs(path)


def test_skip_policy_counts_bad_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "p.tsv", b"a\tb\nbroken\nc\t\xff\nd\te\n")
    pairs = read_pairs(path, on_bad_line="skip")
    assert [p.source for p in pairs] == ["a", "d"]
    assert "skipped 2 bad line(s)" in caplog.text


def test_unknown_suffix_is_explained(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot tell the format"):
        read_pairs(write(tmp_path / "p.csv", "a,b\n"))


def test_unknown_dataset_name() -> None:
    with pytest.raises(UserError, match="data.name: 'no-such-data' is neither a builtin dataset"):
        load_splits(DataConfig(name="no-such-data"))


def test_split_is_stable_when_lines_are_added() -> None:
    pairs = [Pair(f"s{i}", f"t{i}", f"s{i}\tt{i}") for i in range(2000)]
    before = split_pairs(pairs, (0.9, 0.05, 0.05))
    after = split_pairs(pairs + [Pair(f"n{i}", f"m{i}", f"n{i}\tm{i}") for i in range(500)], (0.9, 0.05, 0.05))
    for old, new in zip(before, after, strict=True):
        assert set(old) <= set(new)
    assert 0.85 < len(before[0]) / 2000 < 0.95


def test_separate_files_and_length_filters(tmp_path: Path) -> None:
    train = write(tmp_path / "train.tsv", "a b\tc\none two three four\tx\n")
    valid = write(tmp_path / "valid.tsv", "v\tw\n")
    test = write(tmp_path / "test.tsv", "t\tu\n")
    splits = load_splits(DataConfig(name=str(train), valid_file=str(valid), test_file=str(test), max_words=3))
    assert splits.sizes() == {"train": 1, "valid": 1, "test": 1}
    with pytest.raises(UserError, match="give both, or neither"):
        load_splits(DataConfig(name=str(train), valid_file=str(valid)))


def test_max_examples_and_fingerprint(tmp_path: Path) -> None:
    path = write(tmp_path / "p.tsv", "".join(f"s{i}\tt{i}\n" for i in range(300)))
    full = load_splits(DataConfig(name=str(path)))
    capped = load_splits(DataConfig(name=str(path), max_examples=50))
    assert len(capped.train) == 50 and set(capped.train) <= set(full.train)
    assert capped.fingerprint != full.fingerprint
    assert load_splits(DataConfig(name=str(path), max_examples=50)).fingerprint == capped.fingerprint


def test_kfold_is_deterministic_disjoint_and_complete() -> None:
    folds = kfold_indices(103, 5, seed=1)
    assert folds == kfold_indices(103, 5, seed=1)
    assert folds != kfold_indices(103, 5, seed=2)
    flat = sorted(i for fold in folds for i in fold)
    assert flat == list(range(103))
    assert {len(f) for f in folds} <= {20, 21}
    with pytest.raises(UserError, match="folds"):
        kfold_indices(3, 5, seed=0)


def test_buckets_cover_every_example_once_within_budget() -> None:
    lengths = [(i % 17 + 1, (i * 7) % 23 + 1) for i in range(1000)]
    batches = bucket_batches(lengths, batch_tokens=200, max_batch_size=64, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    for batch in batches:
        longest = max(max(lengths[i]) for i in batch)
        assert len(batch) == 1 or longest * len(batch) <= 200
    assert batches == bucket_batches(lengths, 200, 64, seed=3)
    assert batches != bucket_batches(lengths, 200, 64, seed=4)


def test_collate_shifts_target_and_pads() -> None:
    batch = collate([[5, 6, EOS_ID], [7, EOS_ID]], [[8, EOS_ID], [9, 10, 11, EOS_ID]])
    assert batch.tgt_in.tolist() == [[BOS_ID, 8, PAD_ID, PAD_ID], [BOS_ID, 9, 10, 11]]
    assert batch.tgt_out.tolist() == [[8, EOS_ID, PAD_ID, PAD_ID], [9, 10, 11, EOS_ID]]
    assert batch.src.tolist() == [[5, 6, EOS_ID], [7, EOS_ID, PAD_ID]]
    assert batch.n_tokens == 6
