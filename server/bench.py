"""`memchat bench`: speed figures measured side by side in one run, on the real parts.

Every ratio compares two measurements taken in the same process, minutes apart, on the same
machine, so a noisy shared machine moves both sides alike.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from memory.store import DEFAULT_USER, Keys
from server.app import create_app, engine_config
from server.bench_concurrency import bench_concurrency
from server.runtime import RUNTIME, Runtime
from server.settings import Settings

STREAM_PROMPT = "Write a long story about a lighthouse keeper and a storm."
FILLER_BATCH = 1000
FILLER_EF = 32  # build effort for filler vectors; the measured conversation uses the default


@dataclass(frozen=True)
class BenchConfig:
    """What to run and at which sizes."""

    parts: tuple[str, ...] = ("stream", "long", "alternating", "scale", "concurrency")
    prior_turns: int = 300
    new_turns: int = 8
    warmup_turns: int = 2
    stream_runs: int = 3
    stream_tokens: int = 128
    alternating_convs: int = 4
    alternating_rounds: int = 3
    alternating_prior: int = 40
    scale_turns: int = 10_000
    scale_vectors: int = 1_000_000
    scale_queries: int = 50
    seed: int = 7
    concurrency_levels: tuple[int, ...] = (1, 4, 8)
    concurrency_tokens: int = 96
    concurrency_rounds: int = 4
    concurrency_simple: bool = False  # also measure the simple engine (slow: replies queue)


@dataclass(frozen=True)
class Turn:
    """What a client saw of one reply."""

    ttft_ms: float
    tokens_per_s: float
    usage: dict[str, int]
    conversation_id: str
    started: float = 0.0  # perf_counter when the message was sent
    ended: float = 0.0  # perf_counter of the last delta


class Client:
    """A websocket client that times replies as a user would see them."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, text: str, cid: str | None = None) -> Turn:
        """Send one message; time the first and last delta."""
        frame: dict[str, Any] = {"type": "chat.send", "text": text}
        if cid:
            frame["conversation_id"] = cid
        started = time.perf_counter()
        await self.ws.send_json(frame)
        first = last = 0.0
        conversation = cid or ""
        while True:
            msg = await self.ws.receive_json(timeout=600)
            kind = msg["type"]
            if kind == "response.created":
                conversation = msg["conversation_id"]
            elif kind == "response.delta":
                last = time.perf_counter()
                first = first or last
            elif kind == "error":
                raise RuntimeError(f"bench reply failed: {msg['code']}: {msg['message']}")
            elif kind == "response.done":
                n = int(msg["usage"]["completion_tokens"])
                rate = (n - 1) / (last - first) if n > 1 and last > first else 0.0
                ttft = (first - started) * 1000
                return Turn(ttft, rate, msg["usage"], conversation, started, last)


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Runtime, Client]]:
    """Run a real memchat server on a loopback port and connect a client to it."""
    async with serving_url(settings) as (rt, url), clients(url, 1) as connected:
        yield rt, connected[0]


@asynccontextmanager
async def serving_url(settings: Settings) -> AsyncIterator[tuple[Runtime, str]]:
    """Run a real memchat server on a loopback port, ready; yield its runtime and base URL."""
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        await _wait_healthy(app[RUNTIME])
        yield app[RUNTIME], f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def clients(url: str, n: int) -> AsyncIterator[list[Client]]:
    """`n` websocket clients of the server at `url`; connect them only for as long as they are
    read from, since an unread socket cannot answer the server's heartbeat pings."""
    async with aiohttp.ClientSession() as http, AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(http.ws_connect(url + "/ws")) for _ in range(n)]
        yield [Client(ws) for ws in sockets]


async def _wait_healthy(rt: Runtime) -> None:
    if rt.embedder_task is not None:
        await rt.embedder_task
    while not rt.llm.ready:
        await asyncio.sleep(0.05)


def sentences(rng: random.Random, n: int) -> list[str]:
    """Varied, chat-like turns about everyday topics (no two alike)."""
    people = ["my sister", "Tom", "our neighbour", "my boss", "Grandma", "the kids", "Priya"]
    acts = ["visited", "talked about", "finally fixed", "planned", "complained about", "loved"]
    things = [
        "the garden",
        "a trip to Lisbon",
        "the old bicycle",
        "a pottery class",
        "the new puppy",
        "a chess tournament",
        "the leaking roof",
        "a jazz concert",
        "the book club",
        "a marathon",
        "the bakery downtown",
        "a camping weekend",
    ]
    whens = ["yesterday", "last week", "on Saturday", "this morning", "in March", "twice"]
    extras = [
        "It was more fun than I expected.",
        "I am still thinking about it.",
        "We should do it again soon.",
        "Honestly it was exhausting.",
        "I took a lot of photos.",
        "It cost more than planned.",
    ]
    out = []
    for i in range(n):
        out.append(
            f"{rng.choice(people).capitalize()} {rng.choice(acts)} {rng.choice(things)} "
            f"{rng.choice(whens)}. {rng.choice(extras)} (note {i})"
        )
    return out


async def seed(rt: Runtime, turns: int, rng: random.Random, *, start: float | None = None) -> str:
    """Store a conversation of `turns` alternating turns, embedded and indexed, directly."""
    conv = await rt.store.create_conversation(DEFAULT_USER)
    texts = sentences(rng, turns)
    t0 = start if start is not None else time.time() - turns * 60
    rows: list[tuple[str, str, str, float | None, str, dict[str, Any]]] = [
        ("user" if i % 2 == 0 else "assistant", text, "completed", t0 + i * 60, "", {})
        for i, text in enumerate(texts)
    ]
    for lo in range(0, len(rows), 500):
        stored = await rt.store.append_many(DEFAULT_USER, conv.id, rows[lo : lo + 500])
        await rt.memory.index(DEFAULT_USER, conv.id, stored)
    return conv.id


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _p95(values: list[float]) -> float:
    return float(np.percentile(values, 95)) if values else 0.0


async def bench_stream(settings: Settings, cfg: BenchConfig) -> dict[str, Any]:
    """Tokens/s a websocket client receives, over raw llama-cpp-python on the same prompt."""
    bench_settings = replace(settings, temperature=0.0, reply_tokens=cfg.stream_tokens)
    raw = RawLlama(bench_settings)
    served: list[float] = []
    direct: list[float] = []
    async with serving(bench_settings) as (rt, client):
        messages = [("system", bench_settings.system_prompt), ("user", STREAM_PROMPT)]
        tokens = raw.prompt_tokens(rt, messages)
        for _ in range(cfg.stream_runs):
            served.append((await client.send(STREAM_PROMPT)).tokens_per_s)
            direct.append(await asyncio.to_thread(raw.generate, tokens, cfg.stream_tokens))
    raw.close()
    ratio = _median(served) / _median(direct) if direct and _median(direct) else 0.0
    return {
        "stream_efficiency": ratio,
        "served_tokens_per_s": _median(served),
        "raw_tokens_per_s": _median(direct),
    }


class RawLlama:
    """llama-cpp-python on its own, with the server's settings: the baseline."""

    def __init__(self, settings: Settings) -> None:
        from models.llama_engine import open_llama

        # The weights the server loads (converted as it converts them), with its settings.
        self._llm = open_llama(engine_config(settings))
        self._lock = threading.Lock()

    def prompt_tokens(self, rt: Runtime, messages: list[tuple[str, str]]) -> list[int]:
        """The exact tokens the server would feed for these messages."""
        from models.types import ChatMessage

        chat = [ChatMessage(role, text) for role, text in messages]  # type: ignore[arg-type]
        return list(rt.llm.tokenizer.prompt_tokens(chat))  # type: ignore[attr-defined]

    def generate(self, tokens: list[int], max_tokens: int) -> float:
        """Greedy generation; tokens/s from the first to the last token."""
        import llama_cpp

        with self._lock:
            stamps: list[float] = []
            for token in self._llm.generate(
                tokens, temp=0.0, repeat_penalty=1.1, top_k=40, top_p=0.95, min_p=0.05
            ):
                if llama_cpp.llama_vocab_is_eog(self._llm._model.vocab, token):
                    break
                self._llm.detokenize([token])
                stamps.append(time.perf_counter())
                if len(stamps) >= max_tokens:
                    break
        n = len(stamps)
        return (n - 1) / (stamps[-1] - stamps[0]) if n > 1 else 0.0

    def close(self) -> None:
        """Free the model."""
        self._llm.close()


async def bench_long(settings: Settings, cfg: BenchConfig) -> dict[str, Any]:
    """First-token time with many prior turns over turn 2: as configured, then without
    per-message recall notes (what each note token costs the user)."""
    configured = await _long(settings, cfg)
    without_notes = await _long(replace(settings, recall_note_tokens=0), cfg)
    return configured | {
        "ttft_ratio_300_no_notes": without_notes["ttft_ratio_300"],
        "kv_reuse_no_notes": without_notes["kv_reuse"],
        "recall_note_tokens": settings.recall_note_tokens,
    }


async def _long(settings: Settings, cfg: BenchConfig) -> dict[str, Any]:
    rng = random.Random(cfg.seed)
    async with serving(settings) as (rt, client):
        early: list[float] = []
        for _ in range(3):
            first = await client.send(sentences(rng, 1)[0])
            early.append((await client.send(sentences(rng, 1)[0], first.conversation_id)).ttft_ms)
        cid = await seed(rt, cfg.prior_turns, rng)
        for text in sentences(rng, cfg.warmup_turns):
            await client.send(text, cid)
        late = [await client.send(text, cid) for text in sentences(rng, cfg.new_turns)]
    reuse = [t.usage.get("cached_tokens", 0) / t.usage["prompt_tokens"] for t in late]
    return {
        "ttft_ratio_300": _median([t.ttft_ms for t in late]) / _median(early),
        "kv_reuse": _median(reuse),
        "ttft_turn2_ms": _median(early),
        "ttft_late_ms": _median([t.ttft_ms for t in late]),
        "prior_turns": cfg.prior_turns,
    }


async def bench_alternating(settings: Settings, cfg: BenchConfig) -> dict[str, Any]:
    """First-token time when conversations take turns, over one conversation alone."""
    rng = random.Random(cfg.seed + 1)
    async with serving(settings) as (rt, client):
        convs = [await seed(rt, cfg.alternating_prior, rng) for _ in range(cfg.alternating_convs)]
        for cid in convs:
            await client.send(sentences(rng, 1)[0], cid)
        alone = [
            (await client.send(text, convs[0])).ttft_ms
            for text in sentences(rng, cfg.alternating_rounds * cfg.alternating_convs)
        ]
        taking_turns = [
            (await client.send(sentences(rng, 1)[0], cid)).ttft_ms
            for _ in range(cfg.alternating_rounds)
            for cid in convs
        ]
    return {
        "alternating_ratio": _median(taking_turns) / _median(alone),
        "ttft_alone_ms": _median(alone),
        "ttft_alternating_ms": _median(taking_turns),
        "conversations": cfg.alternating_convs,
    }


async def bench_scale(
    settings: Settings, cfg: BenchConfig, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Context-build p95 in a huge conversation, with a huge number of vectors in Redis."""
    rng = random.Random(cfg.seed + 2)
    async with serving(settings) as (rt, _client):
        progress(f"scale: storing and embedding {cfg.scale_turns} turns")
        cid = await seed(rt, cfg.scale_turns, rng)
        filler = max(0, cfg.scale_vectors - cfg.scale_turns)
        progress(f"scale: adding {filler} filler vectors over other conversations")
        await _fill_vectors(rt, filler, cfg.seed)
        total = await _count_vectors(rt)
        budget = rt.memory.budget(rt.llm.n_ctx, settings.reply_tokens, settings.system_prompt, "")
        times: list[float] = []
        for text in sentences(rng, cfg.scale_queries):
            t0 = time.perf_counter()
            await rt.memory.build_context(
                DEFAULT_USER, cid, text, budget.history, settings.system_prompt
            )
            times.append((time.perf_counter() - t0) * 1000)
    return {
        "build_p95_ms_10k": _p95(times),
        "build_p50_ms_10k": _median(times),
        "turns": cfg.scale_turns,
        "vectors": total,
    }


async def _fill_vectors(rt: Runtime, n: int, seed_value: int) -> None:
    """Random unit vectors in other conversations' vector sets, ~10,000 a conversation."""
    gen = np.random.default_rng(seed_value)
    keys = Keys(DEFAULT_USER)
    redis = rt.store.redis
    for lo in range(0, n, FILLER_BATCH):
        count = min(FILLER_BATCH, n - lo)
        vecs = gen.standard_normal((count, 384)).astype("<f4")
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        key = keys.vectors(f"filler{lo // 10_000}")
        async with redis.pipeline(transaction=False) as p:
            for i, vec in enumerate(vecs):
                p.execute_command(
                    "VADD", key, "FP32", vec.tobytes(), str(lo + i), "CAS", "EF", FILLER_EF
                )
            await p.execute()


async def _count_vectors(rt: Runtime) -> int:
    total = 0
    async for key in rt.store.redis.scan_iter(match="memchat:*:vec", count=1000):
        total += int(await rt.store.redis.execute_command("VCARD", key))
    return total


async def run(
    settings: Settings, cfg: BenchConfig, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Run the chosen parts, each on a fresh server and Redis under a temporary data dir."""
    results: dict[str, Any] = {"config": cfg.__dict__.copy()}
    parts: dict[str, Callable[[Settings], Any]] = {
        "stream": lambda s: bench_stream(s, cfg),
        "long": lambda s: bench_long(s, cfg),
        "alternating": lambda s: bench_alternating(s, cfg),
        "scale": lambda s: bench_scale(s, cfg, progress),
        "concurrency": lambda s: bench_concurrency(s, cfg),
    }
    for name in cfg.parts:
        progress(f"running {name}")
        with tempfile.TemporaryDirectory(prefix="memchat-bench-") as tmp:
            part_settings = replace(settings, redis_url="", data_dir=Path(tmp))
            results[name] = await parts[name](part_settings)
        progress(f"{name}: {results[name]}")
    return results
