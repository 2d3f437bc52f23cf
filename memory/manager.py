"""The memory manager: records turns and packs each reply's context within an exact budget."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from memory.index_cache import ConversationIndex, IndexCache
from memory.layout import NOTE_TOKENS
from memory.lexical import terms
from memory.packing import Budget, Line, Turn, pack_lines, pack_recent, recent_budget, render_lines
from memory.recall import aligned, fuse, named_speaker, without_names
from memory.render import (
    RECALL_HEADER,
    SUMMARY_HEADER,
    as_chat,
    day_label,
    line_text,
    memory_text,
    without_year,
    year_shown_on_change,
)
from memory.store import Message, Store, Summary
from memory.summary import Summarizer, SummaryModel
from memory.turns import Prefiller, Turns
from models.errors import NotFound
from models.types import ChatMessage, Tokenizer

Vectors = npt.NDArray[np.float32]
log = logging.getLogger(__name__)

RECENT_FETCH = 64  # newest turns considered for the recent window
RECENT_SHARE = 0.1  # of the history budget, kept for the newest turns once recall is needed
SUMMARY_SHARE = 0.2  # the summary is left out when it would take more of the budget than this
VECTOR_CANDIDATES = 400  # nearest turns asked of the vector set
MAX_KEPT_RECORDS = 256  # latest inspection records kept for the HTTP API
MIN_LINE_TOKENS = 12  # a lower bound on a recalled line's cost, to size the candidate list
MIN_RECENT_TURNS = 2  # the last exchange stays in the recent window whatever the message
CONTINUED_TOP = 10  # the whole window stays when one of its turns ranks among this many best


class Embedder(Protocol):
    """What memory needs of an embedder."""

    async def embed(self, texts: list[str]) -> Vectors:
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
    summary_upto: int = 0  # the summary used covers turns 1..summary_upto
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
    """The chosen content of one prompt, before rendering."""

    summary: Summary
    lines: list[Line]
    recent: list[Turn]


@dataclass(frozen=True)
class _Query:
    """One context build's inputs."""

    user: str
    cid: str
    text: str
    last: int  # the newest seq the context may use
    budget: int


class MemoryManager:
    """Stores turns, indexes them for recall, folds old ones into a summary, and builds contexts."""

    def __init__(
        self,
        store: Store,
        tokenizer: Tokenizer,
        embedder: Embedder | None,
        *,
        summarizer_model: SummaryModel | None = None,
        prefiller: Prefiller | None = None,
        note_tokens: int = NOTE_TOKENS,
    ) -> None:
        self.store = store
        self.tokenizer = tokenizer
        self.embedder = embedder
        self.indexes = IndexCache(store)
        self.summarizer = Summarizer(store, summarizer_model) if summarizer_model else None
        self._recent_start: dict[tuple[str, str], int] = {}
        self._last_record: dict[tuple[str, str], ContextRecord] = {}
        self._blank = tokenizer.message_cost(ChatMessage("system", ""))
        self.turns = Turns(self, prefiller, note_tokens)

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
        query = _Query(user, cid, new_message, last, history_budget)
        older = index.candidates.upto(last)
        big = len(older) > RECENT_FETCH
        embedding = self._start_embedding(new_message, index.speakers) if big else None
        newest = [index.messages[seq] for seq in reversed(older.seq[-RECENT_FETCH:].tolist())]
        newest_first = [Turn(m.seq, self._cost(m)) for m in newest]
        everything = pack_recent(newest_first, history_budget)
        if len(everything) == len(older):
            plan = _Plan(Summary(), [], everything)
        else:
            plan = await self._plan(query, index, newest_first, embedding)
        plan, by_seq = await self._verified(query, plan)
        self._recent_start[(user, cid)] = plan.recent[0].seq if plan.recent else last + 1
        built = self._assemble(plan, by_seq, system, query, started)
        self._last_record[(user, cid)] = built.record
        while len(self._last_record) > MAX_KEPT_RECORDS:
            self._last_record.pop(next(iter(self._last_record)))
        return built

    def last_record(self, user: str, cid: str) -> ContextRecord | None:
        """The inspection record of this process's latest context build, if any."""
        return self._last_record.get((user, cid))

    async def latest_record(self, user: str, cid: str) -> dict[str, Any] | None:
        """The inspection record of the conversation's latest reply, whichever replica built it
        (else this process's latest build), JSON-ready."""
        raw = await self.store.get_record(user, cid)
        if raw is not None:
            record: dict[str, Any] = json.loads(raw)
            return record
        local = self.last_record(user, cid)
        return None if local is None else local.as_dict()

    def _start_embedding(
        self, text: str, speakers: Iterable[str] = ()
    ) -> asyncio.Future[Vectors] | None:
        """Embed the message (and its copy without speaker names) while the build proceeds."""
        if self.embedder is None:
            return None
        content = without_names(text, speakers)
        texts = [text, content] if content and content != text else [text]
        return asyncio.ensure_future(self.embedder.embed(texts))

    async def _plan(
        self,
        query: _Query,
        index: ConversationIndex,
        newest_first: list[Turn],
        embedding: asyncio.Future[Vectors] | None,
    ) -> _Plan:
        summary = await self.store.get_summary(query.user, query.cid)
        summary_cost = self._line_cost(f"{SUMMARY_HEADER}\n{summary.text}\n") if summary.text else 0
        if summary_cost > query.budget * SUMMARY_SHARE:
            summary, summary_cost = Summary(), 0
        share = recent_budget(query.budget - summary_cost, RECENT_SHARE)
        window = pack_recent(newest_first, share)
        room = query.budget - summary_cost - self._blank - self._line_cost(RECALL_HEADER + "\n")
        lines = await self._recall(
            query, index, room - _cost(window[-MIN_RECENT_TURNS:]), embedding
        )
        recent = _recent_window(window, lines)
        room -= _cost(recent) + self._year_reserve(lines)
        days = {d: self._line_cost(f"[{without_year(d)}]") for d in {ln.day for ln in lines}}
        packed = pack_lines(lines, max(0, room), frozenset(t.seq for t in recent), days)
        return _Plan(summary, year_shown_on_change(packed), recent)

    def _year_reserve(self, lines: list[Line]) -> int:
        """Tokens the headings' years may add: one full heading per distinct year."""
        labels = {ln.day.rsplit(" ", 1)[-1]: ln.day for ln in lines}.values()
        return sum(
            self._line_cost(f"[{d}]") - self._line_cost(f"[{without_year(d)}]") for d in labels
        )

    async def _recall(
        self,
        query: _Query,
        index: ConversationIndex,
        room: int,
        embedding: asyncio.Future[Vectors] | None,
    ) -> list[Line]:
        """Candidate lines, best first: vector and lexical scores fused with structure."""
        cands = index.candidates.upto(query.last)
        # names: the speaker bonus rewards the named speaker's turns; BM25 scores the content
        lexical = index.lexical.scores(terms(without_names(query.text, index.speakers)))
        vector: dict[int, float] = {}
        if embedding is not None:
            hits = await self.store.similar(
                query.user, query.cid, _direction(await embedding), VECTOR_CANDIDATES
            )
            vector = {h.seq: h.score for h in hits if h.seq <= query.last}
        ranking = fuse(
            cands,
            aligned(cands, vector, None),
            lexical[: len(cands)],
            named_speaker(query.text, index.speakers),
        )
        wanted = ranking.top(max(0, room) // MIN_LINE_TOKENS + RECENT_FETCH)
        return [self._line(index, seq, score) for seq, score in wanted]

    def _line(self, index: ConversationIndex, seq: int, score: float) -> Line:
        known = index.lines.get(seq)
        if known is None:
            m = index.messages[seq]
            text = line_text(m)
            known = index.lines[seq] = (day_label(m.time), text, self._line_cost(text))
        return Line(seq, known[0], known[1], known[2], score)

    async def _verified(self, query: _Query, plan: _Plan) -> tuple[_Plan, dict[int, Message]]:
        """Re-read the chosen turns from Redis, the source of truth; drop any since forgotten."""
        seqs = [ln.seq for ln in plan.lines] + [t.seq for t in plan.recent]
        found = await self.store.messages_by_seq(query.user, query.cid, seqs)
        by_seq = {m.seq: m for m in found}
        if len(by_seq) == len(seqs):
            return plan, by_seq
        self.invalidate(query.user, query.cid)
        lines = [ln for ln in plan.lines if ln.seq in by_seq]
        return _Plan(plan.summary, lines, [t for t in plan.recent if t.seq in by_seq]), by_seq

    def _assemble(
        self, plan: _Plan, by_seq: dict[int, Message], system: str, query: _Query, started: float
    ) -> BuiltContext:
        head, tail = [ChatMessage("system", system)], [ChatMessage("user", query.text)]
        fixed = self.tokenizer.count(head + tail)
        while True:  # estimates are exact for additive templates; this makes any template exact
            text = memory_text(plan.summary.text, render_lines(plan.lines))
            memory = [ChatMessage("system", text)] if text else []
            recent = [as_chat(by_seq[t.seq]) for t in plan.recent]
            messages = head + memory + recent + tail
            prompt_tokens = self.tokenizer.count(messages)
            excess = prompt_tokens - fixed - query.budget
            if excess <= 0 or _empty(plan):
                break
            plan = _shrink(plan, excess)
        record = self._record(plan, by_seq, query.budget, prompt_tokens - fixed, prompt_tokens)
        record = replace(record, build_ms=round((time.perf_counter() - started) * 1000, 2))
        return BuiltContext(messages, record)

    def _record(
        self, plan: _Plan, by_seq: dict[int, Message], budget: int, history: int, prompt: int
    ) -> ContextRecord:
        summary_cost = (
            self.tokenizer.message_cost(ChatMessage("system", memory_text(plan.summary.text, "")))
            if plan.summary.text
            else 0
        )
        recent_cost = sum(t.cost for t in plan.recent)
        turns = [
            PackedTurn(ln.seq, m.role, "recalled", ln.cost, m.time, round(ln.score, 4), m.speaker)
            for ln in plan.lines
            if (m := by_seq[ln.seq])
        ] + [
            PackedTurn(t.seq, m.role, "recent", t.cost, m.time, None, m.speaker)
            for t in plan.recent
            if (m := by_seq[t.seq])
        ]
        return ContextRecord(
            budget=budget,
            history_tokens=history,
            prompt_tokens=prompt,
            sections={
                "summary": summary_cost,
                "recalled": history - summary_cost - recent_cost,
                "recent": recent_cost,
            },
            turns=turns,
            summary_version=plan.summary.version if plan.summary.text else 0,
            summary_upto=plan.summary.upto_seq if plan.summary.text else 0,
        )

    async def record(
        self, user: str, cid: str, role: str, text: str, *, status: str = "completed"
    ) -> Message:
        """Store one turn now (before generation for user turns, after it for replies)."""
        return await self.store.append(user, cid, role, text, status=status, at=time.time())

    async def index(self, user: str, cid: str, messages: list[Message]) -> None:
        """Embed stored turns (as `speaker: text`) and add them to the conversation's vector set;
        cost their recalled lines now, so that context builds find them costed."""
        if not messages:
            return
        if self.embedder is not None:
            await self._embed(user, cid, messages)
            messages = [*messages, *await self._missed(user, cid, messages)]
        try:
            index = await self.indexes.get(user, cid)
        except NotFound:
            return  # deleted meanwhile
        for m in messages:
            if m.seq in index.messages:
                self._line(index, m.seq, 0.0)

    async def _embed(self, user: str, cid: str, messages: list[Message]) -> None:
        assert self.embedder is not None
        vectors = await self.embedder.embed([line_text(m) for m in messages])
        await self.store.add_vectors(user, cid, [m.seq for m in messages], vectors)

    async def _missed(self, user: str, cid: str, indexed: list[Message]) -> list[Message]:
        """Embed earlier turns whose own indexing was lost (an embedding that finished while
        Redis was down is dropped with the background task): the first turn indexed after the
        outage repairs them. Returns them."""
        own = {m.seq for m in indexed}
        seqs = [s for s in await self.store.unindexed(user, cid, max(own)) if s not in own]
        if not seqs:
            return []
        log.info("indexing %d earlier turns of %s that have no vector", len(seqs), cid)
        missed = await self.store.messages_by_seq(user, cid, seqs)
        await self._embed(user, cid, missed)
        return missed

    async def build_turn(
        self,
        user: str,
        cid: str,
        new_message: str,
        history_budget: int,
        system: str,
        *,
        before: int,
    ) -> BuiltContext:
        """A chat turn's prompt along the conversation's cached layout (see memory/layout.py);
        its inspection record is stored for every replica."""
        turns = self.turns
        built = await turns.build(user, cid, new_message, history_budget, system, before=before)
        await self.store.put_record(user, cid, json.dumps(built.record.as_dict()))
        return built

    async def after_reply(self, user: str, cid: str) -> None:
        """Background work after a reply: fold turns that left the timeline into the summary,
        then, when the layout is nearly full, lay it out afresh and prefill its prefix."""
        try:
            if self.summarizer is not None:
                upto = self._recent_start.get((user, cid), 1) - 1
                await self.summarizer.fold(user, cid, upto)
            await self.turns.prepare_next(user, cid)
        except NotFound:
            pass  # the conversation was deleted meanwhile: nothing left to prepare

    async def edited(self, user: str, cid: str) -> None:
        """After an edit that no stored turn shows (the summary rewritten): drop derived state
        here and, through the conversation's epoch and stored layout, on every replica."""
        await self.store.mark_edited(user, cid)
        self.invalidate(user, cid)

    def invalidate(self, user: str, cid: str) -> None:
        """Drop derived state after turns were forgotten, the summary edited or the conversation
        deleted: the next reply lays its prompt out afresh."""
        self.indexes.invalidate(user, cid)
        self.turns.stale.add((user, cid))
        self._recent_start.pop((user, cid), None)
        self._last_record.pop((user, cid), None)

    def _cost(self, message: Message) -> int:
        return self.tokenizer.message_cost(as_chat(message))

    def _line_cost(self, text: str) -> int:
        """Tokens a line adds inside the memory message, newline included."""
        return self.tokenizer.message_cost(ChatMessage("system", text + "\n")) - self._blank


def _direction(vectors: Vectors) -> Vectors:
    """The normalized mean of the message's vectors."""
    mean = vectors.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    out: Vectors = (mean / norm if norm > 0 else mean).astype(np.float32)
    return out


def _cost(turns: list[Turn]) -> int:
    return sum(t.cost for t in turns)


def _recent_window(window: list[Turn], ranked: list[Line]) -> list[Turn]:
    """The whole recent window when the message continues it (one of its turns ranks among the
    best recall candidates), else only the last exchange: the rest of the share goes to recall."""
    best = {ln.seq for ln in ranked[:CONTINUED_TOP]}
    if any(t.seq in best for t in window):
        return window
    return window[-MIN_RECENT_TURNS:]


def _empty(plan: _Plan) -> bool:
    return not (plan.lines or plan.recent or plan.summary.text)


def _shrink(plan: _Plan, excess: int) -> _Plan:
    """Drop the weakest recalled lines worth `excess` tokens, else the oldest recent turn, else
    the summary."""
    if plan.lines:
        dropped: set[int] = set()
        for line in sorted(plan.lines, key=lambda ln: ln.score):
            if excess <= 0:
                break
            dropped.add(line.seq)
            excess -= line.cost
        lines = [ln for ln in plan.lines if ln.seq not in dropped]
        return _Plan(plan.summary, lines, plan.recent)
    if plan.recent:
        return _Plan(plan.summary, [], plan.recent[1:])
    return _Plan(Summary(), [], [])
