"""A two-node Ray cluster on this machine, started the way a user starts one (`ray start`), for the Ray tests.

Both nodes run on this host: the head (`ray start --head --node-ip-address=127.0.0.1 --port=P`) and a second
`ray start --address=127.0.0.1:P` that joins it. Ray supports several nodes on one host this way (the second
node shares the head's session folder and gets its own raylet socket, `raylet.1`); no extra ports or temp folders
are needed. Ray does not bind to the loopback address, though: `services.resolve_ip_for_localhost` replaces
127.0.0.1 with the machine's routable address (both nodes say 192.0.2.2 here), so the cluster listens on that
address while we connect through 127.0.0.1:P.

Authentication: Ray 2.60 turns token authentication on for a local `ray.init()` (writing ~/.ray/auth_token) and
for `ray start --head` once that file exists, while a `ray start --address` node sends a token only with
RAY_AUTH_MODE=token; so a head started after any local instance ran on the machine refuses the second node. The
cluster here therefore uses a token of its own, given to both nodes and to this process through RAY_AUTH_MODE=token
and RAY_AUTH_TOKEN (`auth_env`), independent of ~/.ray.

Each `ray start` runs in a session of its own, so its daemons (GCS, raylet, agents) and their workers carry its
process group id; `stop` kills exactly those groups (`ray stop` would stop every Ray on the machine, other users'
clusters included).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120
# Small on purpose: the trials pass rows, not tensors; Ray's minimum is 75 MB.
OBJECT_STORE_BYTES = 80 * 1024 * 1024


def ray_command() -> str:
    """The `ray` script of this Python's environment (what `pip install decaylab[ray]` put there)."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RayCluster:
    """The head's address, the process groups to kill at the end, and the session folder."""

    address: str
    temp_dir: str
    groups: list[int] = field(default_factory=list)

    def stop(self) -> None:
        """SIGKILL both nodes' process groups (daemons and workers) and remove the session folder."""
        for group in self.groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def auth_env() -> dict[str, str]:
    """A fresh token for one cluster (Ray's own format: 256 random bits in hex) and the mode that requires it."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def _start(args: list[str], env: dict[str, str], cluster: RayCluster) -> None:
    proc = subprocess.Popen([ray_command(), "start", *args, "--num-cpus=1", "--disable-usage-stats",
                             f"--object-store-memory={OBJECT_STORE_BYTES}"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    cluster.groups.append(proc.pid)  # its daemons keep this process group after `ray start` itself exits
    try:
        out, _ = proc.communicate(timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"`ray start {' '.join(args)}` did not finish in {START_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"`ray start {' '.join(args)}` failed ({proc.returncode}):\n{out[-3000:]}")


def start_cluster(auth: dict[str, str]) -> RayCluster:
    """Start the head and a second node (1 CPU each) joining it, both requiring the token of `auth` (`auth_env`);
    the caller must `stop()` it, even on failure."""
    port = free_port()
    # Short: Ray's unix sockets live under it, and a socket path may not pass 107 characters.
    temp_dir = tempfile.mkdtemp(prefix="dlray", dir="/tmp")
    cluster = RayCluster(f"127.0.0.1:{port}", temp_dir)
    # The workers import this checkout's decaylab (and tests.objectives), whatever the environment has installed.
    paths = [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **auth}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    try:
        _start(["--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false",
                f"--temp-dir={temp_dir}"], env, cluster)
        _start([f"--address={cluster.address}", "--node-ip-address=127.0.0.1"], env, cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster
