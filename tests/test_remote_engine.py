"""Remote inference: memchat generating on an OpenAI-compatible server.

The server stand-in is a second memchat serving `/v1` with the real SmolLM2 engine (what
llama-server would run), so token counts are checked against a real engine's own count.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from models.errors import BadRequest, Unavailable
from models.llama_engine import LlamaEngine
from models.paths import default_chat_model
from models.remote_engine import RemoteConfig, RemoteEngine
from models.tokenizer import GGUFTokenizer
from models.types import ChatMessage, Delta, Finished, SamplingParams
from server.app import create_app
from server.runtime import RUNTIME
from server.settings import ApiKey, Settings
from tests.conftest import TEST_CTX
from tests.fakes import FakeEmbedder, FakeTokenizer
from tests.wsutil import MakeClient, chat, drain

MakeServer = Callable[..., Awaitable[TestServer]]
PROMPT = [
    ChatMessage("system", "You are a helpful assistant."),
    ChatMessage("user", "Name three colours."),
]
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, seed=1)


@pytest.fixture
async def remote(
    aiohttp_server: MakeServer, settings: Settings, engine: LlamaEngine, redis: Redis
) -> TestServer:
    """A second memchat serving /v1 with the real engine: the inference server."""
    await engine.wait_ready()
    return await aiohttp_server(create_app(settings, llm=engine, embedder=FakeEmbedder()))


def _url(server: TestServer) -> str:
    return str(server.make_url("/v1"))


def _remote_engine(url: str, tokenizer: Any, **config: Any) -> RemoteEngine:
    config.setdefault("n_ctx", TEST_CTX)
    return RemoteEngine(RemoteConfig(url, str(default_chat_model()), **config), tokenizer)


def _metrics(server: TestServer) -> dict[str, float]:
    out: dict[str, float] = {}
    text = server.app[RUNTIME].metrics.render().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


async def _collect(
    engine: RemoteEngine, params: SamplingParams = GREEDY, cancel_after: int = 0
) -> tuple[list[str], Finished]:
    cancel = threading.Event()
    parts: list[str] = []
    done: Finished | None = None
    async for event in engine.stream(PROMPT, params, cancel):
        if isinstance(event, Delta):
            parts.append(event.text)
            if cancel_after and len(parts) >= cancel_after:
                cancel.set()
        else:
            done = event
    assert done is not None
    return parts, done


async def test_a_reply_streams_from_the_server_with_the_prompt_counted_exactly(
    remote: TestServer, tokenizer: GGUFTokenizer, engine: LlamaEngine
) -> None:
    remote_llm = _remote_engine(_url(remote), tokenizer)
    parts, done = await _collect(remote_llm)
    assert len(parts) > 1 and "".join(parts).strip()  # streamed in pieces
    assert done.reason in ("completed", "length") and not done.error
    served = _metrics(remote)["llamacpp:prompt_tokens_total"]
    assert done.prompt_tokens == tokenizer.count(PROMPT) == served  # local count = engine's
    assert done.completion_tokens == _metrics(remote)["llamacpp:tokens_predicted_total"]
    assert done.ttft_ms > 0
    _, again = await _collect(remote_llm)
    assert again.prompt_tokens == done.prompt_tokens
    if isinstance(engine, LlamaEngine):  # it keeps the last prompt: the server reports reuse
        assert 0 < again.cached_tokens < again.prompt_tokens
    assert remote_llm.ready


async def test_memchat_chats_through_a_remote_server_with_memory_and_exact_counts(
    aiohttp_client: MakeClient, remote: TestServer, redis_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        redis_url=redis_url,
        data_dir=tmp_path,
        n_ctx=TEST_CTX,
        reply_tokens=16,
        temperature=0.0,
        inference_url=_url(remote),
    )
    front = await aiohttp_client(create_app(settings, embedder=FakeEmbedder()))
    assert isinstance(front.app[RUNTIME].llm, RemoteEngine)  # opened from the settings
    async with front.ws_connect("/ws") as ws:
        first = await chat(ws, "Hi, my name is Ana and I like kayaks.")
        cid = first.conversation_id
        second = await chat(ws, "What is my name?", cid)
    await drain(front.app)
    for ex in (first, second):
        assert ex.one("response.done")["status"] in ("completed", "length")
        assert ex.text.strip()
        packed = ex.one("context")["context"]["prompt_tokens"]  # memory's exact count
        assert ex.one("response.done")["usage"]["prompt_tokens"] == packed
    served = _metrics(remote)["llamacpp:prompt_tokens_total"]
    used = [ex.one("response.done")["usage"]["prompt_tokens"] for ex in (first, second)]
    assert served >= sum(used)  # plus any summary the front asked for
    stored = await (await front.get(f"/api/conversations/{cid}/messages")).json()
    assert [m["text"] for m in stored["messages"]][2] == "What is my name?"
    assert stored["messages"][3]["text"] == second.text


async def test_cancel_closes_the_stream_and_the_server_stops_generating(
    remote: TestServer, tokenizer: GGUFTokenizer
) -> None:
    engine = _remote_engine(_url(remote), tokenizer)
    long = SamplingParams(max_tokens=400, temperature=0.0, seed=1)
    parts, done = await _collect(engine, long, cancel_after=2)
    assert done.reason == "cancelled" and not done.error
    assert len(parts) == 2
    await drain(remote.app)
    m = _metrics(remote)
    assert m["memchat_replies_total{status=interrupted}"] == 1  # the server saw us leave
    assert m["llamacpp:tokens_predicted_total"] < 400


async def test_an_unreachable_server_is_reported_with_the_fix(tokenizer: GGUFTokenizer) -> None:
    engine = _remote_engine("http://127.0.0.1:9/v1", tokenizer, retry_after_s=60.0)
    assert engine.ready
    with pytest.raises(Unavailable) as caught:
        await _collect(engine)
    assert caught.value.code == "inference_unreachable"
    assert "MEMCHAT_INFERENCE_URL" in caught.value.message
    assert not engine.ready  # /health reports it until a retry is due


async def test_server_refusals_map_to_memchat_errors(
    aiohttp_server: MakeServer, settings: Settings, engine: LlamaEngine, redis: Redis
) -> None:
    keyed = dataclasses.replace(settings, api_keys=(ApiKey("svc", "KEY1"),))
    server = await aiohttp_server(create_app(keyed, llm=engine, embedder=FakeEmbedder()))
    tok = FakeTokenizer()
    with pytest.raises(Unavailable) as caught:
        await _collect(_remote_engine(_url(server), tok))
    assert caught.value.code == "inference_unauthorized"
    assert "MEMCHAT_INFERENCE_API_KEY" in caught.value.message
    with pytest.raises(BadRequest) as refused:
        await _collect(_remote_engine(_url(server), tok, api_key="KEY1"), SamplingParams(top_p=5))
    assert refused.value.code == "inference_rejected"
    assert "top_p" in refused.value.message  # the server's own words reach the user
    with pytest.raises(Unavailable) as missing:
        await _collect(_remote_engine(str(server.make_url("/nope")), tok, api_key="KEY1"))
    assert missing.value.code == "inference_not_found"


async def test_a_prompt_over_the_context_is_refused_before_any_request() -> None:
    engine = _remote_engine("http://127.0.0.1:9/v1", FakeTokenizer(), n_ctx=8)
    with pytest.raises(BadRequest) as caught:
        await _collect(engine)
    assert caught.value.code == "context_overflow"
    assert engine.ready  # nothing was sent


def _sse(*events: dict[str, Any] | str) -> bytes:
    return b"".join(
        f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events
    )


def _chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


@pytest.mark.parametrize(
    ("body", "reason", "error"),
    [
        (_sse(_chunk("Hel"), _chunk("lo", "stop"), "[DONE]"), "completed", ""),
        (_sse(_chunk("Hel"), _chunk("lo", "length"), "[DONE]"), "length", ""),
        (_sse(_chunk("Hel"), _chunk("lo"), {"error": {"message": "out of memory"}}, "[DONE]"),
         "error", "out of memory"),
        (_sse(_chunk("Hel"), _chunk("lo")), "error", "the inference server ended the stream early"),
    ],
)  # fmt: skip
async def test_how_a_stream_ends_is_reported(
    aiohttp_server: MakeServer, body: bytes, reason: str, error: str
) -> None:
    """Protocol edge cases llama-server and vLLM produce, from a scripted server."""

    async def completions(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(body)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    server = await aiohttp_server(app)
    parts, done = await _collect(_remote_engine(_url(server), FakeTokenizer()))
    assert parts == ["Hel", "lo"]
    assert (done.reason, done.error) == (reason, error)
    assert done.prompt_tokens == FakeTokenizer().count(PROMPT)  # no usage sent: the local count


async def test_while_the_server_is_down_new_messages_are_told_so(
    aiohttp_client: MakeClient, redis_url: str, tmp_path: Path
) -> None:
    url = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
    settings = Settings(redis_url=redis_url, data_dir=tmp_path, n_ctx=TEST_CTX, inference_url=url)
    front = await aiohttp_client(create_app(settings, embedder=FakeEmbedder()))
    async with front.ws_connect("/ws") as ws:
        first = await chat(ws, "Hello?")
        second = await chat(ws, "Anyone there?", first.conversation_id)
    await drain(front.app)
    assert "inference_unreachable" in json.dumps(first.frames)
    refused = second.one("error")
    assert refused["code"] == "inference_unreachable" and url in refused["message"]
