"""The memory manager: records turns and packs each reply's context within an exact budget."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from memory.index_cache import ConversationIndex, IndexCache
from memory.lexical import terms
from memory.packing import Budget, Line, Turn, pack_lines, pack_recent, recent_budget, render_lines
from memory.recall import fuse, named_speaker
from memory.render import RECALL_HEADER, SUMMARY_HEADER, as_chat, day_label, line_text, memory_text
from memory.store import Message, Store, Summary
from memory.summary import Summarizer, SummaryModel
from models.types import ChatMessage, Tokenizer

RECENT_FETCH = 64  # newest turns read per context build; more rarely fit a small context
RECENT_SHARE = 0.1  # of the history budget, kept for the newest turns once recall is needed
SUMMARY_SHARE = 0.2  # the summary is left out when it would take more of the budget than this
VECTOR_CANDIDATES = 400  # nearest turns asked of the vector set
MIN_LINE_TOKENS = 12  # a lower bound on a recalled line's cost, to size the fetch


class Embedder(Protocol):
    """What memory needs of an embedder."""

    async def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Normalized vectors, one per text."""
        ...


@dataclass(frozen=True)
class PackedTurn:
    """One stored turn that went into the prompt, and why."""

    seq: int
    role: str
    reason: str
    tokens: int
    time: float
    score: float | None = None
    speaker: str = ""


@dataclass(frozen=True)
class ContextRecord:
    """The inspection record: what was packed into one prompt, and why."""

    budget: int
    history_tokens: int
    prompt_tokens: int
    sections: dict[str, int]
    turns: list[PackedTurn] = field(default_factory=list)
    summary_version: int = 0
    summary_upto: int = 0  # the summary covers turns 1..summary_upto
    build_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the wire and the API."""
        return asdict(self)


@dataclass(frozen=True)
class BuiltContext:
    """The messages to send the model, and the record of how they were chosen."""

    messages: list[ChatMessage]
    record: ContextRecord


@dataclass(frozen=True)
class _Plan:
    """The chosen content of one prompt before rendering."""

    summary: Summary
    lines: list[Line]
    recent: list[Turn]
    recalled: dict[int, Message] = field(default_factory=dict)


class MemoryManager:
    """Stores turns, indexes them for recall, folds old ones into a summary, and builds contexts."""

    def __init__(
        self,
        store: Store,
        tokenizer: Tokenizer,
        embedder: Embedder | None,
        *,
        summarizer_model: SummaryModel | None = None,
    ) -> None:
        self.store = store
        self.tokenizer = tokenizer
        self.embedder = embedder
        self.indexes = IndexCache(store)
        self.summarizer = Summarizer(store, summarizer_model) if summarizer_model else None
        self._recent_start: dict[tuple[str, str], int] = {}
        self._blank = tokenizer.message_cost(ChatMessage("system", ""))

    def budget(self, n_ctx: int, reply_reserve: int, system: str, new_message: str) -> Budget:
        """The history budget left once the system prompt, message and reply are reserved."""
        fixed = self.tokenizer.count(
            [ChatMessage("system", system), ChatMessage("user", new_message)]
        )
        return Budget(n_ctx=n_ctx, reply_reserve=reply_reserve, fixed_tokens=fixed)

    async def build_context(
        self,
        user: str,
        cid: str,
        new_message: str,
        history_budget: int,
        system: str,
        *,
        before: int | None = None,
    ) -> BuiltContext:
        """Pack summary, recalled and recent turns older than seq `before` into `history_budget`."""
        started = time.perf_counter()
        index = await self.indexes.get(user, cid)
        last = index.upto if before is None else min(index.upto, before - 1)
        stored = await self.store.messages(
            user, cid, start=max(1, last - RECENT_FETCH + 1), end=last
        )
        by_seq = {m.seq: m for m in stored}
        newest_first = [Turn(m.seq, self._cost(m)) for m in reversed(stored)]
        everything = pack_recent(newest_first, history_budget)
        if len(everything) == len(stored) and last <= RECENT_FETCH:
            plan = _Plan(Summary(), [], everything)
        else:
            plan = await self._plan(
                user=user,
                cid=cid,
                index=index,
                last=last,
                query=new_message,
                newest_first=newest_first,
                budget=history_budget,
            )
        self._recent_start[(user, cid)] = plan.recent[0].seq if plan.recent else last + 1
        return self._assemble(
            plan,
            by_seq=by_seq,
            system=system,
            new_message=new_message,
            budget=history_budget,
            started=started,
        )

    async def _plan(
        self,
        *,
        user: str,
        cid: str,
        index: ConversationIndex,
        last: int,
        query: str,
        newest_first: list[Turn],
        budget: int,
    ) -> _Plan:
        summary = await self.store.get_summary(user, cid)
        summary_cost = self._line_cost(f"{SUMMARY_HEADER}\n{summary.text}\n") if summary.text else 0
        if summary_cost > budget * SUMMARY_SHARE:
            summary, summary_cost = Summary(), 0
        recent = pack_recent(newest_first, recent_budget(budget - summary_cost, RECENT_SHARE))
        overhead = self._blank + self._line_cost(RECALL_HEADER + "\n\n")
        room = budget - summary_cost - sum(t.cost for t in recent) - overhead
        lines, found = await self._recall(
            user=user, cid=cid, index=index, last=last, query=query, room=room
        )
        exclude = frozenset(t.seq for t in recent)
        days = {ln.day: self._line_cost(f"[{ln.day}]") for ln in lines}
        return _Plan(summary, pack_lines(lines, max(0, room), exclude, days), recent, found)

    async def _recall(
        self, *, user: str, cid: str, index: ConversationIndex, last: int, query: str, room: int
    ) -> tuple[list[Line], dict[int, Message]]:
        """Candidate lines, best first, read from Redis (so forgotten turns drop out)."""
        if room <= 0:
            return [], {}
        cands = [c for c in index.candidates if c.seq <= last]
        vector: dict[int, float] = {}
        if self.embedder is not None:
            qvec = (await self.embedder.embed([query]))[0]
            hits = await self.store.similar(user, cid, qvec, VECTOR_CANDIDATES)
            vector = {h.seq: h.score for h in hits if h.seq <= last}
        lexical = index.lexical.scores(terms(query))
        ranked = fuse(cands, vector, lexical, named_speaker(query, index.speakers))
        wanted = ranked[: room // MIN_LINE_TOKENS + RECENT_FETCH]
        found = {
            m.seq: m for m in await self.store.messages_by_seq(user, cid, [s for s, _ in wanted])
        }
        lines = [
            Line(seq, day_label(m.time), line_text(m), self._line_cost(line_text(m)), score)
            for seq, score in wanted
            if (m := found.get(seq)) is not None
        ]
        return lines, found

    def _assemble(
        self,
        plan: _Plan,
        *,
        by_seq: dict[int, Message],
        system: str,
        new_message: str,
        budget: int,
        started: float,
    ) -> BuiltContext:
        head, tail = [ChatMessage("system", system)], [ChatMessage("user", new_message)]
        fixed = self.tokenizer.count(head + tail)
        while True:  # estimates are exact for additive templates; this makes any template exact
            memory = self._memory_messages(plan)
            recent = [as_chat(by_seq[t.seq]) for t in plan.recent]
            messages = head + memory + recent + tail
            prompt_tokens = self.tokenizer.count(messages)
            if prompt_tokens - fixed <= budget or _empty(plan):
                break
            plan = _shrink(plan)
        history = prompt_tokens - fixed
        record = self._record(
            plan,
            by_seq=by_seq,
            budget=budget,
            history=history,
            prompt_tokens=prompt_tokens,
            memory=memory,
            started=started,
        )
        return BuiltContext(messages, record)

    def _memory_messages(self, plan: _Plan) -> list[ChatMessage]:
        text = memory_text(plan.summary.text, render_lines(plan.lines))
        return [ChatMessage("system", text)] if text else []

    def _record(
        self,
        plan: _Plan,
        *,
        by_seq: dict[int, Message],
        budget: int,
        history: int,
        prompt_tokens: int,
        memory: list[ChatMessage],
        started: float,
    ) -> ContextRecord:
        memory_cost = self.tokenizer.message_cost(memory[0]) if memory else 0
        summary_cost = (
            self.tokenizer.message_cost(ChatMessage("system", memory_text(plan.summary.text, "")))
            if plan.summary.text
            else 0
        )
        recent = [
            PackedTurn(t.seq, m.role, "recent", t.cost, m.time, None, m.speaker)
            for t in plan.recent
            if (m := by_seq[t.seq])
        ]
        recalled = [
            PackedTurn(ln.seq, m.role, "recalled", ln.cost, m.time, round(ln.score, 4), m.speaker)
            for ln in plan.lines
            if (m := plan.recalled[ln.seq])
        ]
        return ContextRecord(
            budget=budget,
            history_tokens=history,
            prompt_tokens=prompt_tokens,
            sections={
                "summary": summary_cost,
                "recalled": memory_cost - summary_cost,
                "recent": history - memory_cost,
            },
            turns=recalled + recent,
            summary_version=plan.summary.version if plan.summary.text else 0,
            summary_upto=plan.summary.upto_seq if plan.summary.text else 0,
            build_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def record(
        self, user: str, cid: str, role: str, text: str, *, status: str = "completed"
    ) -> Message:
        """Store one turn now (before generation for user turns, after it for replies)."""
        return await self.store.append(user, cid, role, text, status=status, at=time.time())

    async def index(self, user: str, cid: str, messages: list[Message]) -> None:
        """Embed stored turns (as `speaker: text`) and add them to the conversation's vector set."""
        if self.embedder is None or not messages:
            return
        vectors = await self.embedder.embed([line_text(m) for m in messages])
        await self.store.add_vectors(user, cid, [m.seq for m in messages], vectors)

    async def after_reply(self, user: str, cid: str) -> None:
        """Fold turns that left the recent window into the summary."""
        if self.summarizer is None:
            return
        upto = self._recent_start.get((user, cid), 1) - 1
        await self.summarizer.fold(user, cid, upto)

    def invalidate(self, user: str, cid: str) -> None:
        """Drop derived recall state after turns were forgotten or the conversation deleted."""
        self.indexes.invalidate(user, cid)
        self._recent_start.pop((user, cid), None)

    def _cost(self, message: Message) -> int:
        return self.tokenizer.message_cost(as_chat(message))

    def _line_cost(self, text: str) -> int:
        """Tokens a line adds inside the memory message, newline included."""
        return self.tokenizer.message_cost(ChatMessage("system", text + "\n")) - self._blank


def _shrink(plan: _Plan) -> _Plan:
    """Drop the weakest recalled line, else the oldest recent turn, else the summary."""
    if plan.lines:
        weakest = min(plan.lines, key=lambda ln: ln.score)
        lines = [ln for ln in plan.lines if ln is not weakest]
        return _Plan(plan.summary, lines, plan.recent, plan.recalled)
    if plan.recent:
        return _Plan(plan.summary, [], plan.recent[1:], plan.recalled)
    return _Plan(Summary(), [], [])


def _empty(plan: _Plan) -> bool:
    return not (plan.lines or plan.recent or plan.summary.text)
