"""Shared fixtures: a real redis-server 8, the real model, embedder and tokenizer."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from models.batched_engine import BatchedEngine
from models.embedder import SentenceEmbedder
from models.llama_engine import EngineConfig, LlamaEngine
from models.paths import default_chat_model, default_embedder
from models.tokenizer import GGUFTokenizer
from server.app import create_app
from server.redis_process import EmbeddedRedis
from server.settings import Settings
from tests.fakes import FakeEmbedder, FakeLLM
from tests.wsutil import Client, MakeClient

TEST_CTX = 2048


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server 8 for the whole test run."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client on an empty database; emptied again after the test."""
    client = Redis.from_url(redis_url, decode_responses=True)
    await client.flushall()
    yield client
    await client.flushall()
    await client.aclose()


@pytest.fixture(scope="session")
def engine() -> Iterator[LlamaEngine | BatchedEngine]:
    """The real SmolLM2 engine, loaded once: the default kind, or MEMCHAT_TEST_ENGINE's."""
    config = EngineConfig(str(default_chat_model()), n_ctx=TEST_CTX, n_threads=2, parallel=4)
    batched = os.environ.get("MEMCHAT_TEST_ENGINE", Settings().engine) == "batched"
    llm = BatchedEngine(config) if batched else LlamaEngine(config)
    yield llm
    llm.close()


@pytest.fixture(scope="session")
def embedder() -> Iterator[SentenceEmbedder]:
    """The real all-MiniLM-L6-v2 embedder, loaded once."""
    model = SentenceEmbedder(str(default_embedder()))
    yield model
    model.close()


@pytest.fixture(scope="session")
def tokenizer() -> GGUFTokenizer:
    """The real SmolLM2 tokenizer and chat template."""
    return GGUFTokenizer(str(default_chat_model()))


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    """Settings for an app on the shared test Redis."""
    return Settings(redis_url=redis_url, data_dir=tmp_path, n_ctx=TEST_CTX, reply_tokens=64)


@pytest.fixture
def llm() -> FakeLLM:
    """A fake model that records prompts; override in a module for other sizes."""
    return FakeLLM()


@pytest.fixture
async def client(
    aiohttp_client: MakeClient, settings: Settings, llm: FakeLLM, redis: Redis
) -> Client:
    """The real app on the real Redis, with the fake model and a text-dependent embedder."""
    return await aiohttp_client(create_app(settings, llm=llm, embedder=FakeEmbedder()))
