"""Errors the server raises and catches at its boundary.

The general ones live in the bottom layer (models/errors.py); access control adds its own.
"""

from __future__ import annotations

import math

from models.errors import BadRequest, Busy, MemchatError, ModelError, NotFound, Unavailable

__all__ = [
    "BadRequest",
    "Busy",
    "Forbidden",
    "InvalidParameter",
    "MemchatError",
    "ModelError",
    "NotFound",
    "QueueFull",
    "RateLimited",
    "Unauthorized",
    "Unavailable",
]


class InvalidParameter(BadRequest):
    """One named request parameter is wrong (OpenAI's `param`)."""

    code = "invalid_parameter"

    def __init__(self, param: str, message: str) -> None:
        super().__init__(None, message)
        self.param = param


class Unauthorized(MemchatError):
    """No API key, or one that is not configured."""

    status = 401
    code = "invalid_api_key"


class Forbidden(MemchatError):
    """The request is not allowed from where it came (a browser origin)."""

    status = 403
    code = "forbidden"


class QueueFull(Busy):
    """Too many replies are waiting or generating; retry in a moment (503, code "busy")."""

    status = 503

    def __init__(self, limit: int) -> None:
        super().__init__(
            "busy",
            f"the server is busy: {limit} replies are already waiting or generating "
            "(max_queue); retry in a moment",
        )
        self.retry_after = 1


class RateLimited(MemchatError):
    """The key sent more requests than its limit; retry after `retry_after` seconds."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(None, message)
        self.retry_after = max(1, math.ceil(retry_after))


def error_type(status: int) -> str:
    """OpenAI's `type` for an error status (llama-server's names for 5xx)."""
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "unavailable_error",
}
