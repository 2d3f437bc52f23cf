"""Prometheus metrics and structured logs with a request id per reply."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from server.app import create_app
from server.logs import JsonFormatter, RequestIdFilter
from server.settings import Settings
from tests.fakes import FakeEmbedder, FakeLLM
from tests.wsutil import Client, MakeClient, chat, collect


async def _metrics(client: Client) -> dict[str, float]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


async def _frame(ws: Any, kind: str) -> dict[str, Any]:
    frame: dict[str, Any] = await ws.receive_json()
    while frame["type"] != kind:
        frame = await ws.receive_json()
    return frame


async def test_tokens_times_replies_and_errors_are_counted(client: Client, llm: FakeLLM) -> None:
    llm.enqueue(["one two three", "four five"])
    async with client.ws_connect("/ws") as ws:
        first = await chat(ws, "hello")
        second = await chat(ws, "again", first.conversation_id)
        await ws.send_str("not json")
        await ws.receive_json()
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 9}
    assert (await client.post("/v1/chat/completions", json=body)).status == 400
    m = await _metrics(client)
    usages = [ex.one("response.done")["usage"] for ex in (first, second)]
    assert m["llamacpp:prompt_tokens_total"] == sum(u["prompt_tokens"] for u in usages)
    assert m["llamacpp:tokens_predicted_total"] == 5
    assert m["memchat_first_token_seconds_count"] == 2
    assert m["memchat_reply_seconds_count"] == 2
    assert m["memchat_replies_total{status=completed}"] == 2
    assert m["memchat_errors_total{code=invalid_json}"] == 1
    assert m["memchat_errors_total{code=invalid_parameter}"] == 1
    assert m["memchat_recalls_total"] == 0


async def test_queue_depth_and_replies_in_progress(client: Client, llm: FakeLLM) -> None:
    llm.enqueue(["a b c"])
    llm.hold(0)
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "chat.send", "text": "go"})
        await _frame(ws, "context")  # next: the model is asked
        waiting = await _metrics(client)
        llm.allow(1)
        await _frame(ws, "response.delta")
        running = await _metrics(client)
        llm.allow(10)
        await collect(ws)
    after = await _metrics(client)
    deferred, processing = "llamacpp:requests_deferred", "llamacpp:requests_processing"
    assert (waiting[deferred], waiting[processing]) == (1, 0)
    assert (running[deferred], running[processing]) == (0, 1)
    assert (after[deferred], after[processing]) == (0, 0)


async def test_recalled_turns_are_counted(
    aiohttp_client: MakeClient, settings: Settings, redis: Redis
) -> None:
    llm = FakeLLM(n_ctx=200)
    client = await aiohttp_client(create_app(settings, llm=llm, embedder=FakeEmbedder()))
    facts = [f"fact {i}: my {w} is called {w}ly" for i, w in enumerate(
        ["dog", "cat", "boat", "car", "house", "tree", "lamp", "chair", "river", "cloud"]
    )]  # fmt: skip
    async with client.ws_connect("/ws") as ws:
        cid = (await chat(ws, facts[0])).conversation_id
        for fact in facts[1:]:
            await chat(ws, fact, cid)
        last = await chat(ws, "what is my dog called?", cid)
    recalled = [t for t in last.one("context")["context"]["turns"] if t["reason"] == "recalled"]
    assert recalled, last.one("context")
    m = await _metrics(client)
    assert m["memchat_recalls_total"] >= 1
    assert m["memchat_recalled_turns_total"] >= len(recalled)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("server.chat")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield out
    logger.removeHandler(handler)
    logger.setLevel(old)


async def test_each_reply_logs_a_json_line_with_its_request_id(
    client: Client, json_log: io.StringIO
) -> None:
    async with client.ws_connect("/ws") as ws:
        a = await chat(ws, "first")
        b = await chat(ws, "second")
    resp = await client.post(
        "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]}
    )
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    ids = [a.one("response.done")["response_id"], b.one("response.done")["response_id"]]
    ids.append(resp.headers["X-Request-Id"])
    assert [line["request_id"] for line in lines] == ids
    assert len(set(ids)) == 3
    assert {line["level"] for line in lines} == {"info"}
    assert lines[0]["status"] == "completed"
    assert lines[0]["conversation_id"] == a.conversation_id
    assert lines[2]["conversation_id"] is None
    assert lines[0]["prompt_tokens"] == a.one("response.done")["usage"]["prompt_tokens"]
