"""The browser UI's server side: rename, search, settings, forget, summary edits, regenerate and
edit-and-resend, on a fake model and the real Redis."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from memory.store import Store, Summary
from server.app import create_app
from server.settings import ApiKey, Settings
from tests.fakes import FakeEmbedder, FakeLLM
from tests.wsutil import chat, collect, drain

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]
FILLER = " ".join(f"filler{i}" for i in range(25))


@pytest.fixture
def llm() -> FakeLLM:
    return FakeLLM(n_ctx=300)


@pytest.fixture
async def client(
    aiohttp_client: MakeClient, settings: Settings, llm: FakeLLM, redis: Redis
) -> Client:
    return await aiohttp_client(create_app(settings, llm=llm, embedder=FakeEmbedder()))


async def _texts(client: Client, cid: str) -> list[tuple[str, str]]:
    resp = await client.get(f"/api/conversations/{cid}/messages")
    assert resp.status == 200
    return [(m["role"], m["text"]) for m in (await resp.json())["messages"]]


async def _error(resp: Any, status: int, code: str) -> None:
    assert resp.status == status, await resp.text()
    err = (await resp.json())["error"]
    assert err["code"] == code
    assert err["message"]


async def _conversation(client: Client, *texts: str) -> str:
    async with client.ws_connect("/ws") as ws:
        cid = (await chat(ws, texts[0])).conversation_id
        for text in texts[1:]:
            await chat(ws, text, cid)
    await drain(client.app)
    return cid


async def test_rename_retitles_and_bad_titles_change_nothing(client: Client) -> None:
    cid = await _conversation(client, "hello there")
    resp = await client.patch(f"/api/conversations/{cid}", json={"title": "  Trip   plans "})
    assert resp.status == 200
    assert (await resp.json())["title"] == "Trip plans"
    for body in ({"title": ""}, {"title": 3}, {"title": "x" * 201}, {}):
        await _error(
            await client.patch(f"/api/conversations/{cid}", json=body), 400, "invalid_field"
        )
    await _error(await client.patch(f"/api/conversations/{cid}", data="nope"), 400, "invalid_json")
    await _error(
        await client.patch("/api/conversations/nosuch", json={"title": "x"}),
        404,
        "conversation_not_found",
    )
    got = await (await client.get(f"/api/conversations/{cid}")).json()
    assert got["title"] == "Trip plans"


async def test_search_finds_titles_and_text_with_a_snippet(client: Client) -> None:
    kayak = await _conversation(client, "hello", "I bought a red kayak last summer")
    other = await _conversation(client, "Recipes for bread")
    await client.patch(f"/api/conversations/{other}", json={"title": "Baking"})
    by_text = await (await client.get("/api/search", params={"q": "RED KAYAK"})).json()
    assert [c["id"] for c in by_text["conversations"]] == [kayak]
    assert "red kayak" in by_text["conversations"][0]["snippet"]
    assert by_text["conversations"][0]["seq"] == 3
    by_title = await (await client.get("/api/search", params={"q": "bak"})).json()
    assert [(c["id"], c["seq"]) for c in by_title["conversations"]] == [(other, None)]
    none = await (await client.get("/api/search", params={"q": "zebra"})).json()
    assert none["conversations"] == []
    await _error(await client.get("/api/search"), 400, "missing_field")
    await _error(await client.get("/api/search", params={"q": "x" * 201}), 400, "invalid_field")


async def test_settings_persist_and_apply_to_replies(client: Client, llm: FakeLLM) -> None:
    cid = await _conversation(client, "hi")
    got = await (await client.get(f"/api/conversations/{cid}/settings")).json()
    assert got["settings"] == {"system_prompt": None, "temperature": None, "max_tokens": None}
    assert got["defaults"]["max_tokens"] == 64
    new = {"system_prompt": "You are a pirate.", "temperature": 0, "max_tokens": 2}
    resp = await client.put(f"/api/conversations/{cid}/settings", json=new)
    assert resp.status == 200
    assert (await resp.json())["settings"] == {**new, "temperature": 0.0}
    llm.enqueue(["arr matey ahoy there"])
    async with client.ws_connect("/ws") as ws:
        ex = await chat(ws, "hello", cid)
    assert ex.text == "arr matey"
    assert ex.one("response.done")["status"] == "length"
    assert llm.history[-1][0].content == "You are a pirate."
    stored = await (await client.get(f"/api/conversations/{cid}/settings")).json()
    assert stored["settings"]["system_prompt"] == "You are a pirate."


BAD_SETTINGS = [
    {"temperature": 5},
    {"temperature": "hot"},
    {"max_tokens": 0},
    {"max_tokens": 100_000},
    {"max_tokens": 1.5},
    {"max_tokens": True},
    {"system_prompt": 42},
    {"system_prompt": "x" * 20_000},
]


async def test_bad_settings_are_refused_and_keep_the_old_ones(client: Client) -> None:
    cid = await _conversation(client, "hi")
    good = {"system_prompt": "Be brief.", "temperature": 0.5, "max_tokens": 10}
    assert (await client.put(f"/api/conversations/{cid}/settings", json=good)).status == 200
    for body in BAD_SETTINGS:
        resp = await client.put(f"/api/conversations/{cid}/settings", json=body)
        await _error(resp, 400, "invalid_field")
    got = await (await client.get(f"/api/conversations/{cid}/settings")).json()
    assert got["settings"] == good
    await _error(
        await client.put("/api/conversations/nosuch/settings", json=good),
        404,
        "conversation_not_found",
    )


async def _recall_conversation(client: Client) -> str:
    return await _conversation(
        client, "my locker code is 4711", *[f"{FILLER} turn{i}" for i in range(8)]
    )


def _prompt_text(llm: FakeLLM) -> str:
    return "\n".join(m.content for m in llm.history[-1])


async def test_forget_removes_a_turn_from_history_vectors_and_recall(
    client: Client, llm: FakeLLM, redis: Redis
) -> None:
    cid = await _recall_conversation(client)
    async with client.ws_connect("/ws") as ws:
        before = await chat(ws, "what is my locker code?", cid)
    recalled = [t["seq"] for t in before.one("context")["context"]["turns"]]
    assert 1 in recalled and "4711" in _prompt_text(llm)  # recalled while it exists
    store = Store(redis)
    await drain(client.app)  # indexing and the summarizer run in the background
    vectors = await store.vector_count("local", cid)
    covered = (await store.get_summary("local", cid)).upto_seq >= 1
    resp = await client.delete(f"/api/conversations/{cid}/messages/1")
    assert resp.status == 200
    assert await resp.json() == {"conversation_id": cid, "forgotten": 1, "summary_cleared": covered}
    assert ("user", "my locker code is 4711") not in await _texts(client, cid)
    assert await store.vector_count("local", cid) == vectors - 1
    async with client.ws_connect("/ws") as ws:
        after = await chat(ws, "what is my locker code?", cid)
    assert 1 not in [t["seq"] for t in after.one("context")["context"]["turns"]]
    assert "4711" not in _prompt_text(llm)
    await _error(
        await client.delete(f"/api/conversations/{cid}/messages/1"), 404, "message_not_found"
    )


async def test_forget_clears_a_summary_that_covered_the_turn(client: Client, redis: Redis) -> None:
    cid = await _conversation(client, "alpha", "beta", "gamma")
    store = Store(redis)
    await store.put_summary("local", cid, Summary("alpha said", 3, 2, 4), expect_version=0)
    resp = await client.delete(f"/api/conversations/{cid}/messages/5")
    assert (await resp.json())["summary_cleared"] is False  # turn 5 is after the summary
    resp = await client.delete(f"/api/conversations/{cid}/messages/1")
    assert (await resp.json())["summary_cleared"] is True
    summary = await (await client.get(f"/api/conversations/{cid}/summary")).json()
    assert (summary["text"], summary["version"], summary["covers"]) == ("", 4, None)


async def test_bad_forget_requests_lose_nothing(client: Client) -> None:
    cid = await _conversation(client, "keep me")
    for seq, status, code in [
        ("abc", 400, "invalid_seq"),
        ("0", 400, "invalid_seq"),
        ("-1", 400, "invalid_seq"),
        ("99", 404, "message_not_found"),
    ]:
        await _error(await client.delete(f"/api/conversations/{cid}/messages/{seq}"), status, code)
    await _error(
        await client.delete("/api/conversations/nosuch/messages/1"), 404, "conversation_not_found"
    )
    assert await _texts(client, cid) == [("user", "keep me"), ("assistant", "ok")]


async def test_summary_edit_bumps_the_version_and_refuses_stale_writes(client: Client) -> None:
    cid = await _conversation(client, "hello")
    url = f"/api/conversations/{cid}/summary"
    resp = await client.put(url, json={"text": "Ana likes kayaks.", "version": 0})
    assert resp.status == 200
    body = await resp.json()
    assert (body["text"], body["version"]) == ("Ana likes kayaks.", 1)
    assert body["tokens"] > 0
    await _error(
        await client.put(url, json={"text": "stale", "version": 0}), 409, "summary_changed"
    )
    await _error(await client.put(url, json={"text": 5}), 400, "invalid_field")
    await _error(await client.put(url, json={"text": "x", "version": "1"}), 400, "invalid_field")
    await _error(await client.put(url, json={"text": "x" * 9000}), 400, "invalid_field")
    got = await (await client.get(url)).json()
    assert (got["text"], got["version"]) == ("Ana likes kayaks.", 1)


async def test_an_edited_summary_goes_into_the_prompt(client: Client, llm: FakeLLM) -> None:
    cid = await _recall_conversation(client)
    url = f"/api/conversations/{cid}/summary"
    assert (await client.put(url, json={"text": "The user is called Zorblax."})).status == 200
    async with client.ws_connect("/ws") as ws:
        await chat(ws, "who am I?", cid)
    assert "Zorblax" in _prompt_text(llm)


async def test_regenerate_replaces_the_last_reply(client: Client, llm: FakeLLM) -> None:
    llm.enqueue(["first answer", "second answer"])
    cid = await _conversation(client, "question")
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "chat.regenerate", "conversation_id": cid})
        ex = await collect(ws)
    assert ex.text == "second answer"
    assert ex.conversation_id == cid
    assert await _texts(client, cid) == [("user", "question"), ("assistant", "second answer")]
    assert [m.content for m in llm.history[-1]][1:] == ["question"]


async def test_regenerate_after_an_interrupted_send_answers_the_last_user_turn(
    client: Client, redis: Redis
) -> None:
    cid = await _conversation(client, "one")
    await Store(redis).append("local", cid, "user", "two, unanswered")
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "chat.regenerate", "conversation_id": cid})
        await collect(ws)
    assert await _texts(client, cid) == [
        ("user", "one"),
        ("assistant", "ok"),
        ("user", "two, unanswered"),
        ("assistant", "ok"),
    ]


async def test_edit_rewrites_a_user_turn_and_drops_what_followed(
    client: Client, llm: FakeLLM
) -> None:
    cid = await _conversation(client, "I like tea", "and cake", "and jam")
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "chat.edit", "conversation_id": cid, "seq": 3, "text": "pie"})
        ex = await collect(ws)
    assert ex.one("response.done")["status"] == "completed"
    assert await _texts(client, cid) == [
        ("user", "I like tea"),
        ("assistant", "ok"),
        ("user", "pie"),
        ("assistant", "ok"),
    ]
    assert [m.content for m in llm.history[-1]][1:] == ["I like tea", "ok", "pie"]


BAD_REWINDS = [
    ({"type": "chat.regenerate"}, "missing_field"),
    ({"type": "chat.regenerate", "conversation_id": "nosuch"}, "conversation_not_found"),
    ({"type": "chat.edit", "conversation_id": "CID", "seq": 2, "text": "x"}, "not_a_user_message"),
    ({"type": "chat.edit", "conversation_id": "CID", "seq": 99, "text": "x"}, "message_not_found"),
    ({"type": "chat.edit", "conversation_id": "CID", "seq": 0, "text": "x"}, "invalid_field"),
    ({"type": "chat.edit", "conversation_id": "CID", "seq": "1", "text": "x"}, "invalid_field"),
    ({"type": "chat.edit", "conversation_id": "CID", "seq": 1, "text": " "}, "empty_message"),
    ({"type": "chat.edit", "conversation_id": "CID", "seq": 1}, "missing_field"),
]


async def test_bad_regenerate_and_edit_frames_lose_nothing(client: Client) -> None:
    cid = await _conversation(client, "keep", "these")
    before = await _texts(client, cid)
    async with client.ws_connect("/ws") as ws:
        for frame, code in BAD_REWINDS:
            sent = {k: (cid if v == "CID" else v) for k, v in frame.items()}
            await ws.send_json(sent)
            got = await ws.receive_json()
            assert (got["type"], got["code"]) == ("error", code), frame
    assert await _texts(client, cid) == before
    empty = (await (await client.post("/api/conversations", json={})).json())["id"]
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "chat.regenerate", "conversation_id": empty})
        assert (await ws.receive_json())["code"] == "nothing_to_regenerate"


async def test_ui_routes_are_per_user(
    aiohttp_client: MakeClient, settings: Settings, llm: FakeLLM, redis: Redis
) -> None:
    keys = (ApiKey("alice", "alice-key"), ApiKey("bob", "bob-key"))
    keyed = dataclasses.replace(settings, api_keys=keys, rate_limit=0)
    client = await aiohttp_client(create_app(keyed, llm=llm, embedder=FakeEmbedder()))
    alice, bob = {"Authorization": "Bearer alice-key"}, {"Authorization": "Bearer bob-key"}
    async with client.ws_connect("/ws", headers=alice) as ws:
        cid = (await chat(ws, "alice's secret kayak")).conversation_id
        await ws.send_json({"type": "chat.regenerate", "conversation_id": cid})
        assert (await collect(ws)).one("response.done")["status"] == "completed"
    base = f"/api/conversations/{cid}"
    attempts = [
        client.patch(base, json={"title": "mine"}, headers=bob),
        client.get(f"{base}/settings", headers=bob),
        client.put(f"{base}/settings", json={"temperature": 1}, headers=bob),
        client.delete(f"{base}/messages/1", headers=bob),
        client.put(f"{base}/summary", json={"text": "bob was here"}, headers=bob),
    ]
    for attempt in attempts:
        await _error(await attempt, 404, "conversation_not_found")
    found = await (await client.get("/api/search", params={"q": "kayak"}, headers=bob)).json()
    assert found["conversations"] == []
    await _error(await client.get("/api/search", params={"q": "kayak"}), 401, "missing_api_key")
    async with client.ws_connect("/ws", headers=bob) as ws:
        await ws.send_json({"type": "chat.regenerate", "conversation_id": cid})
        assert (await ws.receive_json())["code"] == "conversation_not_found"
        await ws.send_json({"type": "chat.edit", "conversation_id": cid, "seq": 1, "text": "x"})
        assert (await ws.receive_json())["code"] == "conversation_not_found"
    mine = await (await client.get(f"{base}/messages", headers=alice)).json()
    assert [m["text"] for m in mine["messages"]] == ["alice's secret kayak", "ok"]
