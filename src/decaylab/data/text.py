"""Reading plain text for language modelling: documents from .txt (optionally .gz/.xz) or JSONL {"text": ...}.

In a text file a document is a run of lines ended by a blank line (a paragraph, a speech, a stanza); single line
breaks inside it are kept. In JSONL each line is one document, its "text" field. Every problem is one line naming
the file (and the line): a missing file, a file that is not text (NUL bytes), invalid UTF-8, a damaged archive, a
file without any text.
"""

from __future__ import annotations

import gzip
import json
import lzma
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from decaylab.errors import UserError
from decaylab.files import not_found

JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
ARCHIVES = {".gz": gzip.open, ".xz": lzma.open}


def _inner_suffix(path: Path) -> str:
    """The suffix that says the format, behind a .gz/.xz one (corpus.jsonl.gz -> .jsonl)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in ARCHIVES:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _open(path: Path) -> BinaryIO:
    """The file's bytes, decompressed when its suffix is .gz or .xz."""
    opener = ARCHIVES.get(path.suffix.lower())
    return opener(path, "rb") if opener is not None else path.open("rb")  # type: ignore[return-value]


def _lines(path: Path, max_line_chars: int) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line, checked: UTF-8, no NUL byte, not longer than `max_line_chars`."""
    try:
        with _open(path) as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    text = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as exc:
                    raise UserError(f"{path}:{number}: not valid UTF-8 (byte {exc.start}); is this a text file?"
                                    ) from None
                if number == 1:
                    text = text.removeprefix("\ufeff")
                if "\x00" in text:
                    raise UserError(f"{path}:{number}: contains a NUL byte; is this a text file?")
                if len(text) > max_line_chars:
                    raise UserError(f"{path}:{number}: line has {len(text):,} characters, over "
                                    f"data.max_line_chars={max_line_chars:,}")
                yield number, text
    except (OSError, EOFError, lzma.LZMAError) as exc:
        kind = path.suffix.lower().lstrip(".")
        raise UserError(f"{path}: cannot read it as a {kind} file ({exc})") from None


def _text_documents(path: Path, max_line_chars: int) -> list[str]:
    """Blank-line-separated documents; trailing spaces of each line dropped."""
    documents, current = [], []
    for _, line in _lines(path, max_line_chars):
        if line.strip():
            current.append(line.rstrip())
        elif current:
            documents.append("\n".join(current))
            current = []
    if current:
        documents.append("\n".join(current))
    return documents


def _jsonl_documents(path: Path, max_line_chars: int) -> list[str]:
    """The "text" field of each JSON line (blank lines skipped)."""
    documents = []
    for number, line in _lines(path, max_line_chars):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise UserError(f'{path}:{number}: expected an object with a string field "text"')
        text = record["text"].strip()
        if "\x00" in text:
            raise UserError(f"{path}:{number}: the text contains a NUL character")
        if text:
            documents.append(text)
    return documents


def read_documents(path: Path, max_line_chars: int = 100_000) -> list[str]:
    """Every document of a plain-text or JSONL file (see the module docstring); never an empty list."""
    path = Path(path)
    if not path.exists():
        raise UserError(not_found(path, "text file"))
    if not path.is_file():
        raise UserError(f"{path}: not a regular file")
    if _inner_suffix(path) in JSONL_SUFFIXES:
        documents = _jsonl_documents(path, max_line_chars)
    else:
        documents = _text_documents(path, max_line_chars)
    if not documents:
        raise UserError(f"{path}: no text found (the file is empty or holds only blank lines)")
    return documents
