"""Bulk import of a LoCoMo-format conversation: store turns with their times, then index them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from memory.locomo import LocomoConversation
from memory.manager import MemoryManager

IMPORT_CHUNK = 64  # turns stored and embedded per step; progress is reported per step

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Imported:
    """Where a conversation was imported to, and each turn's seq by its dia_id."""

    cid: str
    turns: int
    seq_of: dict[str, int]


async def import_conversation(
    memory: MemoryManager,
    user: str,
    conv: LocomoConversation,
    progress: Progress | None = None,
) -> Imported:
    """Store every turn in order (speaker, session time, dia_id in meta) and embed it."""
    title = f"{conv.speakers[0]} & {conv.speakers[1]}" + (f" ({conv.name})" if conv.name else "")
    created = await memory.store.create_conversation(user, title)
    seq_of: dict[str, int] = {}
    total = len(conv.turns)
    for start in range(0, total, IMPORT_CHUNK):
        chunk = conv.turns[start : start + IMPORT_CHUNK]
        rows = [
            (t.role, t.text, "completed", t.at, t.speaker, {"dia_id": t.dia_id} if t.dia_id else {})
            for t in chunk
        ]
        stored = await memory.store.append_many(user, created.id, rows)
        await memory.index(user, created.id, stored)
        seq_of.update({t.dia_id: m.seq for t, m in zip(chunk, stored, strict=True)})
        if progress is not None:
            progress(start + len(chunk), total)
    return Imported(created.id, total, seq_of)
