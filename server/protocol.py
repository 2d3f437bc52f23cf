"""The websocket wire protocol: every frame either side sends is defined here.

Frames are JSON objects with a `type` field. The browser client (web/app.js) uses the
same names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from server.errors import BadRequest

# client -> server
CHAT_SEND = "chat.send"
RESPONSE_CANCEL = "response.cancel"
CHAT_REGENERATE = "chat.regenerate"
CHAT_EDIT = "chat.edit"

# server -> client
CONVERSATION_CREATED = "conversation.created"
RESPONSE_CREATED = "response.created"
RESPONSE_DELTA = "response.delta"
RESPONSE_DONE = "response.done"
CONTEXT = "context"
ERROR = "error"

Status = Literal["completed", "cancelled", "length", "error", "interrupted"]


@dataclass(frozen=True)
class ChatSend:
    """Ask for a reply to `text`; no conversation id starts a new conversation."""

    text: str
    conversation_id: str | None = None


@dataclass(frozen=True)
class ResponseCancel:
    """Stop the reply being generated (the current one when no id is given)."""

    response_id: str | None = None


@dataclass(frozen=True)
class ChatRegenerate:
    """Replace the conversation's last reply with a new one."""

    conversation_id: str


@dataclass(frozen=True)
class ChatEdit:
    """Replace user turn `seq`'s text, drop every later turn, and answer it again."""

    conversation_id: str
    seq: int
    text: str


ReplyFrame = ChatSend | ChatRegenerate | ChatEdit  # frames that start a reply
ClientFrame = ReplyFrame | ResponseCancel
CLIENT_TYPES = (CHAT_SEND, RESPONSE_CANCEL, CHAT_REGENERATE, CHAT_EDIT)


def parse_client_frame(raw: str, max_chars: int) -> ClientFrame:
    """Parse and validate one text frame; raise BadRequest with a precise code otherwise."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:  # ValueError: bad JSON, or an over-long integer
        raise BadRequest("invalid_json", "frames must be JSON objects") from e
    if not isinstance(data, dict):
        raise BadRequest("invalid_frame", "frames must be JSON objects with a 'type' field")
    kind = data.get("type")
    if kind == CHAT_SEND:
        text = _text(data, max_chars)
        return ChatSend(text=text, conversation_id=_field(data, "conversation_id", str))
    if kind == RESPONSE_CANCEL:
        return ResponseCancel(response_id=_field(data, "response_id", str))
    if kind == CHAT_REGENERATE:
        return ChatRegenerate(_field(data, "conversation_id", str, required=True))
    if kind == CHAT_EDIT:
        seq = _field(data, "seq", int, required=True)
        if isinstance(seq, bool) or seq < 1:
            raise BadRequest("invalid_field", "'seq' must be a positive integer")
        cid = _field(data, "conversation_id", str, required=True)
        return ChatEdit(cid, seq, _text(data, max_chars))
    if not isinstance(kind, str):
        raise BadRequest("invalid_frame", "frames need a string 'type' field")
    raise BadRequest(
        "unknown_type", f"unknown frame type {kind!r}; expected one of {', '.join(CLIENT_TYPES)}"
    )


def _text(data: dict[str, Any], max_chars: int) -> str:
    text: str = _field(data, "text", str, required=True)
    if not text.strip():
        raise BadRequest("empty_message", "'text' must not be empty")
    if not encodable(text):
        raise BadRequest("invalid_text", "'text' has an unpaired surrogate")
    if len(text) > max_chars:
        raise BadRequest(
            "message_too_long", f"'text' has {len(text)} characters; the limit is {max_chars}"
        )
    return text


def encodable(text: str) -> bool:
    """False for text that cannot be stored: JSON escapes can carry a lone surrogate ("\\ud800")."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _field(data: dict[str, Any], name: str, kind: type, *, required: bool = False) -> Any:
    value = data.get(name)
    if value is None:
        if required:
            raise BadRequest("missing_field", f"{data.get('type')} needs a '{name}' field")
        return None
    if not isinstance(value, kind):
        raise BadRequest(
            "invalid_field", f"'{name}' must be a {kind.__name__}, not {type(value).__name__}"
        )
    return value


def conversation_created(conversation_id: str) -> dict[str, Any]:
    """A new conversation was started for this socket's send."""
    return {"type": CONVERSATION_CREATED, "conversation_id": conversation_id}


def response_created(response_id: str, conversation_id: str) -> dict[str, Any]:
    """The user's message is stored; a reply is on its way."""
    return {
        "type": RESPONSE_CREATED,
        "response_id": response_id,
        "conversation_id": conversation_id,
    }


def response_delta(response_id: str, delta: str) -> dict[str, Any]:
    """A piece of reply text, as generated."""
    return {"type": RESPONSE_DELTA, "response_id": response_id, "delta": delta}


def response_done(
    response_id: str,
    status: Status,
    usage: dict[str, int],
    timings: dict[str, float],
    message_seq: int | None = None,
    *,
    error: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The reply ended; `status` says how (with status "error", `error` says why)."""
    frame: dict[str, Any] = {
        "type": RESPONSE_DONE,
        "response_id": response_id,
        "status": status,
        "usage": usage,
        "timings": timings,
        "message_seq": message_seq,
    }
    if error is not None:
        frame["error"] = error
    return frame


def context(response_id: str, record: dict[str, Any]) -> dict[str, Any]:
    """What the memory manager packed into the prompt for this reply, and why."""
    return {"type": CONTEXT, "response_id": response_id, "context": record}


def error(code: str, message: str, response_id: str | None = None) -> dict[str, Any]:
    """Something the client sent or asked for failed; the socket stays usable."""
    frame: dict[str, Any] = {"type": ERROR, "code": code, "message": message}
    if response_id is not None:
        frame["response_id"] = response_id
    return frame
