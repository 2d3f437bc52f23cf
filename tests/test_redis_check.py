"""memchat refuses a Redis without vector sets, with a message that says what to run instead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from memory.store import Store
from models.errors import Unavailable


async def _old_redis(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Speaks just enough RESP to act like a Redis 7: every command but PING is unknown."""
    while line := await reader.readline():
        if not line.startswith(b"*"):
            continue
        parts = []
        for _ in range(int(line[1:])):
            await reader.readline()  # $<len>
            parts.append((await reader.readline()).strip())
        if parts[0].upper() == b"PING":
            writer.write(b"+PONG\r\n")
        else:
            writer.write(b"-ERR unknown command '" + parts[0] + b"'\r\n")
        await writer.drain()
    writer.close()


@pytest.fixture
async def old_redis() -> AsyncIterator[Redis]:
    server = await asyncio.start_server(_old_redis, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Redis(host="127.0.0.1", port=port, protocol=2)
    yield client
    await client.aclose()
    server.close()
    await server.wait_closed()


async def test_a_redis_without_vector_sets_is_refused_with_the_fix(old_redis: Redis) -> None:
    with pytest.raises(Unavailable) as err:
        await Store(old_redis).check_server()
    assert err.value.code == "redis_no_vector_sets"
    assert "redis:8" in err.value.message


async def test_redis_8_passes_the_check(redis: Redis) -> None:
    await Store(redis).check_server()
