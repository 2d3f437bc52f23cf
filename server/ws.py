"""The websocket endpoint: one socket carries many turns and conversations."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import WSMsgType, web
from redis.exceptions import RedisError

from memory.manager import ContextRecord
from models.errors import BadRequest, Busy, MemchatError
from server import edits, protocol
from server.auth import ACCESS, WS_PROTOCOL, Access, key_of, user_of
from server.chat import Ask, Outcome, Reply, check_ready, conversation_ask, new_reply, reply
from server.runtime import RUNTIME, Runtime

log = logging.getLogger(__name__)
_HEARTBEAT_S = 30.0


class WsSink:
    """A reply's events as websocket frames."""

    def __init__(self, session: Session, current: Reply) -> None:
        self.send = session.send
        self.rid = current.response_id

    async def conversation_created(self, cid: str) -> None:
        """Tell the client the id of its new conversation."""
        await self.send(protocol.conversation_created(cid))

    async def started(self, cid: str | None) -> None:
        """The message is stored."""
        await self.send(protocol.response_created(self.rid, cid or ""))

    async def context(self, record: ContextRecord) -> None:
        """What memory packed."""
        await self.send(protocol.context(self.rid, record.as_dict()))

    async def delta(self, text: str) -> None:
        """A piece of reply text."""
        await self.send(protocol.response_delta(self.rid, text))

    async def done(self, outcome: Outcome) -> None:
        """The reply ended."""
        done = outcome.finished
        await self.send(
            protocol.response_done(
                self.rid,
                outcome.status,
                usage={
                    "prompt_tokens": done.prompt_tokens,
                    "completion_tokens": done.completion_tokens,
                    "cached_tokens": done.cached_tokens,
                },
                timings={
                    "ttft_ms": round(done.ttft_ms, 1),
                    "tokens_per_s": round(done.tokens_per_s, 2),
                },
                message_seq=outcome.message_seq,
                error=_error_of(outcome),
            )
        )


def _error_of(outcome: Outcome) -> dict[str, str] | None:
    if outcome.status != "error":
        return None
    return {"code": outcome.error_code, "message": outcome.finished.error}


class Session:
    """One socket's state: at most one reply streams at a time."""

    def __init__(
        self, rt: Runtime, ws: web.WebSocketResponse, access: Access, user: str, key: str
    ) -> None:
        self.rt = rt
        self.ws = ws
        self.access = access
        self.user = user
        self.key = key
        self.current: Reply | None = None
        self.task: asyncio.Task[None] | None = None

    async def send(self, frame: dict[str, Any]) -> None:
        """Send one frame to this client."""
        await self.ws.send_json(frame)

    async def on_text(self, raw: str) -> None:
        """Handle one client text frame."""
        frame = protocol.parse_client_frame(raw, self.rt.settings.max_message_chars)
        if isinstance(frame, protocol.ResponseCancel):
            self.cancel(frame.response_id)
            return
        if self.task is not None and not self.task.done():
            raise Busy("busy", "a reply is still streaming; cancel it or wait for response.done")
        if self.access.required:
            self.access.limiter.check(self.key)
        current = new_reply()
        self.task = self.rt.spawn_reply(self._run(frame, current))
        self.current = current

    def cancel(self, response_id: str | None) -> None:
        """Stop the current reply (if the id matches, when one is given)."""
        if self.current is None or self.task is None or self.task.done():
            raise BadRequest("nothing_to_cancel", "no reply is streaming")
        if response_id is not None and response_id != self.current.response_id:
            raise BadRequest("unknown_response", f"no streaming reply {response_id}")
        self.current.cancel.set()

    async def _run(self, frame: protocol.ReplyFrame, current: Reply) -> None:
        try:
            ask = await self._ask(frame)
            await reply(self.rt, ask, WsSink(self, current), current)
        except MemchatError as e:
            await self.error(e.code, e.message, current.response_id)
        except RedisError as e:
            await self.error(
                "redis_unavailable",
                f"storage failed ({e}); retry when /health is ok",
                current.response_id,
            )
        except Exception:  # a bug must not leave the client waiting forever
            log.exception("reply %s failed", current.response_id)
            message = "the reply failed; see the server log"
            await self.error("internal_error", message, current.response_id)

    async def _ask(self, frame: protocol.ReplyFrame) -> Ask:
        """The reply a frame asks for; regenerate and edit first rewind the stored history."""
        rt, user = self.rt, self.user
        if isinstance(frame, protocol.ChatSend):
            return await conversation_ask(rt, user, frame.text, frame.conversation_id)
        check_ready(rt)  # before anything is dropped
        cid = frame.conversation_id
        if isinstance(frame, protocol.ChatEdit):
            asked = await edits.rewind_for_edit(rt, user, cid, frame.seq, frame.text)
        else:
            asked = await edits.rewind_for_regenerate(rt, user, cid)
        return await conversation_ask(rt, user, asked.text, cid, asked)

    async def error(self, code: str, message: str, response_id: str | None = None) -> None:
        """Tell the client what went wrong, if it is still there."""
        self.rt.metrics.errors.labels(code).inc()
        if not self.ws.closed:
            with contextlib.suppress(ConnectionError):  # it left meanwhile
                await self.send(protocol.error(code, message, response_id))

    async def close(self) -> None:
        """The client left: stop generating; the reply is stored as interrupted."""
        if self.current is not None:
            self.current.abandon()
        if self.task is not None:
            # Shielded: aiohttp may cancel this handler, but the reply must still be stored.
            await asyncio.wait([asyncio.shield(self.task)])


async def handle(request: web.Request) -> web.WebSocketResponse:
    """Serve one websocket client until it disconnects."""
    rt = request.app[RUNTIME]
    user, key = user_of(request), key_of(request)
    ws = web.WebSocketResponse(
        heartbeat=_HEARTBEAT_S,
        max_msg_size=rt.settings.max_message_chars * 4 + 4096,
        protocols=(WS_PROTOCOL,),
    )
    await ws.prepare(request)
    rt.sockets.add(ws)
    session = Session(rt, ws, request.app[ACCESS], user, key)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                try:
                    await session.on_text(msg.data)
                except MemchatError as e:
                    await session.error(e.code, e.message)
            elif msg.type == WSMsgType.BINARY:
                await session.error("binary_frame", "send JSON text frames, not binary")
    finally:
        await session.close()
    return ws
