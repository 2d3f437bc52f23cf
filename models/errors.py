"""The error hierarchy every layer raises; the server turns them into error frames and bodies.

It lives in the bottom layer so that models, memory and server can all raise it.
"""

from __future__ import annotations


class MemchatError(Exception):
    """An error with a stable code, a message that says what to do, and an HTTP status."""

    status = 500
    code = "internal_error"

    def __init__(self, code: str | None = None, message: str = "") -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message


class BadRequest(MemchatError):
    """The client sent something malformed; fix the request and retry."""

    status = 400
    code = "bad_request"


class NotFound(MemchatError):
    """The named thing does not exist (or is not the caller's)."""

    status = 404
    code = "not_found"


class Busy(MemchatError):
    """The request conflicts with work in progress; retry when it ends."""

    status = 409
    code = "busy"


class Unavailable(MemchatError):
    """A backing service (model, Redis) is not ready; retry shortly."""

    status = 503
    code = "unavailable"


class ModelError(MemchatError):
    """Generation failed inside the model."""

    status = 500
    code = "model_error"
