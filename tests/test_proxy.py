"""The scale-out profile's nginx config in front of two real replicas (where nginx is installed).

The compose file's proxy config is run unchanged but for its addresses: websockets and
server-sent events pass through it, one conversation keeps to one replica, and different
conversations spread over both.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from server.app import create_app
from server.settings import Settings
from tests.fakes import FakeEmbedder, FakeLLM
from tests.wsutil import chat

ROOT = Path(__file__).resolve().parent.parent
MakeServer = Callable[..., Awaitable[TestServer]]
START_TIMEOUT_S = 20.0

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(replicas: list[TestServer], port: int) -> str:
    """deploy/nginx.conf with the compose service names replaced by the test servers."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    for name, server in zip(("memchat-a", "memchat-b"), replicas, strict=True):
        text = text.replace(f"{name}:8080", f"127.0.0.1:{server.port}")
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    user = "user root;\n" if os.geteuid() == 0 else ""
    return user + text


@pytest.fixture
async def proxy(
    aiohttp_server: MakeServer, settings: Settings, redis: Redis, tmp_path: Path
) -> AsyncIterator[tuple[str, list[FakeLLM]]]:
    """nginx with the profile's config on a free port, routing to two replicas."""
    models = [FakeLLM(), FakeLLM()]
    replicas = [
        await aiohttp_server(create_app(settings, llm=m, embedder=FakeEmbedder())) for m in models
    ]
    port = _free_port()
    (tmp_path / "nginx.conf").write_text(_config(replicas, port))
    globals_ = f"daemon off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;"
    nginx = subprocess.Popen(
        ["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", globals_]
    )
    try:
        await _listening(port, nginx)
        yield f"http://127.0.0.1:{port}", models
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)


async def _listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    # A separate process gives no event to await: poll until it accepts connections.
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nginx did not start") from None
            await asyncio.sleep(0.05)
        else:
            writer.close()
            return


def _served(models: list[FakeLLM]) -> list[int]:
    return [len(m.history) for m in models]


async def _completion(
    http: aiohttp.ClientSession, base: str, cid: str, stream: bool = False
) -> dict[str, Any]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    headers = {"X-Memchat-Conversation": cid}
    async with http.post(f"{base}/v1/chat/completions", json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        if stream:
            text = await resp.text()
            return {"events": re.findall(r"^data: ", text, re.MULTILINE)}
        return dict(await resp.json())


async def test_one_conversation_keeps_to_one_replica_through_the_proxy(
    proxy: tuple[str, list[FakeLLM]],
) -> None:
    base, models = proxy
    async with aiohttp.ClientSession() as http:
        created = await (await http.post(f"{base}/api/conversations", json={})).json()
        cid = created["id"]
        url = f"{base.replace('http', 'ws')}/ws?conversation={cid}"
        async with http.ws_connect(url, headers={"Origin": base}) as ws:  # the page's origin
            first = await chat(ws, "Hi, I am Ana", cid)
            second = await chat(ws, "I like kayaks", cid)
        streamed = await _completion(http, base, cid, stream=True)
        await _completion(http, base, cid)
    assert first.one("response.done")["status"] == "completed"
    assert second.text == "ok" and second.conversation_id == cid
    assert len(streamed["events"]) >= 4  # role, content, finish and [DONE], streamed through
    assert sorted(_served(models)) == [0, 4]  # every reply of the conversation on one replica


async def test_conversations_spread_over_both_replicas(proxy: tuple[str, list[FakeLLM]]) -> None:
    base, models = proxy
    async with aiohttp.ClientSession() as http:
        for _ in range(16):
            cid = (await (await http.post(f"{base}/api/conversations", json={})).json())["id"]
            await _completion(http, base, cid)
    assert sum(_served(models)) == 16
    assert min(_served(models)) > 0  # consistent hashing on the conversation id
