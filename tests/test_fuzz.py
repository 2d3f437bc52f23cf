"""Protocol fuzzing against a live server (fake model, real Redis): it answers every frame it can
read with a frame of the protocol, closes the socket on what RFC 6455 says must close it, stays
up, and a bystander's conversation is untouched."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType, web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis as SyncRedis

from server import protocol
from server.app import create_app
from server.settings import Settings
from tests.fakes import FakeEmbedder, FakeLLM
from tests.wsutil import chat

SERVER_TYPES = {
    protocol.CONVERSATION_CREATED,
    protocol.RESPONSE_CREATED,
    protocol.RESPONSE_DELTA,
    protocol.RESPONSE_DONE,
    protocol.CONTEXT,
    protocol.ERROR,
}
CLOSE_INVALID_TEXT = 1007  # RFC 6455: a text frame that is not UTF-8 fails the connection
CLOSE_TOO_BIG = 1009
MIN_FRAMES = 1000
BUSY = "busy"


class Frame:
    """One frame to send: kind text, binary, bad_utf8 (bytes in a text frame) or too_big."""

    def __init__(self, kind: str, payload: Any) -> None:
        self.kind = kind
        self.payload = payload

    def __repr__(self) -> str:  # short: some payloads are 100 kB
        return f"Frame({self.kind}, {len(self.payload)}: {self.payload[:60]!r})"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
ODD = st.sampled_from(["", " ", "\x00", "../../etc", "a" * 65, "0" * 64, "chat.send"])
VALUE = JSON | ODD | st.integers(-(2**70), 2**70)
TYPE = st.sampled_from([*protocol.CLIENT_TYPES, "", "CHAT.SEND", "chat.send "]) | JSON
TYPED = st.fixed_dictionaries(
    {"type": TYPE},
    optional={name: VALUE for name in ("text", "conversation_id", "seq", "response_id")},
).map(json.dumps)
SEND = st.text(min_size=1, max_size=40).map(lambda t: json.dumps({"type": "chat.send", "text": t}))
NESTED = st.integers(100, 10_000).flatmap(  # up to ~60 KB: under the socket's frame limit
    lambda n: st.sampled_from(["[" * n + "]" * n, '{"a":' * n + "1" + "}" * n])
)
SPECIAL = st.sampled_from(
    [
        '{"type": "chat.send", "text": "\\ud800 a lone surrogate"}',
        '{"type": "chat.edit", "conversation_id": "x", "seq": ' + "9" * 5000 + ', "text": "t"}',
        '{"type": "response.cancel"}',
        "[]",
        "null",
        '"chat.send"',
    ]
)
LONG = st.integers(16_001, 17_000).map(lambda n: json.dumps({"type": "chat.send", "text": "a" * n}))
READABLE: st.SearchStrategy[Frame] = st.one_of(
    TYPED.map(lambda s: Frame("text", s)),
    SEND.map(lambda s: Frame("text", s)),
    st.text(max_size=200).map(lambda s: Frame("text", s)),
    NESTED.map(lambda s: Frame("text", s)),
    SPECIAL.map(lambda s: Frame("text", s)),
    LONG.map(lambda s: Frame("text", s)),
    st.binary(max_size=200).map(lambda b: Frame("binary", b)),
)
INVALID_UTF8 = st.binary(min_size=1, max_size=50).map(lambda b: b + b"\xff\xfe" + b)
FATAL: st.SearchStrategy[Frame] = st.one_of(
    INVALID_UTF8.map(lambda b: Frame("bad_utf8", b)),
    st.integers(70_000, 120_000).map(lambda n: Frame("too_big", "x" * n)),
)


async def _send(ws: ClientWebSocketResponse, frame: Frame) -> None:
    kind, payload = frame.kind, frame.payload
    if kind in ("text", "too_big"):
        await ws.send_str(payload)
    elif kind == "binary":
        await ws.send_bytes(payload)
    else:
        await ws.send_frame(payload, WSMsgType.TEXT)  # the client library would not send these


async def _answers_until_probe(ws: ClientWebSocketResponse, probe: str) -> list[dict[str, Any]]:
    frames = []
    while True:
        frame = await ws.receive_json(timeout=60)
        frames.append(frame)
        if frame["type"] == protocol.ERROR and probe in frame["message"]:
            return frames


async def _until_closed(ws: ClientWebSocketResponse) -> list[dict[str, Any]]:
    frames = []
    while (msg := await ws.receive(timeout=60)).type == WSMsgType.TEXT:
        frames.append(json.loads(msg.data))
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), msg
    return frames


class LiveServer:
    """The app served on a loopback port from a thread of its own, so that each generated
    example can run its own client loop (hypothesis runs examples synchronously)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self._serve, name="fuzz-server")

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        runner = web.AppRunner(self.app)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
        self.port = runner.addresses[0][1]
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()

    def __enter__(self) -> LiveServer:
        self.thread.start()
        self.ready.wait(timeout=60)
        return self

    def __exit__(self, *_: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=60)


@pytest.fixture
def live(settings: Settings, llm: FakeLLM, redis_url: str) -> Iterator[LiveServer]:
    """A live server on a fake model and the real (emptied) Redis."""
    with SyncRedis.from_url(redis_url) as r:
        r.flushall()
    with LiveServer(create_app(settings, llm=llm, embedder=FakeEmbedder())) as server:
        yield server
    with SyncRedis.from_url(redis_url) as r:
        r.flushall()


async def _bystander(url: str) -> tuple[str, list[dict[str, Any]]]:
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}/ws") as ws:
        cid = (await chat(ws, "I am the bystander and I keep bees")).conversation_id
        await chat(ws, "my hives are in Lisbon", cid)
        return cid, await _history(http, url, cid)


async def _history(http: aiohttp.ClientSession, url: str, cid: str) -> list[dict[str, Any]]:
    async with http.get(f"{url}/api/conversations/{cid}/messages") as resp:
        assert resp.status == 200
        return list((await resp.json())["messages"])


async def _exchange(url: str, batch: list[Frame], last: Frame | None) -> None:
    """Send a batch without reading; then a probe (or a frame that must close the socket)."""
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}/ws") as ws:
        for frame in batch:
            await _send(ws, frame)
        if last is None:
            probe = f"probe-{uuid.uuid4().hex}"
            await ws.send_str(json.dumps({"type": probe}))
            answers = await _answers_until_probe(ws, probe)
        else:
            await _send(ws, last)
            answers = await _until_closed(ws)
            assert ws.close_code in (CLOSE_INVALID_TEXT, CLOSE_TOO_BIG)
    assert all(a["type"] in SERVER_TYPES for a in answers), answers
    errors = [a for a in answers if a["type"] == protocol.ERROR]
    assert all(e["code"] and e["message"] for e in errors), errors
    assert "internal_error" not in {e["code"] for e in errors}


async def _afterwards(url: str, cid: str) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{url}/ws") as ws:
            done = (await chat(ws, "where are my hives?", cid)).one("response.done")
        async with http.get(f"{url}/health") as resp:
            health = resp.status
        return done, await _history(http, url, cid), health


def test_fuzzed_frames_never_break_the_server_or_other_conversations(
    live: LiveServer, llm: FakeLLM
) -> None:
    cid, before = asyncio.run(_bystander(live.url))
    sent: list[int] = []

    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(batch=st.lists(READABLE, min_size=4, max_size=24), last=st.none() | FATAL)
    def exchange(batch: list[Frame], last: Frame | None) -> None:
        asyncio.run(_exchange(live.url, batch, last))
        sent.append(len(batch) + 1)

    exchange()
    assert sum(sent) >= MIN_FRAMES, sum(sent)
    done, after, health = asyncio.run(_afterwards(live.url, cid))
    assert done["status"] == "completed"
    assert after[: len(before)] == before
    asked = [m.content for m in llm.history[-1][1:]]
    assert asked == [m["text"] for m in before] + ["where are my hives?"]
    assert health == 200


async def _flood(url: str, cid: str, sends: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{url}/ws") as flood,
        http.ws_connect(f"{url}/ws") as calm,
    ):
        for i in range(sends):
            await flood.send_json({"type": "chat.send", "text": f"flood {i}"})
        probe = f"probe-{uuid.uuid4().hex}"
        await flood.send_str(json.dumps({"type": probe}))
        calm_done = (await chat(calm, "still there?", cid)).one("response.done")
        answers = await _answers_until_probe(flood, probe)
        ends = [a for a in answers if a["type"] == protocol.RESPONSE_DONE or a.get("code") == BUSY]
        while len(ends) < sends:  # a reply started by the last sends may still be streaming
            frame = await flood.receive_json(timeout=60)
            ends += [frame] if frame["type"] == protocol.RESPONSE_DONE else []
    return answers, calm_done


def test_a_flood_of_sends_on_one_socket_gets_answers_and_spares_the_others(
    live: LiveServer,
) -> None:
    cid, before = asyncio.run(_bystander(live.url))
    answers, calm_done = asyncio.run(_flood(live.url, cid, 300))
    codes = {a.get("code") for a in answers if a["type"] == protocol.ERROR}
    assert codes == {BUSY, "unknown_type"}  # every send got a reply or a "busy"
    assert calm_done["status"] == "completed"
    _, after, _ = asyncio.run(_afterwards(live.url, cid))
    assert after[: len(before)] == before
