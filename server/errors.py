"""Errors the server raises and catches at its boundary (re-exported from the bottom layer)."""

from models.errors import BadRequest, Busy, MemchatError, ModelError, NotFound, Unavailable

__all__ = ["BadRequest", "Busy", "MemchatError", "ModelError", "NotFound", "Unavailable"]
