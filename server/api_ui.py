"""HTTP routes the browser UI needs: rename, search, per-conversation settings, forget a turn,
edit the summary. Every route acts for `user_of(request)`; another user's data answers 404."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aiohttp import web

from memory.store import ConversationSettings, Summary
from models.errors import BadRequest, Busy
from models.types import ChatMessage
from server import edits
from server.api import json_body
from server.auth import user_of
from server.runtime import RUNTIME, Runtime

TITLE_MAX = 200
QUERY_MAX = 200
MAX_TEMPERATURE = 2.0
SUMMARY_MAX_CHARS = 8000


def setup_routes(app: web.Application) -> None:
    """Register the UI routes."""
    app.router.add_patch("/api/conversations/{cid}", rename)
    app.router.add_get("/api/search", search)
    app.router.add_get("/api/conversations/{cid}/settings", get_settings)
    app.router.add_put("/api/conversations/{cid}/settings", put_settings)
    app.router.add_delete("/api/conversations/{cid}/messages/{seq}", forget)
    app.router.add_put("/api/conversations/{cid}/summary", put_summary)


def _runtime(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


async def rename(request: web.Request) -> web.Response:
    """Retitle a conversation: `{"title": "..."}`."""
    body = await json_body(request)
    title = body.get("title")
    if not isinstance(title, str) or not title.strip():
        raise BadRequest("invalid_field", "'title' must be a non-empty string")
    if len(title) > TITLE_MAX:
        raise BadRequest("invalid_field", f"'title' must be at most {TITLE_MAX} characters")
    conv = await _runtime(request).store.rename_conversation(
        user_of(request), request.match_info["cid"], " ".join(title.split())
    )
    return web.json_response(conv.as_dict())


async def search(request: web.Request) -> web.Response:
    """The user's conversations whose title or text contains `?q=`, newest first."""
    query = request.query.get("q", "").strip()
    if not query:
        raise BadRequest("missing_field", "search needs a non-empty 'q' query parameter")
    if len(query) > QUERY_MAX:
        raise BadRequest("invalid_field", f"'q' must be at most {QUERY_MAX} characters")
    found = await _runtime(request).store.search_conversations(user_of(request), query)
    return web.json_response({"query": query, "conversations": [f.as_dict() for f in found]})


async def get_settings(request: web.Request) -> web.Response:
    """The conversation's own settings, the server's defaults, and the accepted ranges."""
    rt, user, cid = _runtime(request), user_of(request), request.match_info["cid"]
    own = await rt.store.get_settings(user, cid)
    return web.json_response(_settings_body(rt, cid, own))


async def put_settings(request: web.Request) -> web.Response:
    """Replace the conversation's settings; a null field follows the server's default."""
    rt, user, cid = _runtime(request), user_of(request), request.match_info["cid"]
    body = await json_body(request)
    own = ConversationSettings(
        system_prompt=_optional(body, "system_prompt", str),
        temperature=_optional(body, "temperature", float),
        max_tokens=_optional(body, "max_tokens", int),
    )
    _check_settings(rt, own)
    await rt.store.put_settings(user, cid, own)
    return web.json_response(_settings_body(rt, cid, own))


def _settings_body(rt: Runtime, cid: str, own: ConversationSettings) -> dict[str, Any]:
    d = rt.settings
    return {
        "conversation_id": cid,
        "settings": asdict(own),
        "defaults": {
            "system_prompt": d.system_prompt,
            "temperature": d.temperature,
            "max_tokens": d.reply_tokens,
        },
        "limits": {"temperature": [0, MAX_TEMPERATURE], "max_tokens": [1, _max_reply(rt)]},
    }


def _max_reply(rt: Runtime) -> int:
    return max(1, rt.llm.n_ctx // 2)


def _optional(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise BadRequest("invalid_field", f"'{name}' must be a {kind.__name__} or null")
    return value


def _check_settings(rt: Runtime, own: ConversationSettings) -> None:
    if own.system_prompt is not None and len(own.system_prompt) > rt.settings.max_message_chars:
        raise BadRequest(
            "invalid_field",
            f"'system_prompt' must be at most {rt.settings.max_message_chars} characters",
        )
    if own.temperature is not None and not 0 <= own.temperature <= MAX_TEMPERATURE:
        raise BadRequest("invalid_field", f"'temperature' must be between 0 and {MAX_TEMPERATURE}")
    if own.max_tokens is not None and not 1 <= own.max_tokens <= _max_reply(rt):
        raise BadRequest("invalid_field", f"'max_tokens' must be between 1 and {_max_reply(rt)}")


async def forget(request: web.Request) -> web.Response:
    """Forget one turn: gone from history, vectors and future recall."""
    rt, user, cid = _runtime(request), user_of(request), request.match_info["cid"]
    raw = request.match_info["seq"]
    if not raw.isdigit() or int(raw) < 1:
        raise BadRequest("invalid_seq", f"'{raw}' is not a turn number; use the message's seq")
    done = await edits.forget(rt, user, cid, int(raw))
    return web.json_response(
        {"conversation_id": cid, "forgotten": done.seq, "summary_cleared": done.summary_cleared}
    )


async def put_summary(request: web.Request) -> web.Response:
    """Replace the summary's text: `{"text": ..., "version": N?}`; the version goes up by one.

    With `version`, the write only succeeds if the summary is still at that version (409).
    """
    rt, user, cid = _runtime(request), user_of(request), request.match_info["cid"]
    body = await json_body(request)
    text = body.get("text")
    if not isinstance(text, str):
        raise BadRequest("invalid_field", "'text' must be a string (empty clears the summary)")
    if len(text) > SUMMARY_MAX_CHARS:
        raise BadRequest("invalid_field", f"'text' must be at most {SUMMARY_MAX_CHARS} characters")
    expected = body.get("version")
    if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int)):
        raise BadRequest("invalid_field", "'version' must be an integer")
    await rt.store.get_conversation(user, cid)
    current = await rt.store.get_summary(user, cid)
    if expected is not None and expected != current.version:
        raise Busy("summary_changed", _changed(current.version))
    text = text.strip()
    tokens = rt.llm.tokenizer.message_cost(ChatMessage("system", text)) if text else 0
    new = Summary(text, current.version + 1, current.upto_seq if text else 0, tokens)
    if not await rt.store.put_summary(user, cid, new, expect_version=current.version):
        raise Busy("summary_changed", _changed(current.version + 1))
    await rt.memory.edited(user, cid)
    return web.json_response(
        {"conversation_id": cid, "text": new.text, "version": new.version, "tokens": new.tokens}
    )


def _changed(version: int) -> str:
    return f"the summary changed meanwhile (now version {version}); reload it and edit again"
