"""The OpenAI chat-completions wire format: request parsing and every response shape.

memchat's one addition: a conversation, named by the `conversation_id` body field or the
`X-Memchat-Conversation` header ("new" starts one), turns memory on for the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.errors import BadRequest
from models.paths import DEFAULT_CHAT_FILE
from models.types import ChatMessage, Role, SamplingParams
from server.errors import InvalidParameter
from server.protocol import Status, encodable
from server.settings import Settings

CONVERSATION_HEADER = "X-Memchat-Conversation"
CONVERSATION_FIELD = "conversation_id"
NEW_CONVERSATION = "new"
MAX_TEMPERATURE = 2.0
_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}
MAX_STOPS = 4  # as OpenAI's API
MAX_STOP_CHARS = 256
_FINISH = {"completed": "stop", "length": "length", "cancelled": "stop", "interrupted": "stop"}


@dataclass(frozen=True)
class CompletionRequest:
    """A parsed `POST /v1/chat/completions`."""

    messages: list[ChatMessage]
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    conversation: str | None = None  # None: stateless; "new" or an id: memory on

    @property
    def last_user_text(self) -> str:
        """The new turn, in conversation mode."""
        last = self.messages[-1]
        if last.role != "user":
            raise BadRequest(
                "invalid_messages", "with a conversation, the last message must be the user's"
            )
        return last.content

    def system_prompt(self, default: str) -> str:
        """The request's first system (or developer) message, else the configured prompt."""
        return next((m.content for m in self.messages if m.role == "system"), default)


def model_id(settings: Settings) -> str:
    """The id `/v1/models` lists: the GGUF file's name."""
    return Path(settings.model or DEFAULT_CHAT_FILE).stem


def parse(body: dict[str, Any], header: str | None, settings: Settings) -> CompletionRequest:
    """Validate a request body; raise BadRequest naming the parameter at fault."""
    _reject_unsupported(body)
    messages = _messages(body.get("messages"), settings.max_message_chars)
    max_tokens = _number(body, "max_completion_tokens", int) or _number(body, "max_tokens", int)
    temperature = _number(body, "temperature", float)
    top_p = _number(body, "top_p", float)
    if temperature is not None and not 0 <= temperature <= MAX_TEMPERATURE:
        raise _param("temperature", "'temperature' must be between 0 and 2")
    if top_p is not None and not 0 < top_p <= 1:
        raise _param("top_p", "'top_p' must be above 0 and at most 1")
    if max_tokens is not None and max_tokens < 1:
        raise _param("max_tokens", "'max_tokens' must be at least 1")
    params = SamplingParams(
        max_tokens=int(max_tokens or settings.reply_tokens),
        temperature=settings.temperature if temperature is None else temperature,
        top_p=SamplingParams.top_p if top_p is None else top_p,
        seed=_number(body, "seed", int),
        stop=_stop(body.get("stop")),
    )
    stream = _flag(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _param("stream_options", "'stream_options' must be an object")
    return CompletionRequest(
        messages=messages,
        params=params,
        stream=stream,
        include_usage=stream and _flag(options, "include_usage"),
        conversation=_conversation(body.get(CONVERSATION_FIELD), header),
    )


def _stop(raw: Any) -> tuple[str, ...]:
    """OpenAI's `stop`: a string or a list of up to four, each non-empty."""
    stops = [raw] if isinstance(raw, str) else raw
    if raw is None:
        return ()
    if (
        not isinstance(stops, list)
        or not 1 <= len(stops) <= MAX_STOPS
        or not all(
            isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS and encodable(s) for s in stops
        )
    ):
        raise _param(
            "stop",
            f"'stop' must be a string or a list of 1 to {MAX_STOPS} strings, "
            f"each 1 to {MAX_STOP_CHARS} characters",
        )
    return tuple(stops)


def _reject_unsupported(body: dict[str, Any]) -> None:
    if body.get("n") not in (None, 1):
        raise _param("n", "memchat generates one choice per request; leave 'n' at 1")
    for name in ("tools", "functions"):
        if body.get(name):
            raise _param(name, f"memchat's models do not call tools; leave '{name}' out")
    if "model" in body and not isinstance(body["model"], str):
        raise _param("model", "'model' must be a string")


def _messages(raw: Any, max_chars: int) -> list[ChatMessage]:
    if not isinstance(raw, list) or not raw:
        raise _param("messages", "'messages' must be a non-empty list of {role, content}")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or item.get("role") not in _ROLES:
            raise _param(
                f"messages[{i}]", "each message needs a role: system, developer, user or assistant"
            )
        text = _content(item.get("content"), i)
        if not encodable(text):
            raise _param(f"messages[{i}].content", "content has an unpaired surrogate")
        if len(text) > max_chars:
            raise BadRequest(
                "message_too_long",
                f"messages[{i}] has {len(text)} characters; the limit is {max_chars}",
            )
        out.append(ChatMessage(_ROLES[item["role"]], text))
    return out


def _content(raw: Any, i: int) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in raw
    ):
        return "".join(p["text"] for p in raw)
    raise _param(
        f"messages[{i}].content", "content must be a string or a list of text parts (no images)"
    )


def _number(body: dict[str, Any], name: str, kind: type[int] | type[float]) -> Any:
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, int) if kind is int else isinstance(value, int | float)
    if not ok or isinstance(value, bool):
        raise _param(name, f"'{name}' must be {'an integer' if kind is int else 'a number'}")
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise _param(name, f"'{name}' must be true or false")
    return value


def _conversation(field: Any, header: str | None) -> str | None:
    if field is not None and not isinstance(field, str):
        raise _param(CONVERSATION_FIELD, f"'{CONVERSATION_FIELD}' must be a string")
    if field and header and field != header:
        raise _param(
            CONVERSATION_FIELD,
            f"'{CONVERSATION_FIELD}' and the {CONVERSATION_HEADER} header name different "
            "conversations",
        )
    return field or header or None


def _param(name: str, message: str) -> InvalidParameter:
    return InvalidParameter(name, message)


def finish_reason(status: Status) -> str:
    """OpenAI's finish_reason for how a reply ended."""
    return _FINISH.get(status, "stop")


@dataclass(frozen=True)
class Stamp:
    """What every response object of one reply carries."""

    id: str
    created: int
    model: str
    conversation: str | None = None

    def base(self, kind: str) -> dict[str, Any]:
        """The common fields of a `kind` object."""
        body: dict[str, Any] = {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
        }
        if self.conversation:
            body[CONVERSATION_FIELD] = self.conversation
        return body


def completion(stamp: Stamp, text: str, status: Status, used: dict[str, Any]) -> dict[str, Any]:
    """A whole `chat.completion` object."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": finish_reason(status),
        "logprobs": None,
    }
    return {**stamp.base("chat.completion"), "choices": [choice], "usage": used}


def chunk(stamp: Stamp, delta: dict[str, str], finish: str | None) -> dict[str, Any]:
    """One `chat.completion.chunk` of a stream."""
    choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    return {**stamp.base("chat.completion.chunk"), "choices": [choice]}


def usage_chunk(stamp: Stamp, used: dict[str, Any]) -> dict[str, Any]:
    """The last chunk when `stream_options.include_usage` is set: no choices, the usage."""
    return {**stamp.base("chat.completion.chunk"), "choices": [], "usage": used}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage object; `cached_tokens`: prompt tokens reused from the KV cache."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def models_list(model: str, created: int) -> dict[str, Any]:
    """The `GET /v1/models` body."""
    return {
        "object": "list",
        "data": [{"id": model, "object": "model", "created": created, "owned_by": "memchat"}],
    }
