"""Fixtures and fakes for memory tests: a summary model, small LoCoMo-format conversations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from models.types import CancelToken, ChatMessage, Delta, Finished, SamplingParams
from tests.fakes import FakeTokenizer


class FakeSummaryModel:
    """Replies with enqueued texts (or raises enqueued errors) and records every prompt."""

    def __init__(self, n_ctx: int = 2048) -> None:
        self.tokenizer = FakeTokenizer()
        self.n_ctx = n_ctx
        self.history: list[list[ChatMessage]] = []
        self.priorities: list[int] = []
        self.replies: list[str | Exception] = []
        self.gate: asyncio.Event | None = None  # when set, each reply waits for it

    def enqueue(self, *replies: str | Exception) -> None:
        """Replies to give, in order."""
        self.replies.extend(replies)

    async def stream(
        self,
        messages: list[ChatMessage],
        params: SamplingParams,
        cancel: CancelToken,
        *,
        priority: int = 0,
    ) -> AsyncIterator[Delta | Finished]:
        """Yield the next enqueued reply in one piece."""
        self.history.append(list(messages))
        self.priorities.append(priority)
        if self.gate is not None:
            await self.gate.wait()
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        yield Delta(reply)
        yield Finished("completed", self.tokenizer.count(messages), 1, 0, 1.0, 1.0)


def locomo_conversation(sessions: list[tuple[str, list[tuple[str, str]]]]) -> dict[str, Any]:
    """A LoCoMo-format dict from (date_time, [(speaker, text)]) sessions; speakers A and B."""
    data: dict[str, Any] = {"speaker_a": "Alice", "speaker_b": "Bob", "qa": []}
    for n, (when, turns) in enumerate(sessions, start=1):
        data[f"session_{n}_date_time"] = when
        data[f"session_{n}"] = [
            {"speaker": spk, "dia_id": f"D{n}:{i}", "text": text}
            for i, (spk, text) in enumerate(turns, start=1)
        ]
    return data


FILLER = [
    "How was your week?",
    "Pretty busy, lots of meetings at work.",
    "Did you watch the game on Sunday?",
    "No, I was cooking dinner for my parents.",
    "That sounds nice, what did you make?",
    "A big pot of vegetable soup and fresh bread.",
]
