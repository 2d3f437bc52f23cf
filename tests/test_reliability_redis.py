"""Redis going away under traffic, and a power cut's torn AOF tail, on a redis-server of our own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse
from redis.asyncio import Redis

from memory.manager import MemoryManager
from memory.store import Keys, Store
from server.app import create_app
from server.settings import Settings
from tests.fakes import FakeEmbedder, FakeLLM, FakeTokenizer
from tests.redis_server import RedisServer
from tests.wsutil import MakeClient, chat, collect, drain

USER = "local"


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server this test may stop and start (never the session's shared one)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


async def _until(ws: ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while (frame := await ws.receive_json(timeout=30))["type"] != kind:
        pass
    return frame


async def test_redis_down_is_a_clear_error_and_back_up_recovers_losing_nothing(
    aiohttp_client: MakeClient, tmp_path: Path, own_redis: RedisServer
) -> None:
    settings = Settings(redis_url=own_redis.url, data_dir=tmp_path, reply_tokens=64)
    llm = FakeLLM()
    client = await aiohttp_client(create_app(settings, llm=llm, embedder=FakeEmbedder()))
    llm.enqueue(["Hello Ana", "one two three four"])
    async with client.ws_connect("/ws") as ws, client.ws_connect("/ws") as other:
        cid = (await chat(ws, "I am Ana")).conversation_id
        await drain(client.app)
        llm.hold(1)
        await ws.send_json({"type": "chat.send", "text": "count to four", "conversation_id": cid})
        await _until(ws, "response.created")  # acknowledged: the message is stored
        await _until(ws, "response.delta")  # generating
        own_redis.stop()
        llm.allow(100)  # the reply ends while Redis is down: storing it is retried

        health = await client.get("/health")
        body = await health.json()
        refused = await chat(other, "is anyone there?")
        listed = await client.get("/api/conversations")

        own_redis.start()  # same port, same AOF; memchat is not restarted
        done = (await collect(ws)).one("response.done")
        after = await chat(other, "back again?")
    assert health.status == 503
    assert (body["status"], body["redis"], body["model"]) == ("unavailable", False, True)
    assert "Connection" in body["reasons"]["redis"]
    assert refused.one("error")["code"] == "redis_unavailable"
    assert listed.status == 503
    assert (await listed.json())["error"]["code"] == "redis_unavailable"
    assert (done["status"], done["message_seq"]) == ("completed", 4)
    assert after.one("response.done")["status"] == "completed"
    assert (await client.get("/health")).status == 200
    resp = await client.get(f"/api/conversations/{cid}/messages")
    texts = [m["text"] for m in (await resp.json())["messages"]]
    assert texts == ["I am Ana", "Hello Ana", "count to four", "one two three four"]


async def test_a_torn_aof_tail_loses_the_last_write_whole_never_half(
    own_redis: RedisServer,
) -> None:
    """A power cut can cut the AOF mid-transaction; Redis drops the torn transaction on load."""
    redis = Redis.from_url(own_redis.url, decode_responses=True)
    store = Store(redis)
    cid = (await store.create_conversation(USER)).id
    for i in range(1, 6):
        await store.append(USER, cid, "user", f"message {i}")
    await redis.aclose()
    own_redis.stop()
    tail = own_redis.aof_tail()
    data = tail.read_bytes()
    last_multi = data.rindex(b"MULTI")
    tail.write_bytes(data[: last_multi + 40])  # the last message's transaction, torn

    own_redis.start()
    redis = Redis.from_url(own_redis.url, decode_responses=True)
    store = Store(redis)
    stored = await store.messages(USER, cid)
    assert [m.text for m in stored] == [f"message {i}" for i in range(1, 5)]
    again = await store.append(USER, cid, "user", "after the power cut")
    assert [m.text for m in await store.messages(USER, cid)][-1] == "after the power cut"
    assert again.seq > stored[-1].seq
    await redis.aclose()


class _FlakyStore(Store):
    """A store whose vector writes fail while `down` is set, as they do when Redis is."""

    down = False

    async def add_vectors(self, user: str, cid: str, seqs: Any, vectors: Any) -> bool:
        if self.down:
            raise ConnectionError("Connection refused")
        return await super().add_vectors(user, cid, seqs, vectors)


async def test_turns_whose_vectors_were_lost_are_indexed_with_the_next_turn(
    redis: Redis,
) -> None:
    store = _FlakyStore(redis)
    memory = MemoryManager(store, FakeTokenizer(), FakeEmbedder())
    cid = (await store.create_conversation(USER)).id

    async def said(role: str, text: str) -> Any:
        return await memory.record(USER, cid, role, text)

    await memory.index(USER, cid, [await said("user", "My cat Miso likes tuna")])
    lost = [await said("user", "I moved to Lisbon in May"), await said("assistant", "Lisbon!")]
    store.down = True
    with pytest.raises(ConnectionError):
        await memory.index(USER, cid, lost)  # the background task fails and is dropped
    store.down = False
    after = await said("user", "What should I cook tonight?")
    in_flight = await said("assistant", "Tuna pasta?")  # its own indexing is still to come

    await memory.index(USER, cid, [after])
    member = [
        await redis.execute_command("VISMEMBER", Keys(USER).vectors(cid), str(seq))
        for seq in range(1, 6)
    ]
    assert member == [1, 1, 1, 1, 0], "the lost turns 2 and 3 indexed; turn 5 left to its own"
    assert await store.unindexed(USER, cid, in_flight.seq) == [in_flight.seq]
    [lisbon] = await FakeEmbedder().embed(["Lisbon"])
    assert 2 in [hit.seq for hit in await store.similar(USER, cid, lisbon, 2)]
