"""The OpenAI-compatible API: `/v1/models` and `/v1/chat/completions`, streaming or not.

Both modes run the same reply pipeline as the websocket (server/chat.py): with a
conversation named, memory stores the turn and packs the context; without one, the
request's messages go straight to the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from memory.manager import ContextRecord
from models.errors import MemchatError, ModelError
from server import openai_wire as wire
from server.api import json_body
from server.auth import user_of
from server.chat import Ask, Outcome, Reply, new_reply, reply, stateless
from server.errors import error_type
from server.runtime import RUNTIME, Runtime


def setup_routes(app: web.Application) -> None:
    """Register the OpenAI-compatible routes."""
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/chat/completions", chat_completions)


async def list_models(request: web.Request) -> web.Response:
    """The one model this server runs."""
    model = wire.model_id(request.app[RUNTIME].settings)
    return web.json_response(wire.models_list(model, int(time.time())))


class CompletionSink:
    """Collects a reply; when streaming, writes it as server-sent events as it comes."""

    def __init__(self, request: web.Request, current: Reply, req: wire.CompletionRequest) -> None:
        self.request = request
        self.req = req
        self.rid = current.response_id
        self.created = int(time.time())
        self.model = wire.model_id(request.app[RUNTIME].settings)
        self.conversation: str | None = None
        self.response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )

    @property
    def streaming(self) -> bool:
        """True once the event stream has begun: later errors become error events."""
        return self.response.prepared

    async def conversation_created(self, cid: str) -> None:
        """Remember the new conversation's id."""
        self.conversation = cid

    async def started(self, cid: str | None) -> None:
        """Send the headers and the role chunk when streaming."""
        self.conversation = cid
        if not self.req.stream:
            return
        if cid:
            self.response.headers[wire.CONVERSATION_HEADER] = cid
        self.response.headers["X-Request-Id"] = self.rid
        await self.response.prepare(self.request)
        await self._event(self._chunk({"role": "assistant", "content": ""}, None))

    async def context(self, record: ContextRecord) -> None:
        """Not part of OpenAI's format."""

    async def delta(self, text: str) -> None:
        """One content chunk."""
        if self.req.stream:
            await self._event(self._chunk({"content": text}, None))

    async def done(self, outcome: Outcome) -> None:
        """The finish chunk, usage if asked for, and [DONE]."""
        if not self.req.stream:
            return
        done = outcome.finished
        if done.reason == "error":
            await self.error(outcome.error_code, done.error, 500)
            return
        await self._event(self._chunk({}, wire.finish_reason(outcome.status)))
        if self.req.include_usage:
            used = wire.usage(done.prompt_tokens, done.completion_tokens, done.cached_tokens)
            await self._event(wire.usage_chunk(self._stamp(), used))
        await self.response.write(b"data: [DONE]\n\n")

    async def error(self, code: str, message: str, status: int) -> None:
        """An error after the stream began: an error event, then [DONE]."""
        err = {"code": code, "message": message, "type": error_type(status), "param": None}
        await self._event({"error": err})
        await self.response.write(b"data: [DONE]\n\n")

    def completion(self, outcome: Outcome) -> web.Response:
        """The whole non-streaming answer."""
        done = outcome.finished
        if done.reason == "error":
            raise ModelError(outcome.error_code, done.error)
        used = wire.usage(done.prompt_tokens, done.completion_tokens, done.cached_tokens)
        body = wire.completion(self._stamp(), outcome.text, outcome.status, used)
        headers = {"X-Request-Id": self.rid}
        if self.conversation:
            headers[wire.CONVERSATION_HEADER] = self.conversation
        return web.json_response(body, headers=headers)

    def _stamp(self) -> wire.Stamp:
        return wire.Stamp(self.rid, self.created, self.model, self.conversation)

    def _chunk(self, delta: dict[str, str], finish: str | None) -> dict[str, Any]:
        return wire.chunk(self._stamp(), delta, finish)

    async def _event(self, body: dict[str, Any]) -> None:
        data = json.dumps(body, ensure_ascii=False)
        await self.response.write(f"data: {data}\n\n".encode())


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """`POST /v1/chat/completions`."""
    rt = request.app[RUNTIME]
    user = user_of(request)
    req = wire.parse(
        await json_body(request), request.headers.get(wire.CONVERSATION_HEADER), rt.settings
    )
    current = new_reply("chatcmpl-")
    sink = CompletionSink(request, current, req)
    # The reply runs as its own task so that it is stored even if this handler is cancelled.
    task = rt.spawn_reply(_run(rt, user, req, sink, current))
    try:
        result = await asyncio.shield(task)
    except asyncio.CancelledError:
        current.abandon()
        raise
    if isinstance(result, Outcome):
        return sink.response if req.stream else sink.completion(result)
    if not sink.streaming:
        raise result
    code, message, status = _described(result)
    rt.metrics.errors.labels(code).inc()
    with contextlib.suppress(ConnectionError):  # the client left: nothing to tell
        await sink.error(code, message, status)
    return sink.response


async def _run(
    rt: Runtime, user: str, req: wire.CompletionRequest, sink: CompletionSink, current: Reply
) -> Outcome | MemchatError | RedisError:
    try:
        if req.conversation is None:
            return await stateless(
                rt, sink, current, user=user, messages=req.messages, params=req.params
            )
        cid = None if req.conversation == wire.NEW_CONVERSATION else req.conversation
        ask = Ask(
            user=user,
            text=req.last_user_text,
            conversation_id=cid,
            system_prompt=req.system_prompt(rt.settings.system_prompt),
            params=req.params,
        )
        return await reply(rt, ask, sink, current)
    except (MemchatError, RedisError) as e:
        return e


def _described(e: MemchatError | RedisError) -> tuple[str, str, int]:
    if isinstance(e, MemchatError):
        return e.code, e.message, e.status
    return "redis_unavailable", f"storage failed ({e}); retry shortly", 503
