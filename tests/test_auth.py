"""API keys, per-user isolation on every route, browser origins and per-key rate limits."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import WSServerHandshakeError
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from server.app import create_app
from server.auth import RateLimiter, startup_notice
from server.errors import RateLimited
from server.settings import ApiKey, Settings
from tests.fakes import FakeEmbedder, FakeLLM
from tests.wsutil import chat

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]
ALICE, BOB = "alice-key-1", "bob-key-2"
KEYS = (ApiKey("alice", ALICE), ApiKey("bob", BOB))


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def llm() -> FakeLLM:
    return FakeLLM()


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    return dataclasses.replace(settings, api_keys=KEYS, rate_limit=0)


async def _client(make: MakeClient, settings: Settings, llm: FakeLLM) -> Client:
    return await make(create_app(settings, llm=llm, embedder=FakeEmbedder()))


@pytest.fixture
async def client(aiohttp_client: MakeClient, keyed: Settings, llm: FakeLLM, redis: Redis) -> Client:
    return await _client(aiohttp_client, keyed, llm)


async def _alice_conversation(client: Client) -> str:
    async with client.ws_connect("/ws", headers=_as(ALICE)) as ws:
        return (await chat(ws, "alice's secret: the code is 1234")).conversation_id


PROTECTED = [
    ("get", "/api/conversations"),
    ("post", "/api/conversations"),
    ("get", "/api/conversations/c1"),
    ("delete", "/api/conversations/c1"),
    ("get", "/api/conversations/c1/messages"),
    ("get", "/api/conversations/c1/context"),
    ("get", "/api/conversations/c1/summary"),
    ("post", "/api/import/locomo"),
    ("get", "/v1/models"),
    ("post", "/v1/chat/completions"),
    ("get", "/metrics"),
    ("get", "/ws"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize("key", [None, "not-a-key"])
async def test_every_route_but_health_needs_a_valid_key(
    client: Client, redis: Redis, method: str, path: str, key: str | None
) -> None:
    headers = _as(key) if key else {}
    resp = await getattr(client, method)(path, headers=headers)
    assert resp.status == 401
    err = (await resp.json())["error"]
    assert err["code"] == ("invalid_api_key" if key else "missing_api_key")
    assert err["type"] == "authentication_error"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert await redis.keys("*") == []


async def test_health_and_the_ui_page_need_no_key(client: Client) -> None:
    assert (await client.get("/health")).status == 200
    assert (await client.get("/")).status == 200


async def test_no_route_reaches_another_users_conversation(client: Client, llm: FakeLLM) -> None:
    cid = await _alice_conversation(client)
    bob = _as(BOB)
    listed = await (await client.get("/api/conversations", headers=bob)).json()
    assert listed["conversations"] == []
    for method, path in [
        ("get", f"/api/conversations/{cid}"),
        ("get", f"/api/conversations/{cid}/messages"),
        ("get", f"/api/conversations/{cid}/context"),
        ("get", f"/api/conversations/{cid}/context?message=what+is+the+code"),
        ("get", f"/api/conversations/{cid}/summary"),
        ("delete", f"/api/conversations/{cid}"),
    ]:
        resp = await getattr(client, method)(path, headers=bob)
        assert resp.status == 404, path
        assert (await resp.json())["error"]["code"] == "conversation_not_found"
    body = {"model": "m", "messages": [{"role": "user", "content": "what is the code?"}]}
    for stream in (False, True):
        resp = await client.post(
            "/v1/chat/completions", json={**body, "stream": stream, "conversation_id": cid},
            headers=bob,
        )  # fmt: skip
        assert resp.status == 404
    async with client.ws_connect("/ws", headers=bob) as ws:
        refused = await chat(ws, "what is the code?", cid)
    assert refused.one("error")["code"] == "conversation_not_found"
    assert not any("1234" in m.content for prompt in llm.history[1:] for m in prompt)
    mine = await client.get(f"/api/conversations/{cid}/messages", headers=_as(ALICE))
    assert [m["text"] for m in (await mine.json())["messages"]] == [
        "alice's secret: the code is 1234",
        "ok",
    ]


LOCOMO = {
    "speaker_a": "Ann",
    "speaker_b": "Ben",
    "session_1_date_time": "1:56 pm on 8 May, 2023",
    "session_1": [
        {"speaker": "Ann", "dia_id": "D1:1", "text": "I adopted a cat."},
        {"speaker": "Ben", "dia_id": "D1:2", "text": "What is its name?"},
    ],
}


async def test_each_user_lists_and_imports_only_into_their_own(client: Client) -> None:
    alices = await _alice_conversation(client)
    async with client.ws_connect("/ws", headers=_as(BOB)) as ws:
        bobs = (await chat(ws, "bob here")).conversation_id
    imported = await client.post("/api/import/locomo", json=LOCOMO, headers=_as(BOB))
    assert imported.status == 201
    bobs_import = (await imported.json())["conversation_id"]
    listed = await (await client.get("/api/conversations", headers=_as(BOB))).json()
    assert {c["id"] for c in listed["conversations"]} == {bobs, bobs_import}
    assert {c["user"] for c in listed["conversations"]} == {"bob"}
    alice_list = await (await client.get("/api/conversations", headers=_as(ALICE))).json()
    assert [c["id"] for c in alice_list["conversations"]] == [alices]
    ctx = await client.get(
        f"/api/conversations/{bobs_import}/context?message=cat", headers=_as(BOB)
    )
    assert ctx.status == 200


async def test_browsers_send_the_key_as_a_websocket_subprotocol(client: Client) -> None:
    async with client.ws_connect("/ws", protocols=("memchat", f"bearer.{ALICE}")) as ws:
        assert ws.protocol == "memchat"
        ok = await chat(ws, "hello")
    assert ok.one("response.done")["status"] == "completed"
    with pytest.raises(WSServerHandshakeError) as denied:
        await client.ws_connect("/ws", protocols=("memchat", "bearer.wrong"))
    assert denied.value.status == 401


async def test_websocket_origin_must_be_the_servers_own_or_allowed(
    aiohttp_client: MakeClient, keyed: Settings, llm: FakeLLM, redis: Redis
) -> None:
    settings = dataclasses.replace(keyed, allowed_origins=("https://chat.example.org",))
    client = await _client(aiohttp_client, settings, llm)
    with pytest.raises(WSServerHandshakeError) as evil:
        await client.ws_connect("/ws", headers={**_as(ALICE), "Origin": "https://evil.example"})
    assert evil.value.status == 403
    resp = await client.get("/ws", headers={**_as(ALICE), "Origin": "https://evil.example"})
    assert (await resp.json())["error"]["code"] == "origin_not_allowed"
    own = f"http://{client.server.host}:{client.server.port}"
    for origin in (own, "https://chat.example.org"):
        async with client.ws_connect("/ws", headers={**_as(ALICE), "Origin": origin}) as ws:
            assert (await chat(ws, "hi")).one("response.done")["status"] == "completed"


async def test_requests_beyond_a_keys_rate_get_429_and_other_keys_are_unaffected(
    aiohttp_client: MakeClient, keyed: Settings, llm: FakeLLM, redis: Redis
) -> None:
    client = await _client(aiohttp_client, dataclasses.replace(keyed, rate_limit=3), llm)
    for _ in range(3):
        assert (await client.get("/api/conversations", headers=_as(ALICE))).status == 200
    refused = await client.get("/api/conversations", headers=_as(ALICE))
    assert refused.status == 429
    err = (await refused.json())["error"]
    assert (err["code"], err["type"]) == ("rate_limited", "rate_limit_error")
    assert "3 requests a minute" in err["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert (await client.get("/api/conversations", headers=_as(BOB))).status == 200
    async with client.ws_connect("/ws", headers=_as(BOB)) as ws:
        await chat(ws, "one")
        await chat(ws, "two")
        third = await chat(ws, "three")
    assert third.one("error")["code"] == "rate_limited"


async def test_oversized_messages_are_refused_on_the_openai_route(client: Client) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 20_000}]}
    resp = await client.post("/v1/chat/completions", json=body, headers=_as(ALICE))
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "message_too_long"


def test_the_rate_limiter_refills_with_time() -> None:
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    limiter.check("k")
    limiter.check("k")
    with pytest.raises(RateLimited) as first:
        limiter.check("k")
    assert first.value.retry_after == 30
    limiter.check("other")
    now[0] = 30.0
    limiter.check("k")
    with pytest.raises(RateLimited):
        limiter.check("k")
    RateLimiter(0).check("k")  # 0: unlimited


def test_without_keys_memchat_listens_on_loopback_unless_told_otherwise() -> None:
    base = Settings(host="0.0.0.0")
    assert base.listen_host() == "127.0.0.1"
    assert "listening on 127.0.0.1 only" in startup_notice(base)
    told = dataclasses.replace(base, allow_unauthenticated=True)
    assert told.listen_host() == "0.0.0.0"
    assert "anyone who can reach 0.0.0.0" in startup_notice(told)
    keyed = dataclasses.replace(base, api_keys=KEYS)
    assert keyed.listen_host() == "0.0.0.0"
    assert "API keys required" in startup_notice(keyed)
    assert Settings(host="::1").listen_host() == "::1"
