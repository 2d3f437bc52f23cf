"""A client that vanishes mid-reply (no close frame: the TCP connection just dies) frees the real
model within one token, and the partial reply is stored as interrupted."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from models.embedder import SentenceEmbedder
from models.llama_engine import LlamaEngine
from models.types import CancelToken, ChatMessage, Delta, Finished, SamplingParams
from server.app import create_app
from server.settings import Settings
from tests.wsutil import MakeClient, chat, drain

pytestmark = pytest.mark.integration
REPLY_TOKENS = 400


class WatchedCancel:
    """The server's cancel token, counting the checks generation made while it was not set."""

    def __init__(self, inner: CancelToken) -> None:
        self.inner = inner
        self.clear_checks = 0

    def is_set(self) -> bool:
        """Whether generation must stop."""
        stop = self.inner.is_set()
        self.clear_checks += not stop
        return stop


class Watched:
    """The real engine, with each chat reply's cancel checks and final accounting recorded."""

    def __init__(self, engine: LlamaEngine) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.n_ctx = engine.n_ctx
        self.replies: list[tuple[WatchedCancel, Finished]] = []

    @property
    def ready(self) -> bool:
        """The engine's readiness."""
        return self.engine.ready

    async def stream(
        self,
        messages: list[ChatMessage],
        params: SamplingParams,
        cancel: CancelToken,
        *,
        priority: int = 0,
        cache_key: str | None = None,
    ) -> AsyncIterator[Delta | Finished]:
        """The engine's stream, watched."""
        watched = WatchedCancel(cancel)
        stream = self.engine.stream(
            messages, params, watched, priority=priority, cache_key=cache_key
        )
        async for event in stream:
            if isinstance(event, Finished) and priority == 0:
                self.replies.append((watched, event))
            yield event

    async def prefill(self, messages: list[ChatMessage], *, cache_key: str) -> Finished:
        """The engine's prefill."""
        return await self.engine.prefill(messages, cache_key=cache_key)

    def close(self) -> None:
        """Owned by the session fixture."""


class RawSocket:
    """A bare websocket client over a TCP connection that can be cut without a close frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @staticmethod
    async def connect(host: str, port: int) -> RawSocket:
        """Open the connection and do the upgrade handshake."""
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return RawSocket(reader, writer)

    def send_json(self, data: dict[str, Any]) -> None:
        """One masked text frame (payloads under 126 bytes)."""
        payload = json.dumps(data).encode()
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    async def receive_json(self) -> dict[str, Any]:
        """One unmasked text frame from the server."""
        first, second = await self.reader.readexactly(2)
        assert first & 0x0F == 1, "expected a text frame"
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        result: dict[str, Any] = json.loads(await self.reader.readexactly(size))
        return result

    def vanish(self) -> None:
        """Reset the connection: no close frame, as when a laptop lid shuts or Wi-Fi drops."""
        self.writer.transport.abort()


async def test_a_vanished_client_frees_the_model_within_one_token(
    aiohttp_client: MakeClient,
    settings: Settings,
    engine: LlamaEngine,
    embedder: SentenceEmbedder,
    redis: Redis,
) -> None:
    await engine.wait_ready()
    model = Watched(engine)
    long = dataclasses.replace(settings, reply_tokens=REPLY_TOKENS)
    client = await aiohttp_client(create_app(long, llm=model, embedder=embedder))
    raw = await RawSocket.connect(str(client.server.host), int(client.server.port or 0))
    raw.send_json({"type": "chat.send", "text": "Write a very long story about a dragon."})
    seen: list[dict[str, Any]] = []
    while len([f for f in seen if f["type"] == "response.delta"]) < 3:
        seen.append(await raw.receive_json())
    raw.vanish()
    await drain(client.app)
    async with client.ws_connect("/ws") as ws:
        after = await chat(ws, "Say hello.")  # the model is free for the next client

    watched, finished = model.replies[0]
    assert finished.reason == "cancelled"
    assert finished.completion_tokens < REPLY_TOKENS
    # Every token was preceded by a check of the cancel token: once it was set, at most the
    # token already being decoded finished.
    assert finished.completion_tokens <= watched.clear_checks
    cid = next(f["conversation_id"] for f in seen if f["type"] == "response.created")
    stored = (await (await client.get(f"/api/conversations/{cid}/messages")).json())["messages"]
    streamed = "".join(f["delta"] for f in seen if f["type"] == "response.delta")
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["status"] == "interrupted"
    assert stored[1]["text"].startswith(streamed)
    assert after.one("response.done")["status"] in {"completed", "length"}
