"""A throw-away PostgreSQL cluster for tests: `initdb` + `pg_ctl` in a temporary folder, on a free loopback port.

The server runs as the `postgres` user when the tests run as root (initdb and postgres refuse root), as the
current user otherwise. It listens on 127.0.0.1 only, keeps its Unix socket inside its own folder, trusts every
local connection, and is stopped with `pg_ctl stop -m immediate` when the `with` block ends, however it ends.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

USER = "decaylab"  # the cluster's superuser (initdb -U), the role every test connects as
TIMEOUT_S = 30  # pg_ctl's -t and the wall limit of every command here: a stuck server fails the test, never hangs it


def server_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: from PATH, else the newest Debian /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += sorted((Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
                         key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def missing() -> str | None:
    """Why a server cannot be started here (no binaries, no driver), or None."""
    if server_bin() is None:
        return "PostgreSQL's initdb/pg_ctl are not installed (Debian: apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is missing (pip install -e '.[postgres]')"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root needs runuser to start the server as the postgres user"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Server:
    """A running cluster: its port, and SQLAlchemy URLs of its databases."""

    port: int
    folder: Path

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of `database` (psycopg 3 driver)."""
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database `name` and return its URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres",
                             autocommit=True, connect_timeout=TIMEOUT_S) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_server_user(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def _run(args: list[str]) -> None:
    done = subprocess.run(_as_server_user(args), capture_output=True, text=True, timeout=TIMEOUT_S + 15)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip() or done.stdout}")


@contextmanager
def postgres_server() -> Iterator[Server]:
    """Start a fresh cluster; stop it and remove its folder at the end, even when the body fails."""
    binaries = server_bin()
    assert binaries is not None, missing()
    # short (a Unix socket path has a limit of about 100 bytes) and, as root, in /tmp, which the postgres user can reach
    folder = Path(tempfile.mkdtemp(prefix="decaylab-pg-", dir="/tmp" if os.geteuid() == 0 else None))
    data, log = folder / "data", folder / "server.log"
    started = False
    try:
        if os.geteuid() == 0:
            import pwd

            entry = pwd.getpwnam("postgres")
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        # --no-sync: a throw-away cluster need not survive a power cut; it saves seconds on a busy disk
        _run([str(binaries / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "--no-sync", "-E", "UTF8"])
        port = _free_port()
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={folder} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60")
        started = True  # from here on, stop it whatever happens (pg_ctl start may fail after the server came up)
        try:
            _run([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", str(TIMEOUT_S), "-o",
                  options, "start"])
        except RuntimeError as exc:
            tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
            raise RuntimeError(f"{exc}\nserver log:\n{tail}") from None
        yield Server(port, folder)
    finally:
        if started:
            subprocess.run(_as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                                            "-t", str(TIMEOUT_S), "stop"]), capture_output=True,
                           timeout=TIMEOUT_S + 15)
        shutil.rmtree(folder, ignore_errors=True)
