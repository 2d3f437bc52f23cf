"""A redis-server 8 of a test's own, on a TCP port, that the test can stop and start again."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from server.local_server import free_port
from server.redis_process import find_redis_server

START_TIMEOUT_S = 20.0


class RedisServer:
    """redis-server with the embedded server's durability settings (AOF, fsync every second)."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL clients connect with."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it on the same port and data dir as before, and wait until it answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(find_redis_server()),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._answers():
            assert self.proc.poll() is None, (self.data_dir / "redis.log").read_text()
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)  # a child process gives no event to await

    def stop(self) -> None:
        """SIGTERM: Redis writes its AOF to disk and exits."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None

    def aof_tail(self) -> Path:
        """The newest incremental AOF file (where the latest writes are)."""
        return sorted((self.data_dir / "appendonlydir").glob("*.incr.aof"))[-1]

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False
