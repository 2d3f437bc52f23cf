"""The HTTP API: health, conversations and their messages. Errors are JSON bodies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from memory.store import Message
from models.errors import BadRequest, MemchatError
from server import api_memory, metrics
from server.auth import user_of
from server.errors import InvalidParameter, QueueFull, RateLimited, Unauthorized, error_type
from server.runtime import RUNTIME, Runtime

HEALTH_REDIS_TIMEOUT_S = 2.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def setup_routes(app: web.Application) -> None:
    """Register the HTTP routes."""
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/api/conversations", list_conversations)
    app.router.add_post("/api/conversations", create_conversation)
    app.router.add_get("/api/conversations/{cid}", get_conversation)
    app.router.add_delete("/api/conversations/{cid}", delete_conversation)
    app.router.add_get("/api/conversations/{cid}/messages", list_messages)
    api_memory.setup_routes(app)


def error_body(
    code: str,
    message: str,
    status: int,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> web.Response:
    """The one shape of every HTTP error: `code` and `message`, plus OpenAI's `type` and `param`."""
    err = {"code": code, "message": message, "type": error_type(status), "param": param}
    return web.json_response({"error": err}, status=status, headers=headers)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into a JSON error body, and count it."""
    headers, param = None, None
    try:
        return await handler(request)
    except MemchatError as e:
        code, message, status, headers = e.code, e.message, e.status, _headers(e)
        param = e.param if isinstance(e, InvalidParameter) else None
    except RedisError as e:
        code, message, status = "redis_unavailable", f"storage failed ({e}); retry shortly", 503
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code, message, status = f"http_{e.status}", e.reason, e.status
    if RUNTIME in request.app:
        request.app[RUNTIME].metrics.errors.labels(code).inc()
    return error_body(code, message, status, headers, param)


def _headers(e: MemchatError) -> dict[str, str] | None:
    if isinstance(e, RateLimited | QueueFull):
        return {"Retry-After": str(e.retry_after)}
    if isinstance(e, Unauthorized):
        return {"WWW-Authenticate": 'Bearer realm="memchat"'}
    return None


def _runtime(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


async def health(request: web.Request) -> web.Response:
    """200 when the model, embedder and Redis are ready; 503 with what is not, and why."""
    rt = _runtime(request)
    problems = {
        "model": None if rt.llm.ready else "the model is loading (or failed to; see the log)",
        "embedder": _embedder_problem(rt),
        "redis": await _redis_problem(rt),
    }
    ok = not any(problems.values())
    body: dict[str, Any] = {"status": "ok" if ok else "unavailable"}
    body |= {part: problem is None for part, problem in problems.items()}
    if not ok:
        body["reasons"] = {part: why for part, why in problems.items() if why}
    return web.json_response(body, status=200 if ok else 503)


def _embedder_problem(rt: Runtime) -> str | None:
    if rt.memory.embedder is not None:
        return None
    task = rt.embedder_task
    if task is not None and task.done() and not task.cancelled() and task.exception():
        return f"the embedder failed to load: {task.exception()}"
    return "the embedder is loading"


async def _redis_problem(rt: Runtime) -> str | None:
    try:
        return await asyncio.wait_for(rt.store.unreachable(), HEALTH_REDIS_TIMEOUT_S)
    except TimeoutError:
        return f"Redis did not answer a PING within {HEALTH_REDIS_TIMEOUT_S:g} s"


async def get_metrics(request: web.Request) -> web.Response:
    """Prometheus metrics."""
    return metrics.handler(_runtime(request).metrics)


async def list_conversations(request: web.Request) -> web.Response:
    """The user's conversations, newest first."""
    convs = await _runtime(request).store.list_conversations(user_of(request))
    return web.json_response({"conversations": [c.as_dict() for c in convs]})


async def create_conversation(request: web.Request) -> web.Response:
    """Start an empty conversation, optionally titled."""
    body = await json_body(request) if request.can_read_body else {}
    title = body.get("title", "")
    if not isinstance(title, str):
        raise BadRequest("invalid_field", "'title' must be a string")
    conv = await _runtime(request).store.create_conversation(user_of(request), title.strip()[:200])
    return web.json_response(conv.as_dict(), status=201)


async def get_conversation(request: web.Request) -> web.Response:
    """One conversation's metadata."""
    conv = await _runtime(request).store.get_conversation(
        user_of(request), request.match_info["cid"]
    )
    return web.json_response(conv.as_dict())


async def delete_conversation(request: web.Request) -> web.Response:
    """Remove a conversation, its messages, vectors and summary."""
    await _runtime(request).store.delete_conversation(user_of(request), request.match_info["cid"])
    return web.json_response({"deleted": request.match_info["cid"]})


async def list_messages(request: web.Request) -> web.Response:
    """A conversation's stored messages, in order."""
    rt, cid, user = _runtime(request), request.match_info["cid"], user_of(request)
    await rt.store.get_conversation(user, cid)
    msgs: list[Message] = await rt.store.messages(user, cid)
    return web.json_response({"conversation_id": cid, "messages": [_message(m) for m in msgs]})


def _message(m: Message) -> dict[str, Any]:
    return {
        "seq": m.seq,
        "role": m.role,
        "text": m.text,
        "time": m.time,
        "status": m.status,
        "speaker": m.speaker,
    }


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body, or BadRequest."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest("invalid_json", "the request body must be a JSON object") from e
    if not isinstance(body, dict):
        raise BadRequest("invalid_json", "the request body must be a JSON object")
    return body


_json_body = json_body  # the name other route modules used first
