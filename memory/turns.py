"""Chat turns along the conversation's prompt layout (see memory/layout.py).

`build` packs one reply's prompt so that llama.cpp re-evaluates only the new recall note and
message; `prepare_next` resets the layout in the background when it is about to overflow and
evaluates the new prefix while the user reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from memory.layout import (
    NOTE_TOKENS,
    RESET_RECALL_SHARE,
    RESET_RECENT_SHARE,
    SUMMARY_SHARE,
    Layout,
    Recalled,
    choose_note,
    needs_prefill,
    note_message,
    render,
)
from memory.packing import Line, Turn, pack_lines, pack_recent
from memory.render import SUMMARY_HEADER
from memory.store import Message, Summary
from models.types import ChatMessage, Finished

if TYPE_CHECKING:
    from memory.index_cache import ConversationIndex
    from memory.manager import BuiltContext, ContextRecord, MemoryManager, Vectors, _Query

RECENT_FETCH = 64  # newest turns considered for the timeline at a reset


class Prefiller(Protocol):
    """A model that can evaluate a prompt prefix into a conversation's KV state."""

    async def prefill(self, messages: list[ChatMessage], *, cache_key: str) -> Finished:
        """Evaluate the messages; later prompts starting with them reuse the work."""
        ...


class _Lazy:
    """The new message's embedding, started only if recall turns out to be needed."""

    def __init__(self, manager: MemoryManager, text: str, speakers: Iterable[str]) -> None:
        self._manager = manager
        self._text = text
        self._speakers = tuple(speakers)
        self._future: asyncio.Future[Vectors] | None = None
        self._started = False

    def start(self) -> asyncio.Future[Vectors] | None:
        """The embedding in progress (None without an embedder or a text)."""
        if not self._started and self._text:
            self._started = True
            self._future = self._manager._start_embedding(self._text, self._speakers)
        return self._future


class Turns:
    """Builds chat-turn prompts along a persistent, append-only layout."""

    def __init__(
        self, manager: MemoryManager, prefiller: Prefiller | None, note_tokens: int = NOTE_TOKENS
    ) -> None:
        self.m = manager
        self.note_tokens = note_tokens
        self.prefiller = prefiller
        # Conversations whose layout must be redone (turns forgotten, summary edited).
        self.stale: set[tuple[str, str]] = set()

    async def build(
        self, user: str, cid: str, text: str, budget: int, system: str, *, before: int
    ) -> BuiltContext:
        """The prompt for a reply to `text` (stored as seq `before`), within `budget`."""
        from memory.manager import _Query

        started = time.perf_counter()
        index = await self.m.indexes.get(user, cid)
        last = min(index.upto, before - 1)
        query = _Query(user, cid, text, last, budget)
        embedding = _Lazy(self.m, text, index.speakers)
        layout = await self._load(user, cid, system, last)
        fixed = self.m.tokenizer.count([ChatMessage("system", system), ChatMessage("user", text)])
        for _ in range(2):
            if layout is None:
                layout = await self._reset(query, index, system, embedding)
            note = await self._note(query, index, layout, embedding)
            head, by_seq, lines = await self._stable(query, index, layout, note)
            note = [ln for ln in note if ln.seq in by_seq]  # forgotten meanwhile: left out
            messages = [*head, *([note_message(note)] if note else []), ChatMessage("user", text)]
            prompt = self.m.tokenizer.count(messages)
            if prompt - fixed <= budget:
                break
            layout = None
        else:  # even a fresh layout overflows (a huge message): fall back to a one-off packing
            return await self.m.build_context(user, cid, text, budget, system, before=before)
        recalled = [Recalled(ln.seq, ln.score) for ln in note]
        layout = layout.with_note(before, recalled, prompt - fixed, budget)
        await self.m.store.put_layout(user, cid, layout.to_json())
        self.m._recent_start[(user, cid)] = layout.anchor
        record = self._record(layout, by_seq, lines | {ln.seq: ln for ln in note}, prompt, fixed)
        record = replace(record, build_ms=round((time.perf_counter() - started) * 1000, 2))
        self.m._last_record[(user, cid)] = record
        from memory.manager import BuiltContext

        return BuiltContext(messages, record)

    async def prepare_next(self, user: str, cid: str) -> bool:
        """Reset a nearly full layout now and prefill its prefix; True when it did."""
        from memory.manager import _Query

        raw = await self.m.store.get_layout(user, cid)
        if raw is None or self.prefiller is None:
            return False
        layout = Layout.from_json(raw)
        if not needs_prefill(layout):
            return False
        index = await self.m.indexes.get(user, cid)
        last = index.upto
        question = next(
            (m.text for m in reversed(index.messages.values()) if m.role == "user"),
            "",
        )
        query = _Query(user, cid, question, last, layout.budget)
        embedding = _Lazy(self.m, question, index.speakers)
        fresh = await self._reset(query, index, layout.system, embedding)
        head, _, _ = await self._stable(query, index, fresh, [])
        system = [ChatMessage("system", layout.system)]
        history = self.m.tokenizer.count(
            head, add_generation_prompt=False
        ) - self.m.tokenizer.count(system, add_generation_prompt=False)
        done = await self.prefiller.prefill(head, cache_key=cid)
        if done.reason != "completed":
            return False  # a chat request came first; the current layout still has room
        staged = fresh.with_note(0, [], history, layout.budget)
        await self.m.store.put_layout(user, cid, staged.to_json())
        self.m._recent_start[(user, cid)] = fresh.anchor
        return True

    async def _load(self, user: str, cid: str, system: str, last: int) -> Layout | None:
        raw = await self.m.store.get_layout(user, cid)
        if raw is None or (user, cid) in self.stale:
            self.stale.discard((user, cid))
            return None
        layout = Layout.from_json(raw)
        if layout.system != system or layout.anchor > last + 1:
            return None
        return layout

    async def _reset(
        self,
        query: _Query,
        index: ConversationIndex,
        system: str,
        embedding: _Lazy,
    ) -> Layout:
        """A fresh layout: pinned summary, a recalled block, and room for the timeline to grow."""
        older = index.candidates.upto(query.last)
        newest = [index.messages[seq] for seq in reversed(older.seq[-RECENT_FETCH:].tolist())]
        recent = pack_recent(
            [Turn(m.seq, self.m._cost(m)) for m in newest], int(query.budget * RESET_RECENT_SHARE)
        )
        anchor = recent[0].seq if recent else query.last + 1
        summary = await self.m.store.get_summary(query.user, query.cid)
        cost = self.m._line_cost(f"{SUMMARY_HEADER}\n{summary.text}\n") if summary.text else 0
        if cost > query.budget * SUMMARY_SHARE:
            summary = Summary()
        base: list[Line] = []
        if len(older) > len(recent):
            room = int(query.budget * RESET_RECALL_SHARE)
            ranked = await self.m._recall(query, index, room, embedding.start())
            days = {ln.day: self.m._line_cost(f"[{ln.day}]") for ln in ranked}
            base = pack_lines(ranked, room, frozenset(t.seq for t in recent), days)
        return Layout(
            anchor=anchor,
            system=system,
            summary=summary.text,
            summary_version=summary.version,
            summary_upto=summary.upto_seq,
            base=tuple(Recalled(ln.seq, ln.score) for ln in base),
        )

    async def _note(
        self,
        query: _Query,
        index: ConversationIndex,
        layout: Layout,
        embedding: _Lazy,
    ) -> list[Line]:
        """This turn's recall note: strong matches that are nowhere in the prompt yet."""
        if layout.anchor <= 1 or not query.text or self.note_tokens <= 0:
            return []
        room = min(query.budget // 4, self.note_tokens)
        ranked = await self.m._recall(query, index, room, embedding.start())
        exclude = set(range(layout.anchor, query.last + 1)) | layout.recalled_seqs()
        days = {ln.day: self.m._line_cost(f"[{ln.day}]") for ln in ranked}
        return choose_note(ranked, exclude, room, days)

    async def _stable(
        self, query: _Query, index: ConversationIndex, layout: Layout, note: list[Line]
    ) -> tuple[list[ChatMessage], dict[int, Message], dict[int, Line]]:
        """The layout's messages up to the newest stored turn, re-read from Redis (with the turns
        of this turn's note, so that a turn forgotten meanwhile is left out)."""
        timeline = await self.m.store.messages(
            query.user, query.cid, start=layout.anchor, end=query.last
        )
        by_seq = {m.seq: m for m in timeline}
        scores = {r.seq: r.score for r in layout.base}
        for earlier in layout.notes.values():
            scores.update({r.seq: r.score for r in earlier})
        wanted = sorted(scores.keys() | {ln.seq for ln in note})
        found = await self.m.store.messages_by_seq(query.user, query.cid, wanted)
        lines = {
            m.seq: self.m._line(index, m.seq, scores[m.seq])
            for m in found
            if m.seq in scores and m.seq in index.messages
        }
        by_seq.update({m.seq: m for m in found})
        return render(layout, by_seq, lines, query.last), by_seq, lines

    def _record(
        self,
        layout: Layout,
        by_seq: dict[int, Message],
        lines: dict[int, Line],
        prompt: int,
        fixed: int,
    ) -> ContextRecord:
        from memory.manager import ContextRecord, PackedTurn

        recalled = [
            PackedTurn(seq, by_seq[seq].role, "recalled", ln.cost, by_seq[seq].time,
                       round(ln.score, 4), by_seq[seq].speaker)
            for seq, ln in sorted(lines.items()) if seq in by_seq
        ]  # fmt: skip
        recent = [
            PackedTurn(m.seq, m.role, "recent", self.m._cost(m), m.time, None, m.speaker)
            for seq, m in sorted(by_seq.items())
            if seq >= layout.anchor and seq not in lines
        ]
        summary_cost = (
            self.m.tokenizer.message_cost(
                ChatMessage("system", f"{SUMMARY_HEADER}\n{layout.summary}")
            )
            if layout.summary
            else 0
        )
        recent_cost = sum(t.tokens for t in recent)
        history = prompt - fixed
        return ContextRecord(
            budget=layout.budget,
            history_tokens=history,
            prompt_tokens=prompt,
            sections={
                "summary": summary_cost,
                "recalled": max(0, history - summary_cost - recent_cost),
                "recent": recent_cost,
            },
            turns=recalled + recent,
            summary_version=layout.summary_version if layout.summary else 0,
            summary_upto=layout.summary_upto if layout.summary else 0,
        )
