"""The memory manager: records turns and packs each reply's context within an exact budget."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from memory.packing import Budget, Turn, pack_recent
from memory.store import Message, Store
from models.types import ChatMessage, Tokenizer

RECENT_FETCH = 64  # newest turns read per context build; more rarely fit a small context


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


@dataclass(frozen=True)
class ContextRecord:
    """The inspection record: what was packed into one prompt, and why."""

    budget: int
    history_tokens: int
    prompt_tokens: int
    sections: dict[str, int]
    turns: list[PackedTurn] = field(default_factory=list)
    summary_version: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the wire and the API."""
        return asdict(self)


@dataclass(frozen=True)
class BuiltContext:
    """The messages to send the model, and the record of how they were chosen."""

    messages: list[ChatMessage]
    record: ContextRecord


class MemoryManager:
    """Stores turns and builds contexts from them."""

    def __init__(self, store: Store, tokenizer: Tokenizer, embedder: Embedder | None) -> None:
        self.store = store
        self.tokenizer = tokenizer
        self.embedder = embedder

    def budget(self, n_ctx: int, reply_reserve: int, system: str, new_message: str) -> Budget:
        """The history budget left once the system prompt, message and reply are reserved."""
        fixed = self.tokenizer.count([ChatMessage("system", system), ChatMessage("user", new_message)])
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
        """Pack the newest stored turns (older than seq `before`) that fit in `history_budget`."""
        last = await self.store.last_seq(user, cid) if before is None else before - 1
        stored = await self.store.messages(user, cid, start=max(1, last - RECENT_FETCH + 1), end=last)
        by_seq = {m.seq: m for m in stored}
        newest_first = [Turn(m.seq, self._cost(m)) for m in reversed(stored)]
        chosen = pack_recent(newest_first, history_budget)
        head = [ChatMessage("system", system)]
        tail = [ChatMessage("user", new_message)]
        fixed = self.tokenizer.count(head + tail)
        while True:  # costs are exact for additive templates; this makes any template exact
            messages = head + [_as_chat(by_seq[t.seq]) for t in chosen] + tail
            prompt_tokens = self.tokenizer.count(messages)
            if prompt_tokens - fixed <= history_budget or not chosen:
                break
            chosen = chosen[1:]
        record = ContextRecord(
            budget=history_budget,
            history_tokens=sum(t.cost for t in chosen),
            prompt_tokens=prompt_tokens,
            sections={"summary": 0, "recalled": 0, "recent": sum(t.cost for t in chosen)},
            turns=[
                PackedTurn(t.seq, by_seq[t.seq].role, "recent", t.cost, by_seq[t.seq].time)
                for t in chosen
            ],
        )
        return BuiltContext(messages, record)

    async def record(
        self, user: str, cid: str, role: str, text: str, *, status: str = "completed"
    ) -> Message:
        """Store one turn now (before generation for user turns, after it for replies)."""
        return await self.store.append(user, cid, role, text, status=status, at=time.time())

    async def index(self, user: str, cid: str, messages: list[Message]) -> None:
        """Embed stored turns and add them to the conversation's vector set."""
        if self.embedder is None or not messages:
            return
        vectors = await self.embedder.embed([m.text for m in messages])
        await self.store.add_vectors(user, cid, [m.seq for m in messages], vectors)

    def _cost(self, message: Message) -> int:
        return self.tokenizer.message_cost(_as_chat(message))


def _as_chat(message: Message) -> ChatMessage:
    role = "assistant" if message.role == "assistant" else "user"
    text = f"{message.speaker}: {message.text}" if message.speaker else message.text
    return ChatMessage(role, text)
