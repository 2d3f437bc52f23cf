"""Fakes for unit tests: a recording chat model, a word tokenizer, a text-dependent embedder."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator

import numpy as np
import numpy.typing as npt

from models.types import CancelToken, ChatMessage, Delta, Finished, SamplingParams

WORD = re.compile(r"\w+|[^\w\s]")
PER_MESSAGE = 4  # like ChatML: role markers and separators
GENERATION_PROMPT = 3
BACKGROUND_TEXT = "The user and the assistant talked about several everyday things."


class FakeTokenizer:
    """One token per word or punctuation mark, plus fixed per-message overhead."""

    def message_cost(self, message: ChatMessage) -> int:
        """Tokens one message adds."""
        return PER_MESSAGE + len(WORD.findall(message.content))

    def count(self, messages: list[ChatMessage], *, add_generation_prompt: bool = True) -> int:
        """Tokens of the whole prompt."""
        extra = GENERATION_PROMPT if add_generation_prompt else 0
        return sum(self.message_cost(m) for m in messages) + extra


class FakeLLM:
    """Replies with enqueued texts word by word and records every prompt it was given."""

    def __init__(self, n_ctx: int = 2048) -> None:
        self.tokenizer = FakeTokenizer()
        self.n_ctx = n_ctx
        self.history: list[list[ChatMessage]] = []
        self.prefills: list[tuple[str, list[ChatMessage]]] = []
        self.replies: list[str] = []
        self.permits: asyncio.Semaphore | None = None  # when set, each token takes one permit
        self.is_ready = True
        self.closed = False
        self.failure: tuple[int, Exception | None] | None = None
        self.summaries: list[str | Exception] = []  # background outputs, then BACKGROUND_TEXT

    @property
    def ready(self) -> bool:
        """Whether the fake accepts work."""
        return self.is_ready

    def hold(self, tokens: int) -> None:
        """Let only this many tokens out until allow() is called."""
        self.permits = asyncio.Semaphore(tokens)

    def allow(self, tokens: int) -> None:
        """Let more tokens out."""
        assert self.permits is not None
        for _ in range(tokens):
            self.permits.release()

    def enqueue(self, replies: list[str]) -> None:
        """Replies to give, in order (then 'ok')."""
        self.replies.extend(replies)

    def fail(self, after: int, error: Exception | None = None) -> None:
        """Make the next chat reply fail after `after` tokens: raise `error` out of the stream,
        or with none end it as the engine does when it catches a crash (reason "error")."""
        self.failure = (after, error)

    def _background(self) -> str:
        item = self.summaries.pop(0) if self.summaries else BACKGROUND_TEXT
        if isinstance(item, Exception):
            raise item
        return item

    async def stream(
        self,
        messages: list[ChatMessage],
        params: SamplingParams,
        cancel: CancelToken,
        *,
        priority: int = 0,
        cache_key: str | None = None,
    ) -> AsyncIterator[Delta | Finished]:
        """Yield the next enqueued reply a word at a time."""
        self.history.append(list(messages))
        # Enqueued replies are for chat requests; background work (summaries) gets its own.
        chat = priority == 0
        text = (self.replies.pop(0) if self.replies else "ok") if chat else self._background()
        failure, self.failure = (self.failure, None) if chat else (None, self.failure)
        words = text.split(" ")
        sent = 0
        reason = "completed"
        for i, word in enumerate(words):
            if failure is not None and sent == failure[0]:
                if failure[1] is not None:
                    raise failure[1]
                reason = "error"
                break
            if self.permits is not None:
                await self.permits.acquire()
            if cancel.is_set():
                reason = "cancelled"
                break
            if sent >= params.max_tokens:
                reason = "length"
                break
            yield Delta(word if i == 0 else " " + word)
            sent += 1
            await asyncio.sleep(0)
        error = "fake crash" if reason == "error" else ""
        count = self.tokenizer.count(messages)
        yield Finished(reason, count, sent, 0, 1.0, 100.0, error)  # type: ignore[arg-type]

    async def prefill(self, messages: list[ChatMessage], *, cache_key: str) -> Finished:
        """Record the prefix it was asked to evaluate."""
        self.prefills.append((cache_key, list(messages)))
        tokens = self.tokenizer.count(messages, add_generation_prompt=False)
        return Finished("completed", tokens, 0, 0, 0.0, 0.0)

    def close(self) -> None:
        """Record that the owner released it."""
        self.closed = True


class FakeEmbedder:
    """Hashed bag of words: texts sharing words have similar vectors."""

    dim = 64

    async def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """One normalized vector per text."""
        return self.embed_sync(texts)

    def embed_sync(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Same, without a loop."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in WORD.findall(text.lower()):
                digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
                out[row, int.from_bytes(digest, "little") % self.dim] += 1.0
            norm = np.linalg.norm(out[row])
            out[row] = out[row] / norm if norm else out[row]
        return out
