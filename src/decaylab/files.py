"""Atomic file writes (a reader or a resumed run never sees half a file) and tolerant JSONL reads."""

from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decaylab.errors import DamagedFile, WriteError

log = logging.getLogger(__name__)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def os_reason(exc: OSError) -> str:
    """The OS's words for an error (`No space left on device`), without the errno and the file name."""
    return exc.strerror or str(exc) or type(exc).__name__


def disk_full(exc: OSError) -> bool:
    """True for `No space left on device` and `Disk quota exceeded`."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temp file beside `path`, fsync it, then rename it over `path`.

    An OSError (disk full, permissions) raises WriteError naming `path`; the temp file is removed and whatever
    `path` held before is left untouched.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        write(tmp)
        # after `write`: mkstemp makes 0600, and a writer may replace the file with its own (0600 again); a run's
        # files should be as readable as any other file the user creates
        os.chmod(tmp, 0o666 & ~_UMASK)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise WriteError(f"could not write {path} ({os_reason(exc)})", full=disk_full(exc)) from exc
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes atomically."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: Path, data: Any) -> None:
    """Write pretty JSON atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically (the whole file is replaced)."""
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


@dataclass
class JsonlRows:
    """The rows of a JSONL file, and the line number of a partial last line that was left out (None if none)."""

    rows: list[dict[str, Any]]
    partial_line: int | None = None


def load_jsonl(path: Path) -> JsonlRows:
    """Every row of a JSONL file ([] when it does not exist).

    A last line without its newline that is not valid JSON is a write that was cut off (a kill, a full disk): it
    is left out and reported in `partial_line`. Any other line that is not a JSON object is damage: DamagedFile
    naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        return JsonlRows([])
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DamagedFile(path, f"unreadable: {os_reason(exc)}") from None
    lines = data.split(b"\n")
    rows: list[dict[str, Any]] = []
    partial = None
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        last = number == len(lines)  # the text after the final newline: the file does not end with one
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            if last:
                partial = number
                continue
            if isinstance(exc, json.JSONDecodeError):
                reason = f"not valid JSON: {exc.msg} at column {exc.colno}"
            else:
                reason = "not valid UTF-8" if isinstance(exc, UnicodeDecodeError) else f"not valid JSON: {exc}"
            raise DamagedFile(f"{path}:{number}", reason) from None
        if not isinstance(row, dict):
            raise DamagedFile(f"{path}:{number}", f"expected a JSON object, found {type(row).__name__}")
        rows.append(row)
    return JsonlRows(rows, partial)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON file's object (None when the file does not exist); an empty, cut-off or invalid one: DamagedFile."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DamagedFile(path, "not valid UTF-8") from None
    except OSError as exc:
        raise DamagedFile(path, f"unreadable: {os_reason(exc)}") from None
    if not text.strip():
        raise DamagedFile(path, "empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        cut = exc.pos >= len(text.rstrip())
        raise DamagedFile(path, "truncated" if cut else f"not valid JSON: {exc.msg} at line {exc.lineno} column "
                          f"{exc.colno}") from None
    if not isinstance(data, dict):
        raise DamagedFile(path, f"expected a JSON object, found {type(data).__name__}")
    return data


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All rows of a JSONL file ([] when it does not exist); a partial last line is left out with a warning."""
    content = load_jsonl(path)
    if content.partial_line is not None:
        log.warning("%s:%d: left out a partial last line (a write was cut off)", path, content.partial_line)
    return content.rows


def not_found(path: Path, what: str = "file") -> str:
    """The message for a path that is not there: `P: file not found`, or why it cannot be followed (a symlink
    loop, a broken symlink), so a loop is never reported as a missing file."""
    path = Path(path)
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path}: a symlink loop (too many levels of symbolic links)"
        if exc.errno == errno.ENOENT and path.is_symlink():
            return f"{path}: a broken symlink (to {os.readlink(path)}, which does not exist)"
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            return f"{path}: {what} not accessible ({os_reason(exc)})"
    return f"{path}: {what} not found"
