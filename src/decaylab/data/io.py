"""Reading parallel text from TSV and JSONL files, with file:line errors and a bad-line policy."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from decaylab.errors import UserError
from decaylab.files import not_found

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    """One source/target example; `key` identifies it for deterministic splitting."""

    source: str
    target: str
    key: str = ""


def detect_format(path: Path, fmt: str = "auto") -> Literal["tsv", "jsonl"]:
    """Pick the reader from the explicit format or the file suffix."""
    if fmt != "auto":
        return fmt  # type: ignore[return-value]
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".json", ".ndjson"}:
        return "jsonl"
    if suffix in {".tsv", ".txt", ".tab"}:
        return "tsv"
    raise UserError(f"{path}: cannot tell the format from the suffix {suffix!r}; "
                    "use .tsv or .jsonl, or set data.format to 'tsv' or 'jsonl'")


def _parse_line(text: str, fmt: str) -> tuple[str, str]:
    """Parse one decoded line into (source, target) or raise ValueError saying why not."""
    if fmt == "tsv":
        columns = text.split("\t")
        if len(columns) != 2:
            raise ValueError(f"expected 2 tab-separated columns (source<TAB>target), found {len(columns)}")
        source, target = columns
    else:
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("source"), str) \
                or not isinstance(record.get("target"), str):
            raise ValueError('expected an object with string fields "source" and "target"')
        source, target = record["source"], record["target"]
    if "\x00" in source or "\x00" in target:
        raise ValueError("source or target contains a NUL character")
    source, target = " ".join(source.split()), " ".join(target.split())
    if not source or not target:
        raise ValueError("empty source or target")
    return source, target


def read_pairs(
    path: Path,
    fmt: str = "auto",
    max_line_chars: int = 10_000,
    on_bad_line: Literal["error", "skip"] = "error",
) -> list[Pair]:
    """Read every pair of a user file; bad lines raise UserError (file:line: why) or are skipped and counted."""
    path = Path(path)
    if not path.exists():
        raise UserError(not_found(path))
    if not path.is_file():
        raise UserError(f"{path}: not a regular file")
    kind = detect_format(path, fmt)
    pairs: list[Pair] = []
    skipped = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
                if number == 1:
                    text = text.removeprefix("\ufeff")
                if not text.strip():
                    continue
                if "\x00" in text:
                    raise ValueError(f"contains a NUL byte (character {text.index(chr(0)) + 1}); is this a text file?")
                if len(text) > max_line_chars:
                    raise ValueError(f"line has {len(text)} characters, over data.max_line_chars={max_line_chars}")
                source, target = _parse_line(text, kind)
            except UnicodeDecodeError as exc:
                reason = f"not valid UTF-8 (byte {exc.start})"
            except ValueError as exc:
                reason = str(exc)
            else:
                pairs.append(Pair(source, target, f"{source}\t{target}"))
                continue
            if on_bad_line == "error":
                raise UserError(f"{path}:{number}: {reason} (set data.on_bad_line=skip to skip such lines)")
            skipped += 1
    if skipped:
        log.warning("%s: skipped %d bad line(s) (data.on_bad_line=skip)", path, skipped)
    if not pairs:
        raise UserError(f"{path}: no pairs found (the file is empty or every line was bad)")
    return pairs
