"""The rolling summary: the local model folds turns that left the recent window into it.

It runs in the background after a reply, one job per conversation at a time across every
replica (a Redis lock that expires should its holder die), and only a summary that passes
`check_summary` is written, compare-and-set on its version.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from memory.render import day_label, line_text
from memory.store import Message, Store, Summary
from models.llama_engine import PRIORITY_BACKGROUND
from models.types import CancelToken, ChatMessage, Delta, Finished, SamplingParams, Tokenizer

log = logging.getLogger(__name__)

SUMMARY_CAP_TOKENS = 256
FOLD_MIN_TURNS = 6  # fewer pending turns than this wait for the next reply
FOLD_INPUT_TOKENS = 1024  # turns folded per job, so the prompt fits a small model's context
FOLD_LOCK_MS = 300_000  # a fold's lock outlives any healthy job; a dead replica's lapses
SUMMARY_TEMPERATURE = 0.2
MIN_UNIQUE_WORD_RATIO = 0.3  # below this the output is degenerate repetition
COPY_NGRAM = 8
MAX_COPIED_NGRAMS = 0.6  # above this share of copied 8-grams the output is a copy, not a summary
INSTRUCTIONS = (
    "You keep a short running summary of a conversation. Merge the previous summary with the "
    "new turns. Keep names, dates, facts, plans and preferences. Write plain prose, at most "
    "{words} words. Output only the summary."
)


class SummaryModel(Protocol):
    """What summarizing needs of a chat model: streaming at background priority."""

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's own tokenizer."""
        ...

    def stream(
        self,
        messages: list[ChatMessage],
        params: SamplingParams,
        cancel: CancelToken,
        *,
        priority: int = ...,
    ) -> AsyncIterator[Delta | Finished]:
        """Yield deltas, then one Finished."""
        ...


@dataclass(frozen=True)
class SummaryPolicy:
    """The summary's limits."""

    cap_tokens: int = SUMMARY_CAP_TOKENS
    min_turns: int = FOLD_MIN_TURNS
    input_tokens: int = FOLD_INPUT_TOKENS
    lock_ms: int = FOLD_LOCK_MS


def fold_prompt(previous: str, turns: list[Message], cap_tokens: int) -> list[ChatMessage]:
    """The messages that ask the model for an updated summary."""
    lines: list[str] = []
    day = ""
    for m in turns:
        if day_label(m.time) != day:
            day = day_label(m.time)
            lines.append(f"[{day}]")
        lines.append(line_text(m))
    body = f"Previous summary:\n{previous or '(none)'}\n\nNew turns:\n" + "\n".join(lines)
    return [
        ChatMessage("system", INSTRUCTIONS.format(words=cap_tokens * 2 // 3)),
        ChatMessage("user", body + "\n\nUpdated summary:"),
    ]


def check_summary(text: str, source: str, tokens: int, cap_tokens: int) -> str | None:
    """Why a generated summary must be discarded, or None when it is fit to store."""
    words = re.findall(r"\w+", text.lower())
    if not words:
        return "empty"
    if tokens > cap_tokens:
        return "over its token cap"
    if len(words) >= 10 and len(set(words)) / len(words) < MIN_UNIQUE_WORD_RATIO:
        return "degenerate repetition"
    if _copied_share(words, re.findall(r"\w+", source.lower())) > MAX_COPIED_NGRAMS:
        return "a copy of the prompt"
    if _copied_sentences(text, source) > MAX_COPIED_NGRAMS:
        return "a copy of the prompt"
    return None


def _copied_sentences(text: str, source: str) -> float:
    """Share of the output's sentences that appear verbatim in the prompt."""
    flat = " ".join(source.lower().split())
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", " ".join(text.lower().split())) if s]
    return sum(s in flat for s in sentences) / len(sentences) if sentences else 0.0


def _copied_share(words: list[str], source: list[str]) -> float:
    n = COPY_NGRAM
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    seen = {tuple(source[i : i + n]) for i in range(len(source) - n + 1)}
    return sum(g in seen for g in grams) / len(grams)


def trim_to_sentence(text: str) -> str:
    """Cut a reply that hit its length limit back to its last full sentence."""
    ends = [m.end() for m in re.finditer(r"[.!?](\s|$)", text)]
    return text[: ends[-1]].strip() if ends else ""


class Summarizer:
    """Folds old turns into a conversation's summary with a local model."""

    def __init__(
        self, store: Store, model: SummaryModel, policy: SummaryPolicy | None = None
    ) -> None:
        self.store = store
        self.model = model
        self.policy = policy or SummaryPolicy()
        self._running: set[tuple[str, str]] = set()

    async def fold(self, user: str, cid: str, upto: int) -> bool:
        """Fold pending turns up to seq `upto` into the summary; True when a new one was stored."""
        key = (user, cid)
        if key in self._running:
            return False  # one job per conversation; the next reply picks up what is left
        self._running.add(key)
        try:
            async with self.store.job_lock(user, cid, "summary", self.policy.lock_ms) as held:
                # Another replica folding holds the lock: its summary will cover these turns.
                return held and await self._fold(user, cid, upto)
        finally:
            self._running.discard(key)

    async def _fold(self, user: str, cid: str, upto: int) -> bool:
        current = await self.store.get_summary(user, cid)
        if upto - current.upto_seq < self.policy.min_turns:
            return False
        turns = self._chunk(
            await self.store.messages(user, cid, start=current.upto_seq + 1, end=upto)
        )
        if not turns:
            return False
        prompt = fold_prompt(current.text, turns, self.policy.cap_tokens)
        try:
            text = await self._generate(prompt)
        except Exception as e:  # a failed summary is discarded; the reply never depends on it
            log.warning("summary of %s discarded: the model failed: %s", cid, e)
            return False
        tokens = self.model.tokenizer.message_cost(ChatMessage("system", text))
        problem = check_summary(text, prompt[1].content, tokens, self.policy.cap_tokens)
        if problem:
            log.warning("summary of %s discarded: %s", cid, problem)
            return False
        new = Summary(text, current.version + 1, turns[-1].seq, tokens)
        return await self.store.put_summary(user, cid, new, expect_version=current.version)

    def _chunk(self, turns: list[Message]) -> list[Message]:
        taken: list[Message] = []
        used = 0
        for m in turns:
            cost = self.model.tokenizer.message_cost(ChatMessage("user", line_text(m)))
            if taken and used + cost > self.policy.input_tokens:
                break
            taken.append(m)
            used += cost
        return taken

    async def _generate(self, prompt: list[ChatMessage]) -> str:
        params = SamplingParams(max_tokens=self.policy.cap_tokens, temperature=SUMMARY_TEMPERATURE)
        parts: list[str] = []
        done: Finished | None = None
        stream = self.model.stream(prompt, params, threading.Event(), priority=PRIORITY_BACKGROUND)
        async for event in stream:
            if isinstance(event, Delta):
                parts.append(event.text)
            else:
                done = event
        if done is None or done.reason not in ("completed", "length"):
            raise RuntimeError(done.error if done else "the stream ended without finishing")
        text = "".join(parts).strip()
        return trim_to_sentence(text) if done.reason == "length" else text
