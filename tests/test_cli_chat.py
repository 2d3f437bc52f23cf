"""`memchat chat`: the terminal client over a real websocket to a listening server."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from models.types import CancelToken, ChatMessage, Delta, Finished, SamplingParams
from server.app import create_app
from server.cli_chat import ChatClient, main, ws_url
from server.settings import ApiKey, Settings
from tests.fakes import FakeEmbedder, FakeLLM

KEY = "alice-key-1"


class Screen(io.StringIO):
    """Captured output that can be awaited for some text."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def write(self, s: str) -> int:
        self.changed.set()
        return super().write(s)

    async def shows(self, text: str) -> None:
        while text not in self.getvalue():
            self.changed.clear()
            await self.changed.wait()


class CancelWatchingLLM(FakeLLM):
    """A FakeLLM that keeps each reply's cancel token, to see when the server set it."""

    def __init__(self) -> None:
        super().__init__()
        self.cancels: list[CancelToken] = []

    async def stream(
        self,
        messages: list[ChatMessage],
        params: SamplingParams,
        cancel: CancelToken,
        *,
        cache_key: str | None = None,
    ) -> AsyncIterator[Delta | Finished]:
        self.cancels.append(cancel)
        async for event in super().stream(messages, params, cancel, cache_key=cache_key):
            yield event

    async def cancelled(self) -> None:
        """Yield to the loop until the current reply's cancel is set."""
        for _ in range(100_000):
            if self.cancels and self.cancels[-1].is_set():
                return
            await asyncio.sleep(0)
        raise AssertionError("the server never cancelled the reply")


@pytest.fixture
def llm() -> CancelWatchingLLM:
    return CancelWatchingLLM()


@pytest.fixture
async def server(settings: Settings, llm: FakeLLM, redis: Redis) -> AsyncIterator[TestServer]:
    keyed = dataclasses.replace(settings, api_keys=(ApiKey("alice", KEY),))
    async with TestServer(create_app(keyed, llm=llm, embedder=FakeEmbedder())) as srv:
        yield srv


async def _lines(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line + "\n"


def test_server_urls_become_websocket_urls() -> None:
    assert ws_url("http://127.0.0.1:8080") == "ws://127.0.0.1:8080/ws"
    assert ws_url("https://chat.example.org/") == "wss://chat.example.org/ws"
    assert ws_url("ws://127.0.0.1:9000/ws") == "ws://127.0.0.1:9000/ws"
    assert ws_url("http://proxy:8090", "c42") == "ws://proxy:8090/ws?conversation=c42"
    assert ws_url("http://h/ws?k=v", "c42") == "ws://h/ws?k=v&conversation=c42"


async def test_lines_stream_replies_in_one_conversation(server: TestServer, llm: FakeLLM) -> None:
    llm.enqueue(["Hello Ana", "You are Ana"])
    screen = Screen()
    url = ws_url(str(server.make_url("/")))
    async with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        client = ChatClient(ws, screen, None)
        await client.repl(_lines("I am Ana", "", "Who am I?", "/quit", "never sent"))
    out = screen.getvalue()
    assert "Hello Ana\n" in out
    assert "You are Ana\n" in out
    assert out.count("[conversation ") == 1
    assert client.conversation is not None
    assert [m.content for m in llm.history[-1]][1:] == ["I am Ana", "Hello Ana", "Who am I?"]
    assert len(llm.history) == 2


async def test_interrupt_stops_the_reply_and_the_session_goes_on(
    server: TestServer, llm: CancelWatchingLLM
) -> None:
    llm.enqueue(["one two three four five", "next"])
    llm.hold(1)
    screen = Screen()
    url = ws_url(str(server.make_url("/")))
    async with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        client = ChatClient(ws, screen, None)
        assert client.interrupt() is False  # nothing streaming: Ctrl+C would quit
        sending = asyncio.create_task(client.send("count"))
        await screen.shows("one")
        assert client.interrupt() is True
        await llm.cancelled()
        llm.allow(10)
        assert await sending == "cancelled"
        assert await client.send("and now?") == "completed"
    assert "[cancelled]" in screen.getvalue()
    assert "five" not in screen.getvalue()
    assert screen.getvalue().endswith("next\n")


async def test_a_refused_key_is_reported(
    server: TestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await main(ws_url(str(server.make_url("/"))), None, "wrong-key", io.StringIO())
    assert code == 1
    assert "the API key is not valid" in capsys.readouterr().err
