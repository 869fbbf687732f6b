"""One owner per run or sweep folder: an exclusive `flock` on `FOLDER/.lock`, released when the process ends.

The lock lives on the lock file's inode, so the file is never removed or replaced (a rename would hand a second
process a fresh, unlocked inode); it is the one file written in place, and its text (PID, host, command, start
time) only names the holder in the refusal a second process gets. The kernel drops the lock when the holder's
descriptor closes, whatever ends the process (SIGKILL included), so a lock is never stale.

Within one process the lock is re-entrant: `decaylab train` holds its folder and the Trainer inside takes it
again; the folder is released when the last holder lets go.
"""

from __future__ import annotations

import errno
import fcntl
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from decaylab.errors import UserError

LOCK_FILE = ".lock"
RETRY_S = 0.5  # how long a refused acquisition keeps trying before it names the holder

_GUARD = threading.Lock()


@dataclass
class _Held:
    fd: int
    text: str  # what this process wrote into the lock file
    count: int = 1  # holders in this process


_HELD: dict[str, _Held] = {}  # lock file path (resolved) -> this process's hold


class FolderInUse(UserError):
    """Another process holds the folder's lock."""


@dataclass(frozen=True)
class Holder:
    """What a lock file says about the process that holds it."""

    pid: int | None
    host: str
    command: str
    since: str  # local time, "%Y-%m-%d %H:%M:%S"

    def describe(self) -> str:
        """`decaylab train (PID 1234 on host, since 12:01:05)`."""
        since = self.since
        if since.startswith(time.strftime("%Y-%m-%d ")):
            since = since[11:]  # today: the time is enough
        pid = f"PID {self.pid}" if self.pid is not None else "PID unknown"
        return f"{_short(self.command) or 'another process'} ({pid} on {self.host or 'an unknown host'}, " \
               f"since {since or 'an unknown time'})"


def folder_problem(path: Path) -> str | None:
    """Why `path` cannot be (or become) a folder: a file in its place or above it; None when it can. Writes nothing."""
    path = Path(path)
    if path.is_dir():
        return None
    if path.exists() or path.is_symlink():
        kind = "a file" if path.exists() else "a broken symbolic link"
        return f"{path}: is {kind}, not a folder"
    for parent in path.parents:
        if parent.is_dir():
            return None
        if parent.exists() or parent.is_symlink():
            return f"{path}: {parent} is a file, not a folder"
    return None


def make_folder(path: Path) -> Path:
    """Create `path` (and its parents) as a folder, or say in one line why it cannot be one."""
    path = Path(path)
    problem = folder_problem(path)
    if problem is None:
        try:
            path.mkdir(parents=True, exist_ok=True)
            return path
        except (FileExistsError, NotADirectoryError):  # a file appeared in the way since the check
            problem = folder_problem(path) or f"{path}: cannot create the folder (a file is in the way)"
        except PermissionError:
            problem = f"{path}: cannot create the folder (permission denied)"
    raise UserError(problem)


def command_line() -> str:
    """This process's command, with a decaylab entry point (`decaylab`, `python -m decaylab.cli`) as `decaylab`."""
    argv = list(sys.argv) or ["python"]
    program = Path(argv[0])
    package = Path(__file__).resolve().parents[1]
    if program.name == "decaylab" or (program.suffix == ".py" and package in program.resolve().parents):
        argv[0] = "decaylab"
    elif argv[0] in ("-c", ""):
        argv[0] = "python " + (argv[0] or "")
    else:
        argv[0] = program.name
    return " ".join(argv).strip()


def _short(command: str) -> str:
    """`decaylab train` of a decaylab command line, another program's first two words."""
    return " ".join(command.split()[:2])[:60]


def _holder_text() -> str:
    return (f"pid: {os.getpid()}\nhost: {platform.node()}\ncommand: {command_line()}\n"
            f"since: {time.strftime('%Y-%m-%d %H:%M:%S')}\n")


def _parse(text: str) -> Holder | None:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            fields[key.strip()] = value.strip()
    if "pid" not in fields:
        return None
    try:
        pid: int | None = int(fields["pid"])
    except ValueError:
        pid = None
    return Holder(pid, fields.get("host", ""), fields.get("command", ""), fields.get("since", ""))


def _read_holder(fd: int) -> Holder:
    """The holder named in an open lock file (it may be writing its line just now: a few short retries)."""
    for _ in range(20):
        holder = _parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        if holder is not None:
            return holder
        time.sleep(0.01)
    return Holder(None, "", "", "")


def in_use(folder: Path, holder: Holder) -> FolderInUse:
    """The refusal a second process gets (one line)."""
    return FolderInUse(f"{folder}: in use by {holder.describe()}; wait for it to finish or stop it")


def holder(folder: Path) -> Holder | None:
    """Who holds `folder`'s lock now (this process included), or None when it is free. Writes nothing."""
    with _GUARD:
        mine = _HELD.get(_key(Path(folder)))
        if mine is not None:
            return _parse(mine.text)
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # conflicts with a holder's exclusive lock only
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def check_free(folder: Path) -> None:
    """Refuse (FolderInUse) when another process holds `folder`; writes nothing (for checks before the lock)."""
    key = _key(Path(folder))
    with _GUARD:
        if key in _HELD:
            return
    found = holder(folder)
    if found is not None:
        raise in_use(folder, found)


def _key(folder: Path) -> str:
    return os.path.realpath(folder / LOCK_FILE)


class FolderLock:
    """The exclusive lock of one folder (created if missing); `with FolderLock(path):` or acquire()/release()."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._key: str | None = None  # set while this object holds the lock

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._key is not None

    def acquire(self) -> FolderLock:
        """Take the lock (a no-op if this object holds it), or raise FolderInUse naming the holder."""
        if self._key is not None:
            return self
        make_folder(self.folder)
        key = _key(self.folder)
        with _GUARD:
            if key in _HELD:
                _HELD[key].count += 1
            else:
                _HELD[key] = self._take()
        self._key = key
        return self

    def _take(self) -> _Held:
        path = self.folder / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except PermissionError:
            raise UserError(f"{self.folder}: cannot create {LOCK_FILE} there (permission denied)") from None
        # A few short tries: `holder()` probes take a shared lock for a moment, and a holder may be exiting.
        deadline = time.monotonic() + RETRY_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                busy = exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES)
                if busy and time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                try:
                    if busy:
                        raise in_use(self.folder, _read_holder(fd)) from None
                    raise UserError(f"{self.folder}: cannot lock {LOCK_FILE} ({exc.strerror})") from None
                finally:
                    os.close(fd)
        text = _holder_text()
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode("utf-8"), 0)
        return _Held(fd, text)

    def release(self) -> None:
        """Let go (idempotent); the folder is free once every holder in this process has let go."""
        key, self._key = self._key, None
        if key is None:
            return
        with _GUARD:
            entry = _HELD.get(key)
            if entry is None:
                return
            entry.count -= 1
            if entry.count > 0:
                return
            del _HELD[key]
        try:
            fcntl.flock(entry.fd, fcntl.LOCK_UN)
        finally:
            os.close(entry.fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _forget_in_child() -> None:
    """A forked child does not own its parent's folders: close its copies (the parent keeps the locks)."""
    for entry in _HELD.values():
        try:
            os.close(entry.fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_in_child)
