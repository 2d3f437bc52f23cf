"""The official `openai` client against memchat on the real model, Redis and embedder."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from models.embedder import SentenceEmbedder
from models.llama_engine import LlamaEngine
from models.types import ChatMessage
from server.app import create_app
from server.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def ai(
    settings: Settings, engine: LlamaEngine, embedder: SentenceEmbedder, redis: Redis
) -> AsyncIterator[openai.AsyncOpenAI]:
    await engine.wait_ready()
    app = create_app(settings, llm=engine, embedder=embedder)
    async with (
        TestServer(app, host="127.0.0.1") as srv,
        openai.AsyncOpenAI(
            base_url=str(srv.make_url("/v1")), api_key="unused", max_retries=0
        ) as client,
    ):
        yield client


async def test_stateless_stream_and_completion_count_tokens_exactly(
    ai: openai.AsyncOpenAI, engine: LlamaEngine
) -> None:
    messages = [
        ChatMessage("system", "You are a helpful assistant."),
        ChatMessage("user", "Name three colours."),
    ]
    wire = [{"role": m.role, "content": m.content} for m in messages]
    stream = await ai.chat.completions.create(
        model="smollm2",
        messages=wire,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=24,
        seed=1,
    )
    chunks = [c async for c in stream]
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) >= 2, "the reply must stream in pieces"
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.prompt_tokens == engine.tokenizer.count(messages)
    assert 2 <= usage.completion_tokens <= 24
    whole = await ai.chat.completions.create(model="smollm2", messages=wire, max_tokens=8)  # type: ignore[arg-type]
    assert whole.choices[0].message.content
    assert whole.choices[0].finish_reason in {"stop", "length"}
    assert whole.usage is not None
    assert whole.usage.prompt_tokens == engine.tokenizer.count(messages)
    with pytest.raises(openai.BadRequestError) as long:
        await ai.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "bees " * 2500}]
        )
    assert long.value.code == "context_length_exceeded"


async def test_a_conversation_remembers_across_requests(ai: openai.AsyncOpenAI) -> None:
    first = await ai.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "My name is Ana and I keep bees."}],
        max_tokens=16,
        extra_body={"conversation_id": "new"},
    )
    cid = (first.model_extra or {})["conversation_id"]
    second = await ai.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is my name?"}],
        max_tokens=16,
        extra_headers={"X-Memchat-Conversation": cid},
    )
    assert second.choices[0].message.content
    assert second.usage is not None
    # The packed prompt holds the first exchange, so it is longer than the new message alone.
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + 5  # type: ignore[union-attr]


async def test_a_stop_string_ends_the_reply_before_it(ai: openai.AsyncOpenAI) -> None:
    wire = [{"role": "user", "content": "List the days of the week, one per line."}]
    full = await ai.chat.completions.create(
        model="smollm2",
        messages=wire,  # type: ignore[arg-type]
        max_tokens=40,
        temperature=0,
    )
    text = full.choices[0].message.content or ""
    assert len(text) > 12, text
    stop = text[8:12]
    cut = await ai.chat.completions.create(
        model="smollm2",
        messages=wire,  # type: ignore[arg-type]
        max_tokens=40,
        temperature=0,
        stop=[stop, "never appears"],
    )
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    stream = await ai.chat.completions.create(
        model="smollm2",
        messages=wire,  # type: ignore[arg-type]
        max_tokens=40,
        temperature=0,
        stop=stop,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces) == text[: text.index(stop)]
