"""Stateless replicas: two memchat apps over one Redis serve the same conversations.

Each replica keeps only caches (recall indexes, prompt layouts, KV state); a conversation
begun on one continues on the other with the same history, summary and recall, edits made on
one reach the other, and a background summary fold runs once whichever replica asks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from memory.store import Store
from models.types import CancelToken, ChatMessage, Delta, Finished, SamplingParams
from server.app import create_app
from server.runtime import RUNTIME
from server.settings import Settings
from tests.fakes import BACKGROUND_TEXT, FakeEmbedder, FakeLLM
from tests.wsutil import Client, MakeClient, chat, drain

FILLER = " ".join(f"filler{i}" for i in range(25))
FACT = "my locker code is 4711"
QUESTION = "what is my locker code?"


class GatedLLM(FakeLLM):
    """A fake whose background (summary) generations wait at a gate once they have begun."""

    def __init__(self, n_ctx: int) -> None:
        super().__init__(n_ctx)
        self.summarizing = asyncio.Event()
        self.gate = asyncio.Event()
        self.folds = 0

    async def stream(
        self,
        messages: list[ChatMessage],
        params: SamplingParams,
        cancel: CancelToken,
        *,
        priority: int = 0,
        cache_key: str | None = None,
    ) -> AsyncIterator[Delta | Finished]:
        """Background work announces itself, then waits for the gate."""
        if priority != 0:
            self.folds += 1
            self.summarizing.set()
            await self.gate.wait()
        async for event in super().stream(
            messages, params, cancel, priority=priority, cache_key=cache_key
        ):
            yield event


@pytest.fixture
async def replicas(
    aiohttp_client: MakeClient, settings: Settings, redis: Redis
) -> tuple[Client, Client]:
    """Two replicas, each with its own model, embedder and Redis connection, over one Redis."""
    made = []
    for _ in range(2):
        app = create_app(settings, llm=FakeLLM(n_ctx=300), embedder=FakeEmbedder())
        made.append(await aiohttp_client(app))
    return made[0], made[1]


def _llm(client: Client) -> FakeLLM:
    llm = client.app[RUNTIME].llm
    assert isinstance(llm, FakeLLM)
    return llm


def _prompt(client: Client) -> str:
    return "\n".join(m.content for m in _llm(client).history[-1])


async def _say(client: Client, cid: str | None, *texts: str) -> tuple[str, dict[str, Any]]:
    """Send messages over the replica's websocket; the conversation and the last context."""
    async with client.ws_connect("/ws") as ws:
        for text in texts:
            ex = await chat(ws, text, cid)
            assert ex.of("error") == [], ex.frames
            cid = ex.conversation_id
    await drain(client.app)  # indexing and the summary fold run in the background
    assert cid is not None
    return cid, ex.one("context")["context"]


async def _turns(client: Client, cid: str) -> list[tuple[str, str]]:
    resp = await client.get(f"/api/conversations/{cid}/messages")
    assert resp.status == 200
    return [(m["role"], m["text"]) for m in (await resp.json())["messages"]]


async def test_a_conversation_moves_between_replicas_with_history_summary_and_recall(
    replicas: tuple[Client, Client], redis: Redis
) -> None:
    a, b = replicas
    cid, _ = await _say(a, None, FACT, *[f"{FILLER} turn{i}" for i in range(8)])
    summary = await Store(redis).get_summary("local", cid)
    assert summary.version >= 1 and summary.text == BACKGROUND_TEXT  # folded on replica a
    resp = await b.get(f"/api/conversations/{cid}/context", params={"message": QUESTION})
    packed = (await resp.json())["context"]  # what b's memory packs, from Redis alone
    assert (packed["summary_version"], packed["summary_upto"]) == (
        summary.version,
        summary.upto_seq,
    )
    assert packed["sections"]["summary"] > 0
    cid_b, _ = await _say(b, cid, "and what did I say in turn7?")
    assert cid_b == cid
    assert f"{FILLER} turn7" in _prompt(b)  # the recent history written on a
    assert _llm(b).history[-1][-1].content == "and what did I say in turn7?"
    cid, context = await _say(b, cid, QUESTION)
    assert 1 in [t["seq"] for t in context["turns"] if t["reason"] == "recalled"]
    assert "4711" in _prompt(b)  # recalled from turns replica b never saw
    assert await _turns(a, cid) == await _turns(b, cid)
    assert len(await _turns(a, cid)) == 2 * 11


async def test_forget_and_summary_edits_on_one_replica_reach_the_other(
    replicas: tuple[Client, Client],
) -> None:
    a, b = replicas
    cid, _ = await _say(a, None, FACT, *[f"{FILLER} turn{i}" for i in range(8)])
    url = f"/api/conversations/{cid}/summary"
    assert (await a.put(url, json={"text": "The locker code is 4711."})).status == 200
    await _say(a, cid, "hello again")
    assert "The locker code is 4711." in _prompt(a)  # a pinned the edited summary
    forgot = await b.delete(f"/api/conversations/{cid}/messages/1")
    assert (await forgot.json())["summary_cleared"] is True
    _, context = await _say(a, cid, QUESTION)
    assert "4711" not in _prompt(a)  # neither the forgotten turn nor the summary that held it
    assert 1 not in [t["seq"] for t in context["turns"]]
    assert (await b.put(url, json={"text": "The user is called Zorblax."})).status == 200
    await _say(a, cid, "who am I?")
    assert "Zorblax" in _prompt(a)


async def test_an_edit_on_one_replica_reaches_the_others_recall(
    replicas: tuple[Client, Client],
) -> None:
    a, b = replicas
    cid, _ = await _say(a, None, FACT, *[f"{FILLER} turn{i}" for i in range(8)])
    await _say(a, cid, QUESTION)
    assert "4711" in _prompt(a)  # a's recall index now holds turn 1
    async with b.ws_connect("/ws") as ws:
        frame = {"type": "chat.edit", "conversation_id": cid, "seq": 1, "text": "my code is 9052"}
        await ws.send_json(frame)
        while (await ws.receive_json())["type"] != "response.done":
            pass
    await drain(b.app)
    await _say(b, cid, *[f"{FILLER} more{i}" for i in range(8)])
    _, context = await _say(a, cid, QUESTION)
    assert "9052" in _prompt(a) and "4711" not in _prompt(a)
    assert 1 in [t["seq"] for t in context["turns"] if t["reason"] == "recalled"]


async def test_a_delete_on_one_replica_is_seen_by_the_other(
    replicas: tuple[Client, Client],
) -> None:
    a, b = replicas
    cid, _ = await _say(a, None, "remember the boat")
    assert (await b.delete(f"/api/conversations/{cid}")).status == 200
    assert (await a.get(f"/api/conversations/{cid}")).status == 404
    async with a.ws_connect("/ws") as ws:
        ex = await chat(ws, "still there?", cid)
    assert ex.one("error")["code"] == "conversation_not_found"


async def test_two_replicas_racing_to_fold_make_one_summary(
    aiohttp_client: MakeClient, settings: Settings, redis: Redis
) -> None:
    models = [GatedLLM(n_ctx=300), GatedLLM(n_ctx=300)]
    a, b = [
        await aiohttp_client(create_app(settings, llm=m, embedder=FakeEmbedder())) for m in models
    ]
    models[0].gate.set()
    models[1].gate.set()
    cid, _ = await _say(a, None, "one", "two", "three")
    for m in models:
        m.gate.clear()
    store = Store(redis)
    before = await store.get_summary("local", cid)
    for i in range(12):
        await store.append("local", cid, "user" if i % 2 == 0 else "assistant", f"{FILLER} x{i}")
    upto = await store.last_seq("local", cid)
    fold_a = asyncio.ensure_future(a.app[RUNTIME].memory.summarizer.fold("local", cid, upto))
    await models[0].summarizing.wait()  # replica a holds the lock and is generating
    assert await b.app[RUNTIME].memory.summarizer.fold("local", cid, upto) is False
    models[0].gate.set()
    assert await fold_a is True
    assert (models[0].folds, models[1].folds) == (1, 0)
    after = await store.get_summary("local", cid)
    assert after.version == before.version + 1 and after.upto_seq > before.upto_seq
    assert await redis.keys("*:lock:*") == []  # released by its owner


async def test_the_latest_replys_context_record_is_read_on_any_replica(
    replicas: tuple[Client, Client],
) -> None:
    a, b = replicas
    cid, packed_on_a = await _say(a, None, "hello", "I like boats")
    resp = await b.get(f"/api/conversations/{cid}/context")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["context"] == packed_on_a
    _, packed_on_b = await _say(b, cid, "and trains")
    assert (await (await a.get(f"/api/conversations/{cid}/context")).json())[
        "context"
    ] == packed_on_b  # the newer reply, built on b, is what a shows now
