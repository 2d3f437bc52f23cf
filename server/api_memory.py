"""HTTP routes of memory: why the model remembered (the inspection record), summary, import."""

from __future__ import annotations

from aiohttp import web

from memory import locomo
from memory.importer import import_conversation
from models.errors import BadRequest, NotFound
from server.auth import user_of
from server.runtime import RUNTIME, Runtime


def setup_routes(app: web.Application) -> None:
    """Register the memory routes."""
    app.router.add_get("/api/conversations/{cid}/context", get_context)
    app.router.add_get("/api/conversations/{cid}/summary", get_summary)
    app.router.add_post("/api/import/locomo", import_locomo)


def _runtime(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


async def get_context(request: web.Request) -> web.Response:
    """The latest inspection record, or with `?message=...` the record a new message would get."""
    rt, cid, user = _runtime(request), request.match_info["cid"], user_of(request)
    await rt.store.get_conversation(user, cid)
    message = request.query.get("message")
    if message is None:
        record = await rt.memory.latest_record(user, cid)
        if record is None:
            raise NotFound("no_context", "no reply was built in this conversation yet")
        return web.json_response({"conversation_id": cid, "context": record})
    settings = rt.settings
    budget = rt.memory.budget(rt.llm.n_ctx, settings.reply_tokens, settings.system_prompt, message)
    built = await rt.memory.build_context(
        user, cid, message, budget.history, settings.system_prompt
    )
    return web.json_response({"conversation_id": cid, "context": built.record.as_dict()})


async def get_summary(request: web.Request) -> web.Response:
    """The conversation's rolling summary: text, version, covered turns, tokens."""
    rt, cid, user = _runtime(request), request.match_info["cid"], user_of(request)
    await rt.store.get_conversation(user, cid)
    s = await rt.store.get_summary(user, cid)
    return web.json_response(
        {
            "conversation_id": cid,
            "text": s.text,
            "version": s.version,
            "covers": [1, s.upto_seq] if s.upto_seq else None,
            "tokens": s.tokens,
        }
    )


async def import_locomo(request: web.Request) -> web.Response:
    """Import one LoCoMo-format conversation (the JSON body) as a new conversation."""
    try:
        body = await request.json()
    except ValueError as e:
        raise BadRequest("invalid_json", "the body must be one LoCoMo conversation object") from e
    if not isinstance(body, dict):
        raise BadRequest("invalid_json", "the body must be one LoCoMo conversation object")
    conv = locomo.parse(body, str(body.get("sample_id", "")))
    done = await import_conversation(_runtime(request).memory, user_of(request), conv)
    return web.json_response({"conversation_id": done.cid, "turns": done.turns}, status=201)
