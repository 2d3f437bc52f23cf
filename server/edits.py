"""Edits to a conversation's stored history: forget a turn, rewind for regenerate or edit.

Every edit removes the turns and their vectors, drops memory's derived caches, and keeps the
summary honest: a summary that covered a removed or rewritten turn may still hold it, so it
is cleared (its version bumped, covering nothing) and the summarizer folds the remaining
turns again after the next reply. Until then recall and the recent window carry the history.
"""

from __future__ import annotations

from dataclasses import dataclass

from memory.store import Message, Summary
from models.errors import BadRequest, Busy
from server.runtime import Runtime


@dataclass(frozen=True)
class Forgotten:
    """What forgetting a turn did."""

    seq: int
    summary_cleared: bool


async def forget(rt: Runtime, user: str, cid: str, seq: int) -> Forgotten:
    """Remove one turn from history, vectors and future recall."""
    await rt.store.get_conversation(user, cid)
    await rt.store.message(user, cid, seq)  # NotFound before anything changes
    await rt.store.forget_messages(user, cid, [seq])
    cleared = await _settle(rt, user, cid, seq)
    return Forgotten(seq, cleared)


async def rewind_for_regenerate(rt: Runtime, user: str, cid: str) -> Message:
    """Drop the reply after the last user turn; return that turn, to be answered again."""
    last = await rt.store.last_message(user, cid)
    if last is None:
        raise BadRequest("nothing_to_regenerate", "the conversation has no messages yet")
    asked = last
    if last.role == "assistant":
        asked = await _user_before(rt, user, cid, last.seq)
    if asked.role != "user":
        raise BadRequest("nothing_to_regenerate", "the last turn is not a user message")
    await _drop_after(rt, user, cid, asked.seq)
    return asked


async def rewind_for_edit(rt: Runtime, user: str, cid: str, seq: int, text: str) -> Message:
    """Replace a user turn's text and drop every turn after it; return the rewritten turn."""
    await rt.store.get_conversation(user, cid)
    old = await rt.store.message(user, cid, seq)
    if old.role != "user":
        raise BadRequest("not_a_user_message", f"turn {seq} is a {old.role} turn; edit user turns")
    await _drop_after(rt, user, cid, seq)
    new = await rt.store.rewrite_message(user, cid, seq, text)
    await _settle(rt, user, cid, seq)
    return new


async def _user_before(rt: Runtime, user: str, cid: str, seq: int) -> Message:
    stored = await rt.store.messages(user, cid, end=seq - 1)
    if not stored:
        raise BadRequest("nothing_to_regenerate", "no user message precedes the last reply")
    return stored[-1]


async def _drop_after(rt: Runtime, user: str, cid: str, seq: int) -> None:
    later = await rt.store.seqs_after(user, cid, seq)
    await rt.store.forget_messages(user, cid, later)
    if later:
        await _settle(rt, user, cid, later[0])


async def _settle(rt: Runtime, user: str, cid: str, changed: int) -> bool:
    """Drop caches; clear a summary covering seq `changed`. True when it was cleared."""
    rt.memory.invalidate(user, cid)
    current = await rt.store.get_summary(user, cid)
    if current.upto_seq < changed:
        return False
    cleared = Summary("", current.version + 1, 0, 0)
    if not await rt.store.put_summary(user, cid, cleared, expect_version=current.version):
        raise Busy("summary_busy", "the summary changed while it was being cleared; retry")
    return True
