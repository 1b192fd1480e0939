"""Start and stop an ``mlflow server`` (the UI + REST API) on 127.0.0.1.

Why a module: ``mrlfads ui`` and the tests both need a server over the project's store that
is healthy before anyone talks to it (~30 s to start here) and that really goes away when
stopped (its workers outlive a SIGTERM by ~50 s), so it runs in its own process group and
the whole group is killed, and under ``mrlfads.tracking.server_guard``, which kills that group when
the process that started the server dies, even by SIGKILL.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mrlfads.tracking.errors import TrackingError
from mrlfads.tracking.store import mlflow_client, sqlite_path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class ServerHandle:
    """A running server: its address, process and log file."""

    url: str
    process: subprocess.Popen
    log_path: Path
    backend_store_uri: str
    artifacts_destination: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``grace_s``."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.process.pid, signal.SIGKILL)  # lingering workers
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 15
        while self.healthy() and time.monotonic() < deadline:
            time.sleep(0.2)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the server was started as a session leader: pgid == pid
    except (ProcessLookupError, PermissionError):
        pass


def start_server(backend_store_uri: str, artifacts_destination: str | os.PathLike, *,
                 host: str = "127.0.0.1", port: int | None = None, workers: int = 1,
                 timeout_s: float = 180.0, log_path: str | os.PathLike | None = None) -> ServerHandle:
    """Start ``mlflow server`` and return once ``/health`` answers.

    Raises TrackingError (with the end of the server's log) if it exits or stays unhealthy.
    """
    if sqlite_path(backend_store_uri) is not None:
        mlflow_client(backend_store_uri)  # a new store's tables, made under its lock (store.py)
    port = port or free_port(host)
    dest = Path(artifacts_destination).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    log_file = Path(log_path) if log_path else dest.parent / f"mlflow-server-{port}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    guard = [sys.executable, "-m", "mrlfads.tracking.server_guard", str(os.getpid()), "--"]
    cmd = guard + [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                   backend_store_uri, "--artifacts-destination", str(dest), "--host", host,
                   "--port", str(port), "--workers", str(workers)]
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    env.pop("MLFLOW_TRACKING_URI", None)
    root = str(Path(__file__).resolve().parents[1])  # the guard's module, from any cwd
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    handle = ServerHandle(f"http://{host}:{port}", proc, log_file, backend_store_uri, str(dest))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TrackingError(f"mlflow server on port {port} exited with code {proc.returncode}; "
                                f"its log ({log_file}) ends:\n{handle.log_tail()}")
        if handle.healthy():
            return handle
        time.sleep(0.5)
    handle.stop()
    raise TrackingError(f"mlflow server on port {port} was not healthy after {timeout_s:.0f} s; "
                        f"its log ({log_file}) ends:\n{handle.log_tail()}")
