"""`memchat soak`: many websocket clients against a real `memchat serve` child, for a bounded time.

Every send must end in a complete reply or a clean "busy" refusal; afterwards every
acknowledged message and every reply reported stored is checked against the server's history.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from server.local_server import ServerProcess

MiB = 1 << 20
BUSY_BACKOFF_S = 1.0  # what the server's Retry-After asks for
FRAME_TIMEOUT_S = 300.0
TOPICS = ["bees", "Lisbon", "jazz", "a bicycle trip", "pottery", "chess", "the sea", "bread"]


@dataclass(frozen=True)
class SoakConfig:
    """How hard and how long to push."""

    clients: int = 50
    seconds: float = 120.0
    warmup_s: float = 30.0
    reply_tokens: int = 16
    max_queue: int = 32
    kv_ram_mb: int = 128
    sample_s: float = 2.0
    seed: int = 7
    serve_args: tuple[str, ...] = ()  # more `memchat serve` flags, e.g. ("--engine", "batched")


@dataclass
class Tally:
    """What the clients saw."""

    sent: int = 0
    completed: int = 0
    refused_busy: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    incomplete: int = 0  # no end frame: the socket dropped or nothing came in time
    reply_s: list[float] = field(default_factory=list)
    # conversation -> user texts acknowledged (response.created) and replies reported stored
    asked: dict[str, list[str]] = field(default_factory=dict)
    stored: dict[str, list[int]] = field(default_factory=dict)


async def run(cfg: SoakConfig, data_dir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Start the server, run the clients until the time is up, check the history, report."""
    server = ServerProcess(data_dir, _server_args(cfg))
    server.start()
    try:
        await server.wait_ready(embedder=True)
        say(f"soak: server pid {server.pid} ready; {cfg.clients} clients for {cfg.seconds:g} s")
        tally, samples = await _drive(cfg, server)
        alive = server.running()
        lost = await _verify(server.url, tally) if alive else -1
    finally:
        server.stop()
    return _figures(cfg, tally, samples, alive, lost)


def _server_args(cfg: SoakConfig) -> list[str]:
    return [
        "--reply-tokens", str(cfg.reply_tokens),
        "--max-queue", str(cfg.max_queue),
        "--kv-ram-mb", str(cfg.kv_ram_mb),
        "--rate-limit", "0",
        "--log-level", "warning",
        *cfg.serve_args,
    ]  # fmt: skip


async def _drive(cfg: SoakConfig, server: ServerProcess) -> tuple[Tally, list[tuple[float, int]]]:
    tally = Tally()
    samples: list[tuple[float, int]] = []
    start = time.monotonic()
    deadline = start + cfg.seconds
    sampler = asyncio.create_task(_sample(server, start, cfg.sample_s, samples))
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(
            *(
                _client(http, server.url, deadline, tally, random.Random(cfg.seed + i))
                for i in range(cfg.clients)
            )
        )
    sampler.cancel()
    samples.append((time.monotonic() - start, server.rss_bytes() if server.running() else 0))
    return tally, samples


async def _sample(
    server: ServerProcess, start: float, every: float, out: list[tuple[float, int]]
) -> None:
    while server.running():
        out.append((time.monotonic() - start, server.rss_bytes()))
        await asyncio.sleep(every)


async def _client(
    http: aiohttp.ClientSession, url: str, deadline: float, tally: Tally, rng: random.Random
) -> None:
    cid: str | None = None
    try:
        async with http.ws_connect(f"{url}/ws") as ws:
            while time.monotonic() < deadline:
                text = f"Tell me one short fact about {rng.choice(TOPICS)}. ({rng.random():.6f})"
                frame: dict[str, Any] = {"type": "chat.send", "text": text}
                if cid is not None:
                    frame["conversation_id"] = cid
                tally.sent += 1
                await ws.send_json(frame)
                cid = await _one_reply(ws, text, cid, tally)
    except (aiohttp.ClientError, ConnectionError, TimeoutError):
        tally.incomplete += 1


async def _one_reply(
    ws: aiohttp.ClientWebSocketResponse, text: str, cid: str | None, tally: Tally
) -> str | None:
    """Read one reply to its end; return the conversation it went to."""
    sent = time.monotonic()
    while True:
        msg = await ws.receive_json(timeout=FRAME_TIMEOUT_S)
        kind = msg["type"]
        if kind == "response.created":
            cid = msg["conversation_id"]
            tally.asked.setdefault(cid, []).append(text)
        elif kind == "response.done":
            return _done(msg, cid, time.monotonic() - sent, tally)
        elif kind == "error":
            if msg["code"] == "busy":
                tally.refused_busy += 1
                await asyncio.sleep(BUSY_BACKOFF_S)
            else:
                tally.errors[msg["code"]] += 1
            return cid


def _done(msg: dict[str, Any], cid: str | None, seconds: float, tally: Tally) -> str | None:
    if msg["status"] in ("completed", "length"):
        tally.completed += 1
        tally.reply_s.append(seconds)
    else:
        tally.errors[f"status_{msg['status']}"] += 1
    if cid is not None and msg.get("message_seq") is not None:
        tally.stored.setdefault(cid, []).append(int(msg["message_seq"]))
    return cid


async def _verify(url: str, tally: Tally) -> int:
    """How many acknowledged messages or stored replies are missing from the history."""
    lost = 0
    async with aiohttp.ClientSession() as http:
        for cid, asked in tally.asked.items():
            async with http.get(f"{url}/api/conversations/{cid}/messages") as resp:
                messages = (await resp.json())["messages"]
            users = [m["text"] for m in messages if m["role"] == "user"]
            seqs = {m["seq"] for m in messages if m["role"] == "assistant"}
            lost += sum(1 for t in asked if t not in users)
            lost += sum(1 for s in tally.stored.get(cid, []) if s not in seqs)
    return lost


def _figures(
    cfg: SoakConfig, tally: Tally, samples: list[tuple[float, int]], alive: bool, lost: int
) -> dict[str, Any]:
    after_warmup = [rss for t, rss in samples if t >= cfg.warmup_s] or [samples[-1][1]]
    replies = sorted(tally.reply_s)
    return {
        "clients": cfg.clients,
        "seconds": cfg.seconds,
        "reply_tokens": cfg.reply_tokens,
        "max_queue": cfg.max_queue,
        "serve_args": " ".join(cfg.serve_args),
        "sent": tally.sent,
        "replies_completed": tally.completed,
        "refused_busy": tally.refused_busy,
        "errors": dict(tally.errors),
        "incomplete": tally.incomplete,
        "server_alive": alive,
        "lost": lost,
        "reply_s_p50": round(statistics.median(replies), 2) if replies else None,
        "reply_s_max": round(replies[-1], 2) if replies else None,
        "rss_mb_after_warmup": round(after_warmup[0] / MiB, 1),
        "rss_mb_end": round(samples[-1][1] / MiB, 1),
        "rss_mb_max_after_warmup": round(max(after_warmup) / MiB, 1),
        "rss_mb_every_30s": [round(rss / MiB) for _, rss in samples[:: _every(cfg, 30.0)]],
    }


def _every(cfg: SoakConfig, seconds: float) -> int:
    return max(1, round(seconds / cfg.sample_s))
