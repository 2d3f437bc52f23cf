"""Per-conversation KV snapshots: an LRU in RAM that spills to disk, both bounded in bytes.

A snapshot is only a cache of work llama.cpp can redo: losing one costs time, never
correctness, so the disk folder is wiped at start.
"""

from __future__ import annotations

import hashlib
import shutil
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

_HEADER = np.dtype("<i8")
_TOKENS = np.dtype("<i4")


@dataclass(frozen=True)
class KVSnapshot:
    """The tokens a llama.cpp sequence holds and its serialized KV state."""

    tokens: npt.NDArray[np.int32]
    data: npt.NDArray[np.uint8]

    @property
    def nbytes(self) -> int:
        """Memory the snapshot takes."""
        return int(self.data.nbytes + self.tokens.nbytes)


@dataclass
class KVCacheStats:
    """Counters for benchmarks and metrics."""

    hits: int = 0
    misses: int = 0
    spills: int = 0
    disk_hits: int = 0
    evictions: int = 0


class KVCache:
    """LRU of snapshots by key: up to `ram_bytes` in memory, then up to `disk_bytes` on disk."""

    def __init__(self, ram_bytes: int, disk_dir: Path | None = None, disk_bytes: int = 0) -> None:
        self.ram_bytes = ram_bytes
        self.disk_bytes = disk_bytes if disk_dir is not None else 0
        self.stats = KVCacheStats()
        self._ram: OrderedDict[str, KVSnapshot] = OrderedDict()
        self._ram_used = 0
        self._disk: OrderedDict[str, int] = OrderedDict()
        self._disk_used = 0
        self._dir = disk_dir
        if disk_dir is not None:
            shutil.rmtree(disk_dir, ignore_errors=True)
            disk_dir.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self._ram) + len(self._disk)

    def put(self, key: str, snap: KVSnapshot) -> None:
        """Keep a snapshot as the most recently used; older ones spill to disk, then drop."""
        self.discard(key)
        self._ram[key] = snap
        self._ram_used += snap.nbytes
        while self._ram_used > self.ram_bytes and self._ram:
            old_key, old = self._ram.popitem(last=False)
            self._ram_used -= old.nbytes
            self._spill(old_key, old)

    def take(self, key: str) -> KVSnapshot | None:
        """Remove and return a snapshot (it is about to live in the model's context again)."""
        snap = self._ram.pop(key, None)
        if snap is not None:
            self._ram_used -= snap.nbytes
            self.stats.hits += 1
            return snap
        if key in self._disk:
            snap = self._read(key)
            self._drop_disk(key)
            self.stats.disk_hits += 1
            return snap
        self.stats.misses += 1
        return None

    def peek(self, key: str) -> KVSnapshot | None:
        """A snapshot, left in place (read back from disk if it spilled)."""
        snap = self._ram.get(key)
        if snap is None and key in self._disk:
            snap = self._read(key)
        return snap

    def discard(self, key: str) -> None:
        """Forget a key wherever it is."""
        snap = self._ram.pop(key, None)
        if snap is not None:
            self._ram_used -= snap.nbytes
        if key in self._disk:
            self._drop_disk(key)

    def _path(self, key: str) -> Path:
        assert self._dir is not None
        return self._dir / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".kv")

    def _spill(self, key: str, snap: KVSnapshot) -> None:
        if snap.nbytes > self.disk_bytes:
            self.stats.evictions += 1
            return
        while self._disk_used + snap.nbytes > self.disk_bytes and self._disk:
            self._drop_disk(next(iter(self._disk)))
            self.stats.evictions += 1
        with self._path(key).open("wb") as f:
            f.write(np.array([len(snap.tokens)], dtype=_HEADER).tobytes())
            f.write(snap.tokens.astype(_TOKENS).tobytes())
            f.write(np.ascontiguousarray(snap.data).data)
        self._disk[key] = snap.nbytes
        self._disk_used += snap.nbytes
        self.stats.spills += 1

    def _read(self, key: str) -> KVSnapshot:
        raw = self._path(key).read_bytes()
        n = int(np.frombuffer(raw[: _HEADER.itemsize], dtype=_HEADER)[0])
        end = _HEADER.itemsize + n * _TOKENS.itemsize
        tokens = np.frombuffer(raw[_HEADER.itemsize : end], dtype=_TOKENS).astype(np.int32)
        return KVSnapshot(tokens, np.frombuffer(raw, dtype=np.uint8, offset=end))

    def _drop_disk(self, key: str) -> None:
        self._disk_used -= self._disk.pop(key)
        self._path(key).unlink(missing_ok=True)
