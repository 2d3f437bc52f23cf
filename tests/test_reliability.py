"""Faults on fake models and the real Redis: a full queue, model and summarizer failures."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse
from redis.asyncio import Redis

from memory.store import Keys
from models.errors import BadRequest
from server import allocator
from server.app import create_app
from server.runtime import RUNTIME
from server.settings import Settings
from tests.fakes import FakeEmbedder, FakeLLM
from tests.wsutil import Client, MakeClient, chat, collect, drain

USER = "local"


async def _stored(client: Client, cid: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/api/conversations/{cid}/messages")
    assert resp.status == 200
    return list((await resp.json())["messages"])


async def _until(ws: ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while (frame := await ws.receive_json(timeout=30))["type"] != kind:
        pass
    return frame


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A small queue, so that a few sockets fill it."""
    return dataclasses.replace(settings, max_queue=2)


async def test_past_the_queue_limit_new_replies_are_refused_at_once(
    client: Client, llm: FakeLLM, redis: Redis
) -> None:
    llm.hold(0)
    async with (
        client.ws_connect("/ws") as a,
        client.ws_connect("/ws") as b,
        client.ws_connect("/ws") as c,
    ):
        await a.send_json({"type": "chat.send", "text": "first"})
        await b.send_json({"type": "chat.send", "text": "second"})
        await _until(a, "response.created")
        await _until(b, "response.created")
        await c.send_json({"type": "chat.send", "text": "third"})
        refused = await c.receive_json(timeout=30)
        resp = await client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
        )
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json())["error"]["code"] == "busy"
        llm.allow(100)
        done = [await collect(a), await collect(b)]
        assert [d.one("response.done")["status"] for d in done] == ["completed", "completed"]
        again = await chat(c, "third again")  # the slots were given back
    assert (refused["type"], refused["code"]) == ("error", "busy")
    assert "max_queue" in refused["message"]
    assert again.one("response.done")["status"] == "completed"
    assert len(await redis.zrange(Keys(USER).conversations(), 0, -1)) == 3
    assert client.app[RUNTIME].replies == 0


@pytest.mark.parametrize(
    ("after", "error", "code", "stored_reply"),
    [
        (0, RuntimeError("boom"), "model_error", None),
        (2, RuntimeError("boom"), "model_error", "one two"),
        (2, None, "model_error", "one two"),  # the engine caught a crash and said so
        (0, BadRequest("context_overflow", "the prompt has too many tokens"), "context_overflow",
         None),
    ],
)  # fmt: skip
async def test_a_model_failure_ends_the_reply_and_keeps_the_conversation(
    client: Client,
    llm: FakeLLM,
    redis: Redis,
    after: int,
    error: Exception | None,
    code: str,
    stored_reply: str | None,
) -> None:
    llm.enqueue(["Hello Ana", "one two three four", "You keep bees"])
    async with client.ws_connect("/ws") as ws:
        cid = (await chat(ws, "I am Ana and I keep bees")).conversation_id
        llm.fail(after, error)
        failed = await chat(ws, "tell me more", cid)
        done = failed.one("response.done")
        assert (done["status"], done["error"]["code"]) == ("error", code)
        assert done["error"]["message"]
        assert failed.text == (stored_reply or "")
        following = await chat(ws, "what do I keep?", cid)
    assert following.one("response.done")["status"] == "completed"
    expected = ["I am Ana and I keep bees", "Hello Ana", "tell me more"]
    expected += [stored_reply] if stored_reply else []
    assert [m.content for m in llm.history[-1][1:]] == [*expected, "what do I keep?"]
    stored = await _stored(client, cid)
    assert [m["text"] for m in stored] == [*expected, "what do I keep?", "You keep bees"]
    assert [m["status"] for m in stored if m["text"] == stored_reply] == (
        ["error"] if stored_reply else []
    )
    assert done["message_seq"] == (4 if stored_reply else None)
    await drain(client.app)
    assert await redis.execute_command("VCARD", Keys(USER).vectors(cid)) == len(stored)


async def test_a_message_the_context_cannot_hold_is_refused_before_it_is_stored(
    aiohttp_client: MakeClient, settings: Settings, redis: Redis
) -> None:
    llm = FakeLLM(n_ctx=100)
    client = await aiohttp_client(create_app(settings, llm=llm, embedder=FakeEmbedder()))
    async with client.ws_connect("/ws") as ws:
        ex = await chat(ws, "word " * 150)
        ok = await chat(ws, "a short one")
    error = ex.one("error")
    assert error["code"] == "context_length_exceeded"
    assert "100" in error["message"]
    assert ok.one("response.done")["status"] == "completed"
    assert len(await redis.zrange(Keys(USER).conversations(), 0, -1)) == 1
    assert len(llm.history) == 1


BAD_SUMMARIES: list[list[str | Exception]] = [
    [RuntimeError("the summarizer crashed")] * 20,
    [""] * 20,
    ["soup " * 40] * 20,  # degenerate repetition
]


@pytest.mark.parametrize("outputs", BAD_SUMMARIES, ids=["exception", "empty", "garbage"])
async def test_summarizer_failures_never_touch_replies_or_memory(
    aiohttp_client: MakeClient,
    settings: Settings,
    redis: Redis,
    outputs: list[str | Exception],
) -> None:
    llm = FakeLLM(n_ctx=300)
    llm.summaries = list(outputs)
    client = await aiohttp_client(create_app(settings, llm=llm, embedder=FakeEmbedder()))
    sentences = [f"turn {i} about gardens and bicycles and jazz in Lisbon today" for i in range(24)]
    async with client.ws_connect("/ws") as ws:
        cid = (await chat(ws, sentences[0])).conversation_id
        for text in sentences[1:]:
            ex = await chat(ws, text, cid)
            assert ex.one("response.done")["status"] == "completed"
            await drain(client.app)
    assert len(llm.summaries) < len(outputs), "the summarizer must have been asked"
    stored = await _stored(client, cid)
    assert [m["text"] for m in stored[0::2]] == sentences
    assert await redis.exists(Keys(USER).summary(cid)) == 0
    assert await redis.execute_command("VCARD", Keys(USER).vectors(cid)) == len(stored)
    metrics = (await (await client.get("/metrics")).text()).splitlines()
    assert not [line for line in metrics if line.startswith('memchat_errors_total{code="model')]


async def test_health_says_what_is_not_ready_and_why(client: Client, llm: FakeLLM) -> None:
    llm.is_ready = False
    resp = await client.get("/health")
    body = await resp.json()
    assert resp.status == 503
    assert (body["status"], body["model"], body["redis"]) == ("unavailable", False, True)
    assert set(body["reasons"]) == {"model"}
    assert "loading" in body["reasons"]["model"]


async def test_a_lone_surrogate_is_refused_on_both_transports(client: Client, redis: Redis) -> None:
    body = r'{"messages": [{"role": "user", "content": "bad \ud800"}], "conversation_id": "new"}'
    resp = await client.post(
        "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    async with client.ws_connect("/ws") as ws:
        await ws.send_str(r'{"type": "chat.send", "text": "bad \ud800"}')
        frame = await ws.receive_json(timeout=30)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "messages[0].content"
    assert (frame["type"], frame["code"]) == ("error", "invalid_text")
    assert await redis.keys("*") == []


def test_the_allocator_is_tuned_unless_the_environment_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    assert allocator.tune()  # glibc: the test machine's libc
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not allocator.tune()
