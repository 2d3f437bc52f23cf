"""What moving between replicas and generating remotely cost, on the real model and Redis.

Two memchat replicas (a, b) over one embedded Redis, each with its own SmolLM2 engine, and a
third (c) that generates on a's engine through a's `/v1` as its inference server. One
conversation of stored turns is continued on a, moved to b (b's KV cache misses), continued
there, moved back, and continued on c. Prints each step's median first-token time and the
share of prompt tokens reused from a KV cache.

    .venv/bin/python scripts/bench_replicas.py [--prior 120] [--turns 3]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memory.store import DEFAULT_USER
from server.bench import Client, Turn, sentences, serving_url
from server.redis_process import EmbeddedRedis
from server.settings import Settings


async def steps(urls: dict[str, str], cid: str, turns: int, rng: random.Random) -> None:
    """Continue the conversation on each replica in turn and print what each step cost."""
    plan = [("a", "warm-up on a"), ("a", "on its replica")]
    plan += [("b", "moved to b"), ("b", "on b"), ("a", "moved back")]
    plan += [("c", "remote (c on a's engine)")]
    print(f"{'step':<28}{'first token ms':>16}{'reused share':>14}{'prompt tokens':>15}")
    for name, label in plan:
        n = 1 if label.startswith("moved") else turns
        done: list[Turn] = []
        async with aiohttp.ClientSession() as http, http.ws_connect(urls[name] + "/ws") as ws:
            for text in sentences(rng, n):
                done.append(await Client(ws).send(text + " What do you think?", cid))
        ttft = statistics.median(t.ttft_ms for t in done)
        reused = sum(t.usage["cached_tokens"] for t in done) / sum(
            t.usage["prompt_tokens"] for t in done
        )
        prompt = statistics.median(t.usage["prompt_tokens"] for t in done)
        print(f"{label:<28}{ttft:>16.0f}{reused:>14.2f}{prompt:>15.0f}")


async def main(prior: int, turns: int) -> None:
    """Start the replicas, store the prior turns, and run the steps."""
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        redis = EmbeddedRedis(Path(tmp) / "redis")
        base = Settings(redis_url=redis.start(), data_dir=Path(tmp), reply_tokens=32)
        try:
            async with AsyncExitStack() as stack:
                a, url_a = await stack.enter_async_context(
                    serving_url(replace(base, data_dir=Path(tmp) / "a"))
                )
                _, url_b = await stack.enter_async_context(
                    serving_url(replace(base, data_dir=Path(tmp) / "b"))
                )
                remote = replace(base, data_dir=Path(tmp) / "c", inference_url=url_a + "/v1")
                _, url_c = await stack.enter_async_context(serving_url(remote))
                cid = (await a.store.create_conversation(DEFAULT_USER)).id
                rows = [
                    ("user" if i % 2 == 0 else "assistant", text, "completed", None, "", {})
                    for i, text in enumerate(sentences(rng, prior))
                ]
                stored = await a.store.append_many(DEFAULT_USER, cid, rows)
                await a.memory.index(DEFAULT_USER, cid, stored)
                urls = {"a": url_a, "b": url_b, "c": url_c}
                await steps(urls, cid, turns, rng)
        finally:
            redis.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prior", type=int, default=120, help="stored turns before the steps")
    parser.add_argument("--turns", type=int, default=3, help="turns per step (moves: one)")
    args = parser.parse_args()
    asyncio.run(main(args.prior, args.turns))
