"""The OpenAI-compatible API, driven by the official `openai` client against a listening server."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from models.types import ChatMessage
from server.app import create_app
from server.settings import ApiKey, Settings
from tests.fakes import FakeEmbedder, FakeLLM, FakeTokenizer

ALICE = "alice-key-1"
KEYS = (ApiKey("alice", ALICE), ApiKey("bob", "bob-key-2"))


@pytest.fixture
def llm() -> FakeLLM:
    return FakeLLM()


@pytest.fixture
async def server(settings: Settings, llm: FakeLLM, redis: Redis) -> AsyncIterator[TestServer]:
    app = create_app(dataclasses.replace(settings, api_keys=KEYS), llm=llm, embedder=FakeEmbedder())
    async with TestServer(app, host="127.0.0.1") as srv:
        yield srv


@pytest.fixture
async def ai(server: TestServer) -> AsyncIterator[openai.AsyncOpenAI]:
    base = str(server.make_url("/v1"))
    async with openai.AsyncOpenAI(base_url=base, api_key=ALICE, max_retries=0) as client:
        yield client


async def _api(server: TestServer, method: str, path: str) -> Any:
    """Call memchat's own HTTP API as alice."""
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {ALICE}"}) as http,
        http.request(method, server.make_url(path)) as resp,
    ):
        assert resp.status < 300, await resp.text()
        return await resp.json()


async def _stored(server: TestServer, cid: str) -> list[tuple[str, str]]:
    body = await _api(server, "GET", f"/api/conversations/{cid}/messages")
    return [(m["role"], m["text"]) for m in body["messages"]]


async def test_models_lists_the_served_model(ai: openai.AsyncOpenAI) -> None:
    models = await ai.models.list()
    assert [m.id for m in models.data] == ["SmolLM2-135M-Instruct.Q4_1"]
    assert models.data[0].owned_by == "memchat"


async def test_stateless_completion_sends_the_messages_straight_to_the_model(
    ai: openai.AsyncOpenAI, llm: FakeLLM, redis: Redis
) -> None:
    llm.enqueue(["Paris is the capital"])
    resp = await ai.chat.completions.create(
        model="anything",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": [{"type": "text", "text": "Say it again"}]},
        ],
    )
    sent = [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Capital of France?"),
        ChatMessage("assistant", "Paris."),
        ChatMessage("user", "Say it again"),
    ]
    assert llm.history == [sent]
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == "SmolLM2-135M-Instruct.Q4_1"
    assert resp.choices[0].message.content == "Paris is the capital"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == FakeTokenizer().count(sent)
    assert resp.usage.completion_tokens == 4
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 4
    assert await redis.keys("*") == []  # stateless: nothing stored


async def test_streaming_yields_a_chunk_per_piece_then_usage(
    ai: openai.AsyncOpenAI, llm: FakeLLM
) -> None:
    llm.enqueue(["one two three"])
    stream = await ai.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=2,
    )
    chunks = [c async for c in stream]
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert pieces == ["one", " two"]
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    assert all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2
    assert {c.id for c in chunks} == {chunks[0].id}


async def test_a_named_conversation_gets_memory_and_stores_each_turn(
    ai: openai.AsyncOpenAI, llm: FakeLLM, server: TestServer
) -> None:
    llm.enqueue(["Hello Ana", "You keep bees"])
    first = await ai.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "I am Ana and I keep bees"}],
        extra_body={"conversation_id": "new"},
    )
    cid = (first.model_extra or {})["conversation_id"]
    second = await ai.chat.completions.create(
        model="m",
        messages=[
            {"role": "system", "content": "Answer from memory."},
            {"role": "user", "content": "What do I keep?"},
        ],
        extra_headers={"X-Memchat-Conversation": cid},
    )
    assert second.choices[0].message.content == "You keep bees"
    assert [(m.role, m.content) for m in llm.history[-1]] == [
        ("system", "Answer from memory."),
        ("user", "I am Ana and I keep bees"),
        ("assistant", "Hello Ana"),
        ("user", "What do I keep?"),
    ]
    assert await _stored(server, cid) == [
        ("user", "I am Ana and I keep bees"),
        ("assistant", "Hello Ana"),
        ("user", "What do I keep?"),
        ("assistant", "You keep bees"),
    ]


async def test_a_streamed_reply_in_a_conversation_is_stored(
    ai: openai.AsyncOpenAI, llm: FakeLLM, server: TestServer
) -> None:
    llm.enqueue(["streamed and stored"])
    cid = (await _api(server, "POST", "/api/conversations"))["id"]
    stream = await ai.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_body={"conversation_id": cid},
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "streamed and stored"
    assert await _stored(server, cid) == [("user", "hi"), ("assistant", "streamed and stored")]


async def test_errors_come_back_as_openai_errors(
    ai: openai.AsyncOpenAI, server: TestServer, llm: FakeLLM
) -> None:
    user = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as bad:
        await ai.chat.completions.create(model="m", messages=user, temperature=5)
    assert bad.value.code == "invalid_parameter"
    assert bad.value.param == "temperature"
    assert bad.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as long:
        await ai.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "word " * 3000}]
        )
    assert long.value.code == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in long.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        await ai.chat.completions.create(
            model="m", messages=user, stream=True, extra_body={"conversation_id": "nope"}
        )
    assert missing.value.code == "conversation_not_found"
    with pytest.raises(openai.BadRequestError) as two:
        await ai.chat.completions.create(model="m", messages=user, n=2)
    assert two.value.param == "n"
    for stop in (5, ["a", "b", "c", "d", "e"], [""], ["ok", 3]):
        with pytest.raises(openai.BadRequestError) as bad_stop:
            await ai.chat.completions.create(model="m", messages=user, stop=stop)  # type: ignore[arg-type]
        assert (bad_stop.value.code, bad_stop.value.param) == ("invalid_parameter", "stop")
    async with openai.AsyncOpenAI(
        base_url=str(server.make_url("/v1")), api_key="wrong", max_retries=0
    ) as stranger:
        with pytest.raises(openai.AuthenticationError) as denied:
            await stranger.models.list()
    assert denied.value.code == "invalid_api_key"
    llm.is_ready = False
    with pytest.raises(openai.InternalServerError) as loading:
        await ai.chat.completions.create(model="m", messages=user)
    assert (loading.value.status_code, loading.value.code) == (503, "model_loading")
    assert llm.history == []
