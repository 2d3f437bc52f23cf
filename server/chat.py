"""One reply, end to end: frame -> build_context -> model.stream -> record -> client."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from memory.store import DEFAULT_USER
from models.errors import ModelError, Unavailable
from models.types import Delta, Finished, SamplingParams
from server import protocol
from server.runtime import Runtime

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Reply:
    """A reply in progress: its id and the switch that stops it."""

    response_id: str
    cancel: threading.Event
    client_gone: bool = False

    def abandon(self) -> None:
        """The client left: stop generating and remember why."""
        self.client_gone = True
        self.cancel.set()


async def reply(rt: Runtime, frame: protocol.ChatSend, send: Send, current: Reply) -> None:
    """Store the user's turn, stream the model's reply to the client, store the reply."""
    user = DEFAULT_USER
    if not rt.llm.ready:
        raise Unavailable("model_loading", "the model is still loading; retry in a moment")
    cid = frame.conversation_id
    if cid is None:
        cid = (await rt.store.create_conversation(user)).id
        await send(protocol.conversation_created(cid))
    else:
        await rt.store.get_conversation(user, cid)
    asked = await rt.memory.record(user, cid, "user", frame.text)
    await send(protocol.response_created(current.response_id, cid))
    settings = rt.settings
    budget = rt.memory.budget(
        rt.llm.n_ctx, settings.reply_tokens, settings.system_prompt, frame.text
    )
    built = await rt.memory.build_context(
        user, cid, frame.text, budget.history, settings.system_prompt, before=asked.seq
    )
    await send(protocol.context(current.response_id, built.record.as_dict()))
    params = SamplingParams(max_tokens=settings.reply_tokens, temperature=settings.temperature)
    parts: list[str] = []
    done: Finished | None = None
    async for event in rt.llm.stream(built.messages, params, current.cancel, cache_key=cid):
        if isinstance(event, Delta):
            parts.append(event.text)
            if not current.client_gone:
                await _try_send(
                    send, protocol.response_delta(current.response_id, event.text), current
                )
        else:
            done = event
    if done is None:
        raise ModelError("model_error", "the model stopped without finishing the reply")
    status = "interrupted" if current.client_gone and done.reason == "cancelled" else done.reason
    answer = await rt.memory.record(user, cid, "assistant", "".join(parts), status=status)
    rt.spawn(rt.memory.index(user, cid, [asked, answer]))
    if done.reason == "error":
        log.error("generation failed in %s: %s", current.response_id, done.error)
    await _try_send(send, _done_frame(current.response_id, done, answer.seq), current)


def new_reply() -> Reply:
    """A fresh reply handle."""
    return Reply(response_id="resp_" + uuid.uuid4().hex[:16], cancel=threading.Event())


async def _try_send(send: Send, frame: dict[str, Any], current: Reply) -> bool:
    """Send, or stop generating when the client has gone away."""
    try:
        await send(frame)
    except ConnectionError:
        current.abandon()
        return False
    return True


def _done_frame(response_id: str, done: Finished, seq: int) -> dict[str, Any]:
    return protocol.response_done(
        response_id,
        done.reason,
        usage={"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens},
        timings={"ttft_ms": round(done.ttft_ms, 1), "tokens_per_s": round(done.tokens_per_s, 2)},
        message_seq=seq,
    )
