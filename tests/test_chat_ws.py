"""The websocket chat loop on a fake model and the real Redis."""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from tests.fakes import FakeLLM
from tests.wsutil import Client, chat, collect, drain


async def _messages(client: Client, cid: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/api/conversations/{cid}/messages")
    assert resp.status == 200
    return list((await resp.json())["messages"])


async def test_three_turns_stream_and_persist_with_history_in_the_prompt(
    client: Client, llm: FakeLLM
) -> None:
    llm.enqueue(["Nice to meet you Ana", "You said kayaks", "Goodbye Ana"])
    async with client.ws_connect("/ws") as ws:
        first = await chat(ws, "Hi, I am Ana")
        cid = first.one("conversation.created")["conversation_id"]
        second = await chat(ws, "I love kayaks", cid)
        third = await chat(ws, "What do I love?", cid)
    assert [first.text, second.text, third.text] == [
        "Nice to meet you Ana",
        "You said kayaks",
        "Goodbye Ana",
    ]
    assert len(third.of("response.delta")) == 2
    assert third.one("response.done")["status"] == "completed"
    assert third.conversation_id == cid
    last_prompt = [m.content for m in llm.history[-1]]
    assert last_prompt[1:] == [
        "Hi, I am Ana",
        "Nice to meet you Ana",
        "I love kayaks",
        "You said kayaks",
        "What do I love?",
    ]
    stored = await _messages(client, cid)
    assert [(m["role"], m["text"]) for m in stored] == [
        ("user", "Hi, I am Ana"),
        ("assistant", "Nice to meet you Ana"),
        ("user", "I love kayaks"),
        ("assistant", "You said kayaks"),
        ("user", "What do I love?"),
        ("assistant", "Goodbye Ana"),
    ]
    assert all(m["time"] > 0 for m in stored)


async def test_context_frame_lists_the_packed_turns(client: Client) -> None:
    async with client.ws_connect("/ws") as ws:
        cid = (await chat(ws, "one")).conversation_id
        ex = await chat(ws, "two", cid)
    record = ex.one("context")["context"]
    assert [t["seq"] for t in record["turns"]] == [1, 2]
    assert {t["reason"] for t in record["turns"]} == {"recent"}
    assert record["sections"]["recent"] == sum(t["tokens"] for t in record["turns"])


async def _until(ws: Any, kind: str) -> dict[str, Any]:
    frame: dict[str, Any] = await ws.receive_json()
    while frame["type"] != kind:
        frame = await ws.receive_json()
    return frame


async def test_cancel_stops_the_reply_and_keeps_the_partial_text(
    client: Client, llm: FakeLLM
) -> None:
    llm.enqueue(["one two three four five six"])
    llm.hold(1)
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "chat.send", "text": "count"})
        created = await _until(ws, "response.created")
        delta = await _until(ws, "response.delta")
        await ws.send_json({"type": "response.cancel", "response_id": created["response_id"]})
        await ws.send_json({"type": "response.cancel", "response_id": "resp_other"})
        assert (await ws.receive_json())["code"] == "unknown_response"
        llm.allow(10)
        rest = await collect(ws)
    done = rest.one("response.done")
    assert done["status"] == "cancelled"
    assert done["usage"]["completion_tokens"] == 1
    stored = await _messages(client, created["conversation_id"])
    assert stored[-1]["status"] == "cancelled"
    assert stored[-1]["text"] == delta["delta"] + rest.text


async def test_disconnect_mid_reply_stores_it_as_interrupted(client: Client, llm: FakeLLM) -> None:
    llm.enqueue(["a b c d e f g h"])
    llm.hold(2)
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "chat.send", "text": "go"})
        frame = await _until(ws, "response.created")
        await _until(ws, "response.delta")
    llm.allow(10)
    cid = frame["conversation_id"]
    await drain(client.app)
    stored = await _messages(client, cid)
    assert stored[-1]["role"] == "assistant"
    assert stored[-1]["status"] == "interrupted"
    assert 1 <= len(stored[-1]["text"].split()) < 8


BAD_FRAMES = [
    ("not json", "invalid_json"),
    ('{"type": "nope"}', "unknown_type"),
    ('{"type": "chat.send"}', "missing_field"),
    ('{"type": "chat.send", "text": 42}', "invalid_field"),
    (json.dumps({"type": "chat.send", "text": "x" * 20_000}), "message_too_long"),
    ('{"type": "response.cancel"}', "nothing_to_cancel"),
    (
        '{"type": "chat.send", "text": "hi", "conversation_id": "no-such-conversation"}',
        "conversation_not_found",
    ),
    ('{"type": "chat.send", "text": "hi", "conversation_id": "../../etc"}', "invalid_id"),
]


async def test_every_bad_frame_gets_an_error_and_stores_nothing(
    client: Client, redis: Redis
) -> None:
    async with client.ws_connect("/ws") as ws:
        for raw, code in BAD_FRAMES:
            await ws.send_str(raw)
            frame = await ws.receive_json()
            assert (frame["type"], frame["code"]) == ("error", code), raw
            assert frame["message"]
        await ws.send_bytes(b"\x00\x01")
        frame = await ws.receive_json()
        assert frame["code"] == "binary_frame"
        assert await redis.keys("*") == []
        ok = await chat(ws, "still usable?")
    assert ok.one("response.done")["status"] == "completed"


async def test_a_second_send_while_streaming_is_refused(client: Client, llm: FakeLLM) -> None:
    llm.enqueue(["slow reply here"])
    llm.hold(0)
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "chat.send", "text": "first"})
        await ws.send_json({"type": "chat.send", "text": "second"})
        frames: list[dict[str, Any]] = []
        while not any(f.get("code") == "busy" for f in frames):
            frames.append(await ws.receive_json())
        llm.allow(10)
        done = await collect(ws)
        cid = next(f for f in frames + done.frames if f["type"] == "response.created")[
            "conversation_id"
        ]
    stored = await _messages(client, cid)
    assert [m["text"] for m in stored] == ["first", "slow reply here"]


async def test_one_socket_carries_several_conversations(client: Client) -> None:
    async with client.ws_connect("/ws") as ws:
        a = (await chat(ws, "in a")).conversation_id
        b = (await chat(ws, "in b")).conversation_id
        await chat(ws, "again a", a)
    assert a != b
    assert [m["text"] for m in await _messages(client, a)] == ["in a", "ok", "again a", "ok"]
    assert [m["text"] for m in await _messages(client, b)] == ["in b", "ok"]


async def test_model_still_loading_is_a_clear_error(
    client: Client, llm: FakeLLM, redis: Redis
) -> None:
    llm.is_ready = False
    async with client.ws_connect("/ws") as ws:
        ex = await chat(ws, "hello?")
    assert ex.one("error")["code"] == "model_loading"
    assert await redis.keys("*") == []
