"""Websocket test helpers: send a message, collect frames until the reply ends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientWebSocketResponse
from aiohttp.test_utils import TestClient

END_TYPES = {"response.done", "error"}
Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]


@dataclass
class Exchange:
    """The frames one chat.send produced."""

    frames: list[dict[str, Any]] = field(default_factory=list)

    def of(self, kind: str) -> list[dict[str, Any]]:
        """Frames of one type."""
        return [f for f in self.frames if f["type"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        """The single frame of a type."""
        found = self.of(kind)
        assert len(found) == 1, f"expected one {kind}, got {self.frames}"
        return found[0]

    @property
    def text(self) -> str:
        """The streamed reply text."""
        return "".join(f["delta"] for f in self.of("response.delta"))

    @property
    def conversation_id(self) -> str:
        """The conversation the reply belongs to."""
        return str(self.one("response.created")["conversation_id"])


async def collect(ws: ClientWebSocketResponse) -> Exchange:
    """Read frames until response.done or error."""
    ex = Exchange()
    while True:
        frame = await ws.receive_json(timeout=120)
        ex.frames.append(frame)
        if frame["type"] in END_TYPES:
            return ex


async def chat(ws: ClientWebSocketResponse, text: str, cid: str | None = None) -> Exchange:
    """Send one message and collect the whole reply."""
    frame: dict[str, Any] = {"type": "chat.send", "text": text}
    if cid is not None:
        frame["conversation_id"] = cid
    await ws.send_json(frame)
    return await collect(ws)


async def drain(app: Any) -> None:
    """Wait for every reply and background job the app has in flight."""
    from server.runtime import RUNTIME

    rt = app[RUNTIME]
    while rt.background:
        await asyncio.gather(*list(rt.background), return_exceptions=True)
