"""memchat on a real 3-master Redis Cluster (redis-server 8 with --cluster-enabled yes).

Every key of a user shares the `{user}` hash tag, so each user's data lives in one slot:
transactions, scripts and vector sets work as on one node, while users spread over masters.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from memory.manager import MemoryManager
from memory.store import Keys, Store, connect
from models.errors import Unavailable
from server.app import create_app
from server.settings import Settings
from tests.fakes import BACKGROUND_TEXT, FakeEmbedder, FakeLLM, FakeTokenizer
from tests.redis_cluster import LocalCluster
from tests.wsutil import MakeClient, chat, drain

FILLER = " ".join(f"filler{i}" for i in range(25))
SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One cluster for the module: three masters owning a third of the slots each."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
async def cluster(cluster_url: str) -> AsyncIterator[RedisCluster]:
    """A cluster client, as memchat makes one; every master is emptied after the test."""
    client = connect(cluster_url, cluster=True)
    assert isinstance(client, RedisCluster)
    yield client
    await client.flushall()
    await client.aclose()


def _users_on_distinct_masters(cluster: RedisCluster, count: int) -> list[str]:
    """User names whose keys the cluster keeps on different masters."""
    users: dict[str, str] = {}
    for i in range(100):
        user = f"user{i}"
        node = cluster.get_node_from_key(Keys(user).conversations())
        assert node is not None
        users.setdefault(node.name, user)
    assert len(users) >= count
    return list(users.values())[:count]


async def test_store_recall_summary_and_delete_work_end_to_end_on_a_cluster(
    cluster: RedisCluster,
) -> None:
    store = Store(cluster)
    await store.check_server()
    memory = MemoryManager(store, FakeTokenizer(), FakeEmbedder(), summarizer_model=FakeLLM())
    ana, bob = _users_on_distinct_masters(cluster, 2)
    cid = (await store.create_conversation(ana)).id
    other = (await store.create_conversation(bob)).id
    await store.append(bob, other, "user", "bob's own turn")
    rows = [("user", "my locker code is 4711", "completed", None, "", {})]
    rows += [("user" if i % 2 else "assistant", f"{FILLER} turn{i}", "completed", None, "", {})
             for i in range(12)]  # fmt: skip
    stored = await store.append_many(ana, cid, rows)
    assert len({key_slot(k.encode()) for k in Keys(ana).of_conversation(cid)}) == 1
    await memory.index(ana, cid, stored)  # vectors added by a script on the user's master
    assert await store.vector_count(ana, cid) == len(stored)

    built = await memory.build_context(ana, cid, "what is my locker code?", 150, SYSTEM)
    recalled = [t.seq for t in built.record.turns if t.reason == "recalled"]
    assert 1 in recalled
    assert any("4711" in m.content for m in built.messages)

    assert memory.summarizer is not None
    assert await memory.summarizer.fold(ana, cid, len(stored)) is True
    summary = await store.get_summary(ana, cid)
    assert (summary.text, summary.version) == (BACKGROUND_TEXT, 1)

    await store.forget_messages(ana, cid, [1])
    assert await store.vector_count(ana, cid) == len(stored) - 1
    assert (await store.get_conversation(ana, cid)).epoch == 1
    built = await memory.build_context(ana, cid, "what is my locker code?", 150, SYSTEM)
    assert not any("4711" in m.content for m in built.messages)

    await store.delete_conversation(ana, cid)
    assert await _keys(cluster, ana) == []
    assert Keys(bob).messages(other) in await _keys(cluster, bob)  # scans reach every master
    assert await store.list_conversations(ana) == []
    assert [m.text for m in await store.messages(bob, other)] == ["bob's own turn"]


async def _keys(cluster: RedisCluster, user: str) -> list[str]:
    return [k async for k in cluster.scan_iter(match=f"memchat:{{{user}}}:*")]


async def test_the_summary_lock_holds_across_clients_of_the_cluster(
    cluster: RedisCluster, cluster_url: str
) -> None:
    store = Store(cluster)
    cid = (await store.create_conversation("ana")).id
    second = Store(connect(cluster_url, cluster=True))
    key = Keys("ana").lock(cid, "summary")
    async with store.job_lock("ana", cid, "summary", 60_000) as held:
        assert held is True
        assert 0 < await cluster.pttl(key) <= 60_000  # lapses if its holder dies
        async with second.job_lock("ana", cid, "summary", 60_000) as other:
            assert other is False
        assert await cluster.exists(key) == 1  # a loser never releases the holder's lock
    assert await cluster.exists(key) == 0
    await second.redis.aclose()


async def test_the_app_chats_and_deletes_on_a_cluster_url(
    aiohttp_client: MakeClient, cluster: RedisCluster, cluster_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        redis_url=cluster_url, redis_cluster=True, data_dir=tmp_path, reply_tokens=64
    )
    llm = FakeLLM()
    llm.enqueue(["Hello Ana", "You like kayaks"])
    client = await aiohttp_client(create_app(settings, llm=llm, embedder=FakeEmbedder()))
    async with client.ws_connect("/ws") as ws:
        cid = (await chat(ws, "Hi, I am Ana")).conversation_id
        second = await chat(ws, "I like kayaks", cid)
    await drain(client.app)
    assert second.text == "You like kayaks"
    assert [m.content for m in llm.history[-1]][-2:] == ["Hello Ana", "I like kayaks"]
    messages = await (await client.get(f"/api/conversations/{cid}/messages")).json()
    assert [m["text"] for m in messages["messages"]] == [
        "Hi, I am Ana",
        "Hello Ana",
        "I like kayaks",
        "You like kayaks",
    ]
    assert await Store(cluster).vector_count("local", cid) == 4
    assert (await client.delete(f"/api/conversations/{cid}")).status == 200
    assert (await client.get(f"/api/conversations/{cid}")).status == 404


async def test_a_plain_client_on_a_cluster_node_is_refused_with_the_fix(cluster_url: str) -> None:
    plain = Redis.from_url(cluster_url, decode_responses=True)
    with pytest.raises(Unavailable) as caught:
        await Store(plain).check_server()
    await plain.aclose()
    assert caught.value.code == "redis_is_cluster"
    assert "MEMCHAT_REDIS_CLUSTER=true" in caught.value.message


async def test_an_edit_mark_never_brings_back_a_deleted_conversation(
    cluster: RedisCluster,
) -> None:
    store = Store(cluster)
    cid = (await store.create_conversation("ana")).id
    await store.mark_edited("ana", cid)
    assert (await store.get_conversation("ana", cid)).epoch == 1
    await store.delete_conversation("ana", cid)
    await store.mark_edited("ana", cid)  # a summary edit racing the delete
    assert await _keys(cluster, "ana") == []
