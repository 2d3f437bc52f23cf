"""`memchat serve` as a child process on a free loopback port: for soak runs and crash tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import aiohttp

READY_TIMEOUT_S = 180.0
POLL_S = 0.1  # a child process offers no event to await; its /health is polled
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One `memchat serve` child with its data (embedded Redis included) under `data_dir`."""

    def __init__(self, data_dir: Path, args: Sequence[str] = ()) -> None:
        self.data_dir = data_dir
        self.args = list(args)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None, "the server is not running"
        return self.proc.pid

    def start(self) -> None:
        """Start it (again: same port, same data dir); its output goes to data_dir/server.log."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = (self.data_dir / "server.log").open("ab")
        command = [sys.executable, "-m", "server.cli", "serve", "--port", str(self.port)]
        command += ["--data-dir", str(self.data_dir), *self.args]
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)

    async def wait_ready(self, *, embedder: bool = False) -> None:
        """Wait until the model and Redis are ready (and the embedder, if asked)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        parts = ("model", "redis", "embedder") if embedder else ("model", "redis")
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc is None or self.proc.poll() is not None:
                    raise RuntimeError(f"memchat exited; see {self.data_dir / 'server.log'}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"memchat was not ready in {READY_TIMEOUT_S:g} s")
                try:
                    async with http.get(f"{self.url}/health") as resp:
                        health = await resp.json()
                    if all(health.get(p) for p in parts):
                        return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(POLL_S)

    def rss_bytes(self) -> int:
        """The server process's resident memory."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def redis_pid(self) -> int:
        """The embedded redis-server's process id."""
        return int((self.data_dir / "redis.pid").read_text().strip())

    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: a clean shutdown."""
        self._end(signal.SIGTERM)

    def _end(self, sig: signal.Signals) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
