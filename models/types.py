"""Small value types shared by the model backends and their callers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["completed", "cancelled", "length", "error"]


@dataclass(frozen=True)
class ChatMessage:
    """One message of a prompt, as the chat template sees it."""

    role: Role
    content: str


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one reply."""

    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    seed: int | None = None
    stop: tuple[str, ...] = ()  # the reply ends at the first of these to be complete, cut before it


@dataclass(frozen=True)
class Delta:
    """A piece of generated text."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The end of a generation, with exact token accounting and timings."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    ttft_ms: float
    tokens_per_s: float
    error: str = ""


class Tokenizer(Protocol):
    """Exact token counts through a model's own chat template and vocabulary."""

    def count(self, messages: list[ChatMessage], *, add_generation_prompt: bool = True) -> int:
        """Tokens of the whole prompt these messages render to."""
        ...

    def message_cost(self, message: ChatMessage) -> int:
        """Tokens one message adds to a prompt."""
        ...


class CancelToken(Protocol):
    """Something the generator polls between tokens."""

    def is_set(self) -> bool:
        """True once generation should stop."""
        ...


class ChatModel(Protocol):
    """The narrow contract a generation backend implements."""

    @property
    def tokenizer(self) -> Tokenizer:
        """Exact counts for this model's prompts."""
        ...

    @property
    def n_ctx(self) -> int:
        """The context window in tokens."""
        ...

    @property
    def ready(self) -> bool:
        """True once the model accepts work."""
        ...

    def stream(
        self,
        messages: list[ChatMessage],
        params: SamplingParams,
        cancel: CancelToken,
        *,
        priority: int = ...,
        cache_key: str | None = None,
    ) -> AsyncIterator[Delta | Finished]:
        """Yield reply deltas, then one Finished; `cache_key` names a conversation's KV state.

        Lower `priority` goes first; background work yields to waiting chat requests.
        """
        ...

    async def prefill(self, messages: list[ChatMessage], *, cache_key: str) -> Finished:
        """Evaluate a prompt prefix into a conversation's KV state, in the background."""
        ...

    def close(self) -> None:
        """Release the model."""
        ...
