"""The HTTP API: conversations, messages, deletion, health and JSON errors."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from tests.fakes import FakeLLM
from tests.wsutil import Client, chat, drain


async def test_create_list_and_read_conversations(client: Client) -> None:
    created = await client.post("/api/conversations", json={"title": "Trip plans"})
    assert created.status == 201
    conv = await created.json()
    listed = await (await client.get("/api/conversations")).json()
    assert [c["id"] for c in listed["conversations"]] == [conv["id"]]
    assert listed["conversations"][0]["title"] == "Trip plans"
    one = await client.get(f"/api/conversations/{conv['id']}")
    assert (await one.json())["title"] == "Trip plans"
    msgs = await (await client.get(f"/api/conversations/{conv['id']}/messages")).json()
    assert msgs["messages"] == []


async def test_conversations_are_listed_newest_first_and_titled_by_first_message(
    client: Client,
) -> None:
    async with client.ws_connect("/ws") as ws:
        a = (await chat(ws, "First conversation about boats")).conversation_id
        b = (await chat(ws, "Second one")).conversation_id
        await chat(ws, "back to boats", a)
    listed = (await (await client.get("/api/conversations")).json())["conversations"]
    assert [c["id"] for c in listed] == [a, b]
    assert listed[0]["title"] == "First conversation about boats"
    assert listed[0]["message_count"] == 4


async def test_delete_removes_every_key_of_the_conversation(client: Client, redis: Redis) -> None:
    async with client.ws_connect("/ws") as ws:
        keep = (await chat(ws, "keep me")).conversation_id
        gone = (await chat(ws, "delete me")).conversation_id
        await chat(ws, "more", gone)
    await drain(client.app)  # background indexing has written the vectors
    assert [k for k in await redis.keys("*") if gone in k]
    resp = await client.delete(f"/api/conversations/{gone}")
    assert resp.status == 200
    assert [k for k in await redis.keys("*") if gone in k] == []
    assert gone not in await redis.zrange("memchat:{local}:convs", 0, -1)
    assert [k for k in await redis.keys("*") if keep in k]
    again = await client.get(f"/api/conversations/{gone}/messages")
    assert again.status == 404


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("get", "/api/conversations/nope", None, 404, "conversation_not_found"),
        ("delete", "/api/conversations/nope", None, 404, "conversation_not_found"),
        ("get", "/api/conversations/bad%20id/messages", None, 400, "invalid_id"),
        ("post", "/api/conversations", b"{not json", 400, "invalid_json"),
        ("post", "/api/conversations", b"[1]", 400, "invalid_json"),
        ("post", "/api/conversations", b'{"title": 3}', 400, "invalid_field"),
        ("get", "/api/nothing-here", None, 404, "http_404"),
    ],
)
async def test_errors_are_json_with_code_and_message(
    client: Client, redis: Redis, method: str, path: str, body: bytes | None, status: int, code: str
) -> None:
    resp = await getattr(client, method)(path, data=body)
    assert resp.status == status
    err = (await resp.json())["error"]
    assert err["code"] == code
    assert err["message"]
    assert await redis.keys("*") == []


async def test_health_is_503_while_the_model_loads(client: Client, llm: FakeLLM) -> None:
    llm.is_ready = False
    resp = await client.get("/health")
    assert resp.status == 503
    assert (await resp.json())["model"] is False
    llm.is_ready = True
    resp = await client.get("/health")
    assert resp.status == 200


async def test_the_browser_ui_is_served(client: Client) -> None:
    page = await client.get("/")
    assert page.status == 200
    assert "memchat" in await page.text()
    script = await client.get("/static/app.js")
    assert script.status == 200
    assert "chat.send" in await script.text()
