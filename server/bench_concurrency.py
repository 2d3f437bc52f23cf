"""`memchat bench --parts concurrency`: many chats at once over the websocket server.

1, 4 and 8 clients each send a message at the same moment; every level runs on the same
server, prompts and reply length, so ratios compare like with like. With
`--compare-simple` the simple engine (one reply at a time) is measured the same way.
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from server.runtime import Runtime
from server.settings import Settings

if TYPE_CHECKING:
    from server.bench import BenchConfig, Turn

PROMPTS = [
    "Write a long story about a lighthouse keeper and a storm.",
    "Write a long story about a girl who finds a dragon egg.",
    "Write a long story about two friends sailing around the world.",
    "Write a long story about a robot learning to paint.",
    "Write a long story about a village that loses its river.",
    "Write a long story about an old clockmaker and his apprentice.",
    "Write a long story about a cat that becomes mayor of a town.",
    "Write a long story about a train that never stops.",
]


async def bench_concurrency(settings: Settings, cfg: BenchConfig) -> dict[str, Any]:
    """Aggregate tokens/s over one chat alone, first-token times and fairness at each level."""
    top = max(cfg.concurrency_levels)
    base = replace(
        settings, temperature=0.0, reply_tokens=cfg.concurrency_tokens, rate_limit=0, max_queue=64
    )
    batched = replace(
        base, engine="batched", parallel=max(top, settings.parallel), data_dir=base.data_dir / "b"
    )
    simple = replace(base, engine="simple", data_dir=base.data_dir / "s")
    results: dict[str, Any] = {
        "levels": await _levels(batched, cfg),
        "parallel": batched.parallel,
        "reply_tokens": cfg.concurrency_tokens,
        "rounds": cfg.concurrency_rounds,
    }
    if cfg.concurrency_simple:
        results["simple"] = await _levels(simple, cfg)
    return results


async def _levels(settings: Settings, cfg: BenchConfig) -> dict[str, dict[str, float]]:
    from server.bench import clients, serving_url

    levels = cfg.concurrency_levels
    rounds: dict[int, list[list[Turn]]] = {n: [] for n in levels}
    async with serving_url(settings) as (rt, url):
        async with clients(url, 1) as warm:
            await warm[0].send(PROMPTS[0])  # warm-up: first evaluation, embedder, Redis
        await _settle(rt)
        for _ in range(cfg.concurrency_rounds):
            for n in levels:
                async with clients(url, n) as chats:
                    sends = [c.send(PROMPTS[i % len(PROMPTS)]) for i, c in enumerate(chats)]
                    rounds[n].append(list(await asyncio.gather(*sends)))
                await _settle(rt)
    alone = _aggregate(rounds[min(levels)])
    return {str(n): _figures(rounds[n], alone) for n in levels}


async def _settle(rt: Runtime) -> None:
    """Let memory's after-reply work (embedding, indexing) finish between measured rounds."""
    while rt.background:
        await asyncio.gather(*list(rt.background), return_exceptions=True)


def _aggregate(rounds: list[list[Turn]]) -> float:
    """Tokens/s of all chats together: every token over the span from first send to last."""
    tokens = sum(t.usage["completion_tokens"] for turns in rounds for t in turns)
    spans = sum(max(t.ended for t in turns) - min(t.started for t in turns) for turns in rounds)
    return tokens / spans if spans > 0 else 0.0


def _rate(turn: Turn) -> float:
    """One chat's tokens/s as its user saw it: from sending to the last token."""
    span = turn.ended - turn.started
    return turn.usage["completion_tokens"] / span if span > 0 else 0.0


def _figures(rounds: list[list[Turn]], alone: float) -> dict[str, float]:
    ttfts = [t.ttft_ms for turns in rounds for t in turns]
    fairness = min(min(map(_rate, turns)) / max(map(_rate, turns)) for turns in rounds)
    aggregate = _aggregate(rounds)
    return {
        "throughput_ratio": round(aggregate / alone, 3) if alone else 0.0,
        "ttft_p50_ms": round(statistics.median(ttfts), 1),
        "ttft_p95_ms": round(float(np.percentile(ttfts, 95)), 1),
        "fairness": round(fairness, 3),
        "tokens_per_s": round(aggregate, 1),
        "completion_tokens_min": min(t.usage["completion_tokens"] for ts in rounds for t in ts),
    }
