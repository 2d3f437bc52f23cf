"""The real model's context overflowing: refused with a clear error, nothing stored or lost."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from memory.store import Keys
from models.embedder import SentenceEmbedder
from models.llama_engine import LlamaEngine
from models.types import ChatMessage
from server.app import create_app
from server.settings import Settings
from tests.conftest import TEST_CTX
from tests.wsutil import MakeClient, chat

pytestmark = pytest.mark.integration


async def test_a_message_over_the_real_context_is_refused_and_the_conversation_kept(
    aiohttp_client: MakeClient,
    settings: Settings,
    engine: LlamaEngine,
    embedder: SentenceEmbedder,
    redis: Redis,
) -> None:
    await engine.wait_ready()
    client = await aiohttp_client(create_app(settings, llm=engine, embedder=embedder))
    huge = "The bees of Lisbon hum in the old garden. " * 300  # ~3,000 tokens
    assert len(huge) < settings.max_message_chars
    assert engine.tokenizer.count([ChatMessage("user", huge)]) > TEST_CTX
    async with client.ws_connect("/ws") as ws:
        first = await chat(ws, "I keep bees in Lisbon.")
        cid = first.conversation_id
        refused = await chat(ws, huge, cid)
        after = await chat(ws, "Where do I keep bees?", cid)
    error = refused.one("error")
    assert error["code"] == "context_length_exceeded"
    assert str(TEST_CTX) in error["message"]
    assert after.one("response.done")["status"] in {"completed", "length"}
    stored = await redis.hvals(Keys("local").messages(cid))
    assert len(stored) == 4
    assert not any("old garden" in raw for raw in stored)
