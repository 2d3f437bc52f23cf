"""One reply, end to end: ask -> record -> build_context -> model.stream -> record -> sink.

Transport-neutral: the websocket and the OpenAI-compatible API both call `reply` (memory on a
stored conversation) or `stateless` (the client's own messages), each with its own Sink.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from typing import Protocol

from redis.exceptions import ConnectionError as RedisConnectionError

from memory.manager import ContextRecord
from memory.packing import Budget
from memory.store import Message
from models.errors import BadRequest, MemchatError, Unavailable
from models.types import ChatMessage, Delta, Finished, SamplingParams
from server.logs import request_id
from server.protocol import Status
from server.runtime import Runtime

log = logging.getLogger(__name__)
STORE_RETRY_S = 30.0  # how long a finished reply waits for Redis to come back to be stored
STORE_RETRY_FIRST_S = 0.1
STORE_RETRY_MAX_S = 2.0


@dataclass
class Reply:
    """A reply in progress: its id, the switch that stops it, and when it was asked for."""

    response_id: str
    cancel: threading.Event
    client_gone: bool = False
    asked_at: float = field(default_factory=time.perf_counter)

    def abandon(self) -> None:
        """The client left: stop generating and remember why."""
        self.client_gone = True
        self.cancel.set()


@dataclass(frozen=True)
class Ask:
    """A reply asked of a stored conversation, whatever the transport."""

    user: str
    text: str
    conversation_id: str | None  # None: start a new conversation
    system_prompt: str
    params: SamplingParams
    asked: Message | None = None  # the user's turn, already stored (regenerate, edit)


@dataclass(frozen=True)
class Outcome:
    """How a reply ended."""

    text: str
    status: Status
    finished: Finished
    conversation_id: str | None = None
    message_seq: int | None = None  # None: not stored (a failure before any text)
    error_code: str = ""  # why a reply with status "error" failed


class Sink(Protocol):
    """Where a reply's events go; `delta` and later raise ConnectionError once the client left."""

    async def conversation_created(self, cid: str) -> None:
        """A conversation was started for this reply."""

    async def started(self, cid: str | None) -> None:
        """The user's turn is stored (if any); generation follows."""

    async def context(self, record: ContextRecord) -> None:
        """What memory packed into the prompt."""

    async def delta(self, text: str) -> None:
        """A piece of reply text."""

    async def done(self, outcome: Outcome) -> None:
        """The reply ended."""


async def reply(rt: Runtime, ask: Ask, sink: Sink, current: Reply) -> Outcome:
    """Store the user's turn, pack memory into the prompt, stream the reply, store it."""
    request_id.set(current.response_id)
    check_ready(rt)
    budget = _budget(rt, ask)
    user, cid = ask.user, ask.conversation_id
    if cid is None:
        cid = (await rt.store.create_conversation(user)).id
        await _try(sink.conversation_created(cid), current)
    else:
        await rt.store.get_conversation(user, cid)
    asked = ask.asked or await rt.memory.record(user, cid, "user", ask.text)
    await _try(sink.started(cid), current)
    built = await rt.memory.build_turn(
        user, cid, ask.text, budget.history, ask.system_prompt, before=asked.seq
    )
    _count_recalls(rt, built.record)
    await _try(sink.context(built.record), current)
    gen = await generate(rt, built.messages, ask.params, sink, current, cache_key=cid)
    status = _status(gen.finished, current)
    answer = await _store_reply(rt, user, cid, gen.text, status)
    rt.spawn(rt.memory.index(user, cid, [asked] if answer is None else [asked, answer]))
    rt.spawn(_after_reply(rt, user, cid))
    seq = None if answer is None else answer.seq
    outcome = Outcome(gen.text, status, gen.finished, cid, seq, gen.error_code)
    return await _finish(rt, outcome, sink, current, user)


async def conversation_ask(
    rt: Runtime, user: str, text: str, cid: str | None, asked: Message | None = None
) -> Ask:
    """An Ask on the server's settings, overridden by the conversation's own where set."""
    d = rt.settings
    own = await rt.store.get_settings(user, cid) if cid is not None else None
    system = own.system_prompt if own and own.system_prompt is not None else d.system_prompt
    temp = own.temperature if own and own.temperature is not None else d.temperature
    tokens = own.max_tokens if own and own.max_tokens is not None else d.reply_tokens
    params = SamplingParams(max_tokens=tokens, temperature=temp)
    return Ask(user, text, cid, system, params, asked)


async def stateless(
    rt: Runtime,
    sink: Sink,
    current: Reply,
    *,
    user: str,
    messages: list[ChatMessage],
    params: SamplingParams,
) -> Outcome:
    """Send the client's messages straight to the model; nothing is stored."""
    request_id.set(current.response_id)
    check_ready(rt)
    prompt = rt.llm.tokenizer.count(messages)
    if prompt >= rt.llm.n_ctx:
        raise BadRequest(
            "context_length_exceeded",
            f"This model's maximum context length is {rt.llm.n_ctx} tokens. However, your "
            f"messages resulted in {prompt} tokens. Please reduce the length of the messages.",
        )
    await _try(sink.started(None), current)
    gen = await generate(rt, messages, params, sink, current, cache_key=None)
    status = _status(gen.finished, current)
    outcome = Outcome(gen.text, status, gen.finished, error_code=gen.error_code)
    return await _finish(rt, outcome, sink, current, user)


@dataclass(frozen=True)
class Generated:
    """What the model produced: the text, its accounting, and why it failed if it did."""

    text: str
    finished: Finished
    error_code: str = ""


async def generate(
    rt: Runtime,
    messages: list[ChatMessage],
    params: SamplingParams,
    sink: Sink,
    current: Reply,
    *,
    cache_key: str | None,
) -> Generated:
    """Stream one generation to the sink; a model failure ends it with status "error"."""
    m = rt.metrics
    parts: list[str] = []
    done: Finished | None = None
    m.requests_deferred.inc()
    waiting = True
    try:
        async for event in rt.llm.stream(messages, params, current.cancel, cache_key=cache_key):
            if waiting:
                waiting = False
                m.requests_deferred.dec()
                m.requests_processing.inc()
            if isinstance(event, Delta):
                if not parts:
                    m.first_token.observe(time.perf_counter() - current.asked_at)
                parts.append(event.text)
                if not current.client_gone:
                    await _try(sink.delta(event.text), current)
            else:
                done = event
    except MemchatError as e:  # refused by the model (context overflow, not loaded)
        return _failed(parts, e.code, e.message)
    except Exception as e:  # a crash inside generation ends this reply, not the server
        log.exception("the model failed mid-reply")
        return _failed(parts, "model_error", f"generation failed: {e}")
    finally:
        (m.requests_deferred if waiting else m.requests_processing).dec()
    if done is None:
        return _failed(parts, "model_error", "the model stopped without finishing the reply")
    m.prompt_tokens.inc(done.prompt_tokens)
    m.tokens_predicted.inc(done.completion_tokens)
    m.reply_time.observe(time.perf_counter() - current.asked_at)
    if done.reason == "error":  # the engine caught a crash inside generation
        done = replace(done, error=f"generation failed: {done.error}")
        return Generated("".join(parts), done, "model_error")
    return Generated("".join(parts), done)


def _failed(parts: list[str], code: str, message: str) -> Generated:
    done = Finished("error", 0, len(parts), 0, 0.0, 0.0, error=message)
    return Generated("".join(parts), done, code)


async def _store_reply(
    rt: Runtime, user: str, cid: str, text: str, status: Status
) -> Message | None:
    """Store the reply (a failure with no text stores nothing), retrying while Redis is down
    for up to STORE_RETRY_S: the user has seen the text, so it must not be lost to a blip."""
    if status == "error" and not text:
        return None
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + STORE_RETRY_S, STORE_RETRY_FIRST_S
    while True:
        try:
            return await rt.memory.record(user, cid, "assistant", text, status=status)
        except RedisConnectionError:
            if loop.time() + delay > deadline:
                raise
            log.warning("storing the reply failed: Redis is unreachable; retrying")
            await asyncio.sleep(delay)
            delay = min(delay * 2, STORE_RETRY_MAX_S)


def new_reply(prefix: str = "resp_") -> Reply:
    """A fresh reply handle."""
    return Reply(response_id=prefix + uuid.uuid4().hex[:24], cancel=threading.Event())


def check_ready(rt: Runtime) -> None:
    """Refuse a reply while the model cannot take one: still loading, or, for a remote one,
    its inference server was just found unreachable."""
    if rt.llm.ready:
        return
    if rt.settings.inference_url:
        raise Unavailable(
            "inference_unreachable",
            f"the inference server at {rt.settings.inference_url} could not be reached a moment"
            " ago; retry shortly, or fix MEMCHAT_INFERENCE_URL",
        )
    raise Unavailable("model_loading", "the model is still loading; retry in a moment")


def _budget(rt: Runtime, ask: Ask) -> Budget:
    """The reply's token budget; refuse, before anything is stored, a message the model's
    context cannot hold."""
    budget = rt.memory.budget(rt.llm.n_ctx, ask.params.max_tokens, ask.system_prompt, ask.text)
    if budget.fixed_tokens >= rt.llm.n_ctx:
        raise BadRequest(
            "context_length_exceeded",
            f"the message and system prompt take {budget.fixed_tokens} tokens; the model's "
            f"context holds {rt.llm.n_ctx}. Shorten the message.",
        )
    return budget


def _status(done: Finished, current: Reply) -> Status:
    return "interrupted" if current.client_gone and done.reason == "cancelled" else done.reason


async def _finish(rt: Runtime, outcome: Outcome, sink: Sink, current: Reply, user: str) -> Outcome:
    done = outcome.finished
    rt.metrics.replies.labels(outcome.status).inc()
    if done.reason == "error":
        rt.metrics.errors.labels(outcome.error_code).inc()
        log.error("generation failed (%s): %s", outcome.error_code, done.error)
    log.info(
        "reply %s: prompt_tokens=%d cached_tokens=%d completion_tokens=%d ttft_ms=%.1f user=%s "
        "conversation=%s",
        outcome.status,
        done.prompt_tokens,
        done.cached_tokens,
        done.completion_tokens,
        done.ttft_ms,
        user,
        outcome.conversation_id or "-",
        extra={
            "status": outcome.status,
            "prompt_tokens": done.prompt_tokens,
            "cached_tokens": done.cached_tokens,
            "completion_tokens": done.completion_tokens,
            "ttft_ms": round(done.ttft_ms, 1),
            "user": user,
            "conversation_id": outcome.conversation_id,
        },
    )
    await _try(sink.done(outcome), current)
    return outcome


def _count_recalls(rt: Runtime, record: ContextRecord) -> None:
    recalled = sum(1 for t in record.turns if t.reason == "recalled")
    if recalled:
        rt.metrics.recalls.inc()
        rt.metrics.recalled_turns.inc(recalled)


async def _after_reply(rt: Runtime, user: str, cid: str) -> None:
    try:
        await rt.memory.after_reply(user, cid)
    except Exception:
        rt.metrics.summary_jobs.labels("failed").inc()
        raise
    rt.metrics.summary_jobs.labels("done").inc()


async def _try(step: Awaitable[None], current: Reply) -> bool:
    """Run a sink step, or stop generating when the client has gone away."""
    try:
        await step
    except ConnectionError:
        current.abandon()
        return False
    return True
