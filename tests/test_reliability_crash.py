"""kill -9 mid-reply: memchat and its embedded Redis die; every acknowledged message survives."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server.local_server import ServerProcess

pytestmark = pytest.mark.integration
TURNS = ["My name is Ana and I keep bees.", "My hives are in Lisbon.", "Tell me a long story."]


async def _until(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while (frame := await ws.receive_json(timeout=120))["type"] != kind:
        assert frame["type"] != "error", frame
    return frame


async def _messages(http: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with http.get(url) as resp:
        assert resp.status == 200
        return list((await resp.json())["messages"])


async def test_kill_9_mid_reply_keeps_every_acknowledged_message(tmp_path: Path) -> None:
    # One thread: on a shared, busy machine llama.cpp's threads wait on each other (RELIABILITY.md).
    args = ["--reply-tokens", "24", "--n-ctx", "2048", "--n-threads", "1"]
    server = ServerProcess(tmp_path / "data", args)
    server.start()
    try:
        await server.wait_ready()
        acknowledged: list[str] = []
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{server.url}/ws") as ws:
            cid = None
            for text in TURNS:
                frame: dict[str, Any] = {"type": "chat.send", "text": text}
                if cid:
                    frame["conversation_id"] = cid
                await ws.send_json(frame)
                cid = (await _until(ws, "response.created"))["conversation_id"]
                acknowledged.append(text)
                if text != TURNS[-1]:
                    await _until(ws, "response.done")
            await _until(ws, "response.delta")  # mid-reply
            os.kill(server.redis_pid(), signal.SIGKILL)  # no AOF flush on the way out either
            server.kill()

        server.start()
        await server.wait_ready()
        async with aiohttp.ClientSession() as http:
            url = f"{server.url}/api/conversations/{cid}/messages"
            stored = await _messages(http, url)
            async with http.ws_connect(f"{server.url}/ws") as ws:
                await ws.send_json({"type": "chat.send", "text": "What is my name?",
                                    "conversation_id": cid})  # fmt: skip
                done = await _until(ws, "response.done")
            after = await _messages(http, url)
    finally:
        server.stop()
    assert [m["text"] for m in stored if m["role"] == "user"] == acknowledged
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant", "user"]
    # A reply may stop at the 24-token limit ("length"); a user turn is always whole.
    assert all(m["status"] == "completed" for m in stored if m["role"] == "user")
    assert all(m["status"] in {"completed", "length"} for m in stored)
    assert done["status"] in {"completed", "length"}
    assert [m["seq"] for m in after] == sorted({m["seq"] for m in after})
    assert [m["text"] for m in after[: len(stored)]] == [m["text"] for m in stored]
    assert after[-2]["text"] == "What is my name?"
