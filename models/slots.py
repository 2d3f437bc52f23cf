"""The batched engine's sequences ("slots"): which conversation's KV state each one holds.

A conversation keeps its slot between turns; when a slot is needed, the least recently used
idle one is saved into the KV cache and reused. A returning conversation starts from the best
of its slot, its saved snapshot, and its staged next prefix, as the simple engine does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from models.jobs import Job, ReplyText, common_prefix, family
from models.kv_cache import KVCache, KVSnapshot


class SequenceStore(Protocol):
    """What the slot table needs of a llama.cpp context."""

    def save(self, seq: int, tokens: list[int]) -> KVSnapshot:
        """Serialize a sequence's KV cells."""
        ...

    def restore(self, seq: int, snap: KVSnapshot) -> bool:
        """Load a snapshot into a sequence."""
        ...

    def truncate(self, seq: int, keep: int) -> None:
        """Drop a sequence's cells from position `keep` on."""
        ...


@dataclass
class Run:
    """A job in progress in one slot."""

    job: Job
    cached: int  # prompt tokens reused from the slot's KV cells
    todo: list[int]  # prompt tokens still to evaluate
    budget: int  # most tokens it may generate
    completion: int = 0
    next_token: int = -1  # sampled, not yet evaluated
    output: int = -1  # batch index of the logits to sample from after this step
    first: float = 0.0
    last: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    text: ReplyText = field(default_factory=ReplyText)


@dataclass
class Slot:
    """One llama.cpp sequence and what its KV cells hold."""

    seq: int
    key: str | None = None
    tokens: list[int] = field(default_factory=list)
    run: Run | None = None
    used: float = 0.0  # monotonic time its last job ended
    parked: int = -1  # len(tokens) when it was last saved to the KV cache

    def clear(self, store: SequenceStore) -> None:
        """Forget the sequence's contents."""
        store.truncate(self.seq, 0)
        self.key, self.tokens, self.parked = None, [], -1


class SlotTable:
    """Places jobs in sequences, saving and restoring per-conversation KV state."""

    def __init__(self, n: int, store: SequenceStore, kv: KVCache) -> None:
        self.slots = [Slot(seq) for seq in range(n)]
        self.store = store
        self.kv = kv

    def runs(self) -> list[tuple[Slot, Run]]:
        """Slots with a job in progress, oldest job first."""
        busy = [(s, s.run) for s in self.slots if s.run is not None]
        return sorted(busy, key=lambda pair: pair[1].job.submitted)

    def place(self, job: Job) -> Slot | None:
        """A slot holding the best starting state for the job, or None if it must wait."""
        key = job.cache_key
        own = self._own(key)
        if any(s.run is not None for s in own):
            return None  # the conversation is busy; its next request waits for it
        own_idle = [s for s in own if s.run is None]
        best = max(own_idle, key=lambda s: common_prefix(s.tokens, job.tokens), default=None)
        found = common_prefix(best.tokens, job.tokens) if best is not None else 0
        snap_key = self._best_snapshot(key, job.tokens, found)
        target = best if best is not None and (found or key is not None) else None
        target = target or self._free(job.tokens)
        if target is None:
            return None
        if snap_key is not None:
            self._restore(target, snap_key)
        if key is not None:
            for s in own_idle:
                if s is not target:
                    s.clear(self.store)  # one slot holds the conversation from here on
            for k in family(key):
                self.kv.discard(k)
        target.key, target.parked = key, -1
        return target

    def park_lru(self) -> bool:
        """Save the idle slot that would be evicted next, so that its eviction costs nothing."""
        slot = self._lru()
        if slot is None or slot.key is None or slot.parked == len(slot.tokens) or not slot.tokens:
            return False
        self.kv.put(slot.key, self.store.save(slot.seq, slot.tokens))
        slot.parked = len(slot.tokens)
        return True

    def _own(self, key: str | None) -> list[Slot]:
        if key is None:
            return [s for s in self.slots if s.key is None and s.tokens and s.run is None]
        keys = family(key)
        return [s for s in self.slots if s.key in keys]

    def _best_snapshot(self, key: str | None, tokens: list[int], beat: int) -> str | None:
        choice = None
        for k in family(key):
            snap = self.kv.peek(k)
            if snap is not None and (found := common_prefix(snap.tokens.tolist(), tokens)) > beat:
                beat, choice = found, k
        return choice

    def _restore(self, slot: Slot, key: str) -> None:
        snap = self.kv.take(key)
        slot.tokens = []
        if snap is not None and self.store.restore(slot.seq, snap):
            slot.tokens = snap.tokens.tolist()
        else:
            slot.clear(self.store)

    def _free(self, tokens: list[int]) -> Slot | None:
        """An empty slot, else the least recently used idle one: saved first, then cut back to
        what it shares with `tokens` (a system prompt most often), so that is not evaluated."""
        empty = next((s for s in self.slots if s.run is None and not s.tokens), None)
        if empty is not None:
            return empty
        victim = self._lru()
        if victim is None:
            return None
        if victim.key is not None and victim.parked != len(victim.tokens):
            self.kv.put(victim.key, self.store.save(victim.seq, victim.tokens))
        keep = common_prefix(victim.tokens, tokens)
        self.store.truncate(victim.seq, keep)
        victim.key, victim.tokens, victim.parked = None, victim.tokens[:keep], -1
        return victim

    def _lru(self) -> Slot | None:
        idle = [s for s in self.slots if s.run is None]
        return min(idle, key=lambda s: s.used, default=None)
