"""Replies in scattered sequences, with and without padding the idle sequences between them.

    .venv/bin/python scripts/bench_gaps.py [--tokens 64]

Eight conversations first take sequences 0-7 of one batched engine (no server). Then, for each
pattern, the conversations in those sequences each get a reply at the same moment; prints the
best of two rounds' span, for an engine that never pads (`max_gap` 0) and for the default one
(`max_gap` measured at load), side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.batched_engine import BatchedEngine
from models.jobs import EngineConfig
from models.paths import default_chat_model
from models.types import ChatMessage, SamplingParams

PATTERNS: tuple[tuple[int, ...], ...] = (
    (0, 1, 2, 4, 5, 6, 7),
    (1, 3, 4, 6),
    (0, 1, 2, 3, 5, 6),
    (1, 2, 3, 5),
    (0, 7),
)


def _messages(seq: int, round_: int) -> list[ChatMessage]:
    text = f"Write a long story about the number {seq}." + " " * round_
    return [ChatMessage("system", "You are a helpful assistant."), ChatMessage("user", text)]


async def _reply(engine: BatchedEngine, seq: int, round_: int, tokens: int) -> None:
    params = SamplingParams(max_tokens=tokens, temperature=0.0)
    stream = engine.stream(_messages(seq, round_), params, threading.Event(), cache_key=f"c{seq}")
    async for _ in stream:
        pass


async def spans(max_gap: int, tokens: int) -> tuple[int, dict[tuple[int, ...], float]]:
    """The engine's padding limit, and the best span (ms) of each pattern."""
    engine = BatchedEngine(EngineConfig(str(default_chat_model()), parallel=8, max_gap=max_gap))
    try:
        await engine.wait_ready()
        for seq in range(8):  # conversation c{seq} takes sequence seq
            await _reply(engine, seq, 0, 2)
        best: dict[tuple[int, ...], float] = {}
        for pattern in PATTERNS:
            times = []
            for round_ in (1, 2):
                started = time.perf_counter()
                await asyncio.gather(*(_reply(engine, seq, round_, tokens) for seq in pattern))
                times.append((time.perf_counter() - started) * 1000)
            best[pattern] = min(times)
        return engine._max_gap, best
    finally:
        engine.close()


def main() -> None:
    """Both engines, one after the other; a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    never, never_ms = asyncio.run(spans(0, args.tokens))
    measured, padded_ms = asyncio.run(spans(-1, args.tokens))
    print(
        f"{'sequences replying':<22} {'max_gap ' + str(never):>10} {'max_gap ' + str(measured):>10}"
    )
    for pattern in PATTERNS:
        name = " ".join(map(str, pattern))
        print(f"{name:<22} {never_ms[pattern]:8.0f}ms {padded_ms[pattern]:8.0f}ms", flush=True)


if __name__ == "__main__":
    main()
