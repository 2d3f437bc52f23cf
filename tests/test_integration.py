"""End to end on real parts: redis-server 8, SmolLM2 through llama.cpp, MiniLM embeddings."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from memory.store import Keys
from models.embedder import SentenceEmbedder
from models.llama_engine import LlamaEngine
from server.app import create_app
from server.settings import Settings
from tests.test_chat_ws import BAD_FRAMES
from tests.wsutil import chat, collect, drain

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]
pytestmark = pytest.mark.integration


@pytest.fixture
async def client(
    aiohttp_client: MakeClient,
    settings: Settings,
    engine: LlamaEngine,
    embedder: SentenceEmbedder,
    redis: Redis,
) -> Client:
    await engine.wait_ready()
    return await aiohttp_client(create_app(settings, llm=engine, embedder=embedder))


async def test_three_turn_conversation_streams_and_persists(
    client: Client, engine: LlamaEngine, redis: Redis
) -> None:
    turns = ["My name is Ana and I keep bees.", "What is a good name for a bee hive?", "Thanks!"]
    async with client.ws_connect("/ws") as ws:
        exchanges = [await chat(ws, turns[0])]
        cid = exchanges[0].conversation_id
        for text in turns[1:]:
            exchanges.append(await chat(ws, text, cid))
    for ex in exchanges:
        done = ex.one("response.done")
        assert done["status"] in {"completed", "length"}
        assert len(ex.of("response.delta")) >= 2, "the reply must stream in pieces"
        assert ex.text.strip()
        assert done["usage"]["completion_tokens"] >= len(ex.of("response.delta"))
        assert done["timings"]["ttft_ms"] > 0
    last = exchanges[-1]
    record = last.one("context")["context"]
    assert [t["seq"] for t in record["turns"]] == [1, 2, 3, 4]
    # Exact accounting: what the engine was fed is what the memory manager counted.
    assert last.one("response.done")["usage"]["prompt_tokens"] == record["prompt_tokens"]
    resp = await client.get(f"/api/conversations/{cid}/messages")
    stored = (await resp.json())["messages"]
    assert [m["text"] for m in stored[0::2]] == turns
    assert [m["text"] for m in stored[1::2]] == [ex.text for ex in exchanges]
    await drain(client.app)
    assert await redis.execute_command("VCARD", Keys("local").vectors(cid)) == 6


async def test_cancel_mid_reply_keeps_the_partial_text(client: Client) -> None:
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "chat.send", "text": "Write a very long story about a dragon."})
        seen: list[dict[str, Any]] = []
        while len([f for f in seen if f["type"] == "response.delta"]) < 3:
            seen.append(await ws.receive_json(timeout=60))
        created = next(f for f in seen if f["type"] == "response.created")
        await ws.send_json({"type": "response.cancel"})
        rest = await collect(ws)
    done = rest.one("response.done")
    assert done["status"] == "cancelled"
    streamed = "".join(f["delta"] for f in seen if f["type"] == "response.delta") + rest.text
    assert done["usage"]["completion_tokens"] < 64
    resp = await client.get(f"/api/conversations/{created['conversation_id']}/messages")
    reply = (await resp.json())["messages"][-1]
    assert (reply["status"], reply["text"]) == ("cancelled", streamed)


async def test_restart_keeps_conversations(
    aiohttp_client: MakeClient,
    engine: LlamaEngine,
    embedder: SentenceEmbedder,
    tmp_path: Path,
) -> None:
    """The embedded Redis writes its AOF under the data dir; a new server reads it back."""
    settings = Settings(data_dir=tmp_path / "data", n_ctx=2048, reply_tokens=16)
    first = await aiohttp_client(create_app(settings, llm=engine, embedder=embedder))
    async with first.ws_connect("/ws") as ws:
        ex = await chat(ws, "Remember: the code word is heliotrope.")
    cid = ex.conversation_id
    await drain(first.app)
    await first.close()
    assert (tmp_path / "data" / "appendonlydir").is_dir()

    second = await aiohttp_client(create_app(settings, llm=engine, embedder=embedder))
    listed = (await (await second.get("/api/conversations")).json())["conversations"]
    assert [c["id"] for c in listed] == [cid]
    msgs = (await (await second.get(f"/api/conversations/{cid}/messages")).json())["messages"]
    assert [m["text"] for m in msgs] == ["Remember: the code word is heliotrope.", ex.text]
    async with second.ws_connect("/ws") as ws:
        follow = await chat(ws, "What is the code word?", cid)
    assert [t["seq"] for t in follow.one("context")["context"]["turns"]] == [1, 2]
    await second.close()


async def test_context_never_exceeds_the_window(
    aiohttp_client: MakeClient,
    engine: LlamaEngine,
    embedder: SentenceEmbedder,
    settings: Settings,
    redis: Redis,
) -> None:
    small = dataclasses.replace(settings, reply_tokens=48)
    client = await aiohttp_client(create_app(small, llm=engine, embedder=embedder))
    long_text = "The quick brown fox jumps over the lazy dog. " * 60
    async with client.ws_connect("/ws") as ws:
        cid = (await chat(ws, long_text)).conversation_id
        for _ in range(4):
            ex = await chat(ws, long_text, cid)
            record = ex.one("context")["context"]
            done = ex.one("response.done")
            assert done["usage"]["prompt_tokens"] + 48 <= engine.n_ctx
            assert record["history_tokens"] <= record["budget"]
    assert len(record["turns"]) < 9, "older turns must have been left out"


async def test_health_reports_ready(client: Client) -> None:
    resp = await client.get("/health")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok", "model": True, "embedder": True, "redis": True}


async def test_every_bad_frame_is_refused_and_stores_nothing(client: Client, redis: Redis) -> None:
    async with client.ws_connect("/ws") as ws:
        for raw, code in BAD_FRAMES:
            await ws.send_str(raw)
            frame = await ws.receive_json(timeout=30)
            assert (frame["type"], frame["code"]) == ("error", code), raw
        await ws.send_bytes(b"\xff")
        assert (await ws.receive_json(timeout=30))["code"] == "binary_frame"
        assert await redis.keys("*") == []
        await ws.send_json({"type": "chat.send", "text": "Tell me a long story about the sea."})
        await ws.send_json({"type": "chat.send", "text": "too soon"})
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["type"] != "response.done":
            frames.append(await ws.receive_json(timeout=60))
    assert [f["code"] for f in frames if f["type"] == "error"] == ["busy"]
    cid = next(f["conversation_id"] for f in frames if f["type"] == "response.created")
    stored = (await (await client.get(f"/api/conversations/{cid}/messages")).json())["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant"]


async def test_delete_removes_all_keys_of_a_conversation(client: Client, redis: Redis) -> None:
    async with client.ws_connect("/ws") as ws:
        keep = (await chat(ws, "Keep this one.")).conversation_id
        gone = (await chat(ws, "Delete this one.")).conversation_id
    await drain(client.app)
    keys = Keys("local")
    assert await redis.exists(*keys.of_conversation(gone)) >= 3
    assert (await client.delete(f"/api/conversations/{gone}")).status == 200
    assert await redis.exists(*keys.of_conversation(gone)) == 0
    assert [k for k in await redis.keys("*") if gone in k] == []
    assert await redis.exists(keys.messages(keep), keys.vectors(keep)) == 2
