"""Per-conversation KV snapshots: RAM LRU, spill to disk, bounds, and the engine's reuse."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from models.jobs import EngineConfig
from models.kv_cache import KVCache, KVSnapshot
from models.llama_engine import LlamaEngine
from models.paths import default_chat_model
from models.types import ChatMessage, Finished, SamplingParams
from tests.conftest import TEST_CTX


def _snap(n_tokens: int, payload: int, fill: int = 1) -> KVSnapshot:
    return KVSnapshot(np.arange(n_tokens, dtype=np.int32), np.full(payload, fill, dtype=np.uint8))


def test_take_returns_what_was_put_and_removes_it() -> None:
    cache = KVCache(ram_bytes=10_000)
    snap = _snap(4, 100)
    cache.put("a", snap)
    assert cache.take("a") is snap
    assert cache.take("a") is None
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)


def test_least_recent_spills_to_disk_and_comes_back_intact(tmp_path: Path) -> None:
    cache = KVCache(ram_bytes=250, disk_dir=tmp_path / "kv", disk_bytes=10_000)
    first, second = _snap(5, 200, fill=7), _snap(6, 200, fill=9)
    cache.put("a", first)
    cache.put("b", second)  # over the RAM bound: "a" goes to disk
    assert cache.stats.spills == 1
    assert len(list((tmp_path / "kv").iterdir())) == 1
    back = cache.take("a")
    assert back is not None
    assert back.data.tobytes() == first.data.tobytes()
    assert back.tokens.tolist() == first.tokens.tolist()
    assert cache.stats.disk_hits == 1
    assert list((tmp_path / "kv").iterdir()) == []


def test_disk_is_bounded_too(tmp_path: Path) -> None:
    cache = KVCache(ram_bytes=0, disk_dir=tmp_path, disk_bytes=500)
    for key in "abcde":
        cache.put(key, _snap(2, 200))
    assert len(cache) == 2
    assert cache.take("a") is None
    assert cache.take("e") is not None
    assert cache.stats.evictions == 3


def test_without_a_disk_folder_old_snapshots_are_dropped() -> None:
    cache = KVCache(ram_bytes=300)
    cache.put("a", _snap(2, 200))
    cache.put("b", _snap(2, 200))
    assert cache.take("a") is None
    assert cache.take("b") is not None


def test_putting_a_key_again_replaces_it(tmp_path: Path) -> None:
    cache = KVCache(ram_bytes=250, disk_dir=tmp_path, disk_bytes=10_000)
    cache.put("a", _snap(2, 200, fill=1))
    cache.put("b", _snap(2, 200))
    cache.put("a", _snap(2, 200, fill=3))
    snap = cache.take("a")
    assert snap is not None
    assert snap.data[0] == 3
    assert cache.take("a") is None


async def _ask(engine: LlamaEngine, messages: list[ChatMessage], key: str) -> Finished:
    params = SamplingParams(max_tokens=4, temperature=0.0)
    async for event in engine.stream(messages, params, threading.Event(), cache_key=key):
        if isinstance(event, Finished):
            return event
    raise AssertionError("no Finished")


@pytest.mark.integration
async def test_alternating_conversations_keep_their_kv_state(engine: LlamaEngine) -> None:
    await _alternate(engine)


@pytest.mark.integration
async def test_a_q8_0_k_cache_keeps_kv_state_on_the_simple_engine_too() -> None:
    """And the parked state is smaller than the f16 cache's: the setting reached llama.cpp."""
    per_token = {}
    for type_k in ("f16", "q8_0"):
        config = EngineConfig(
            str(default_chat_model()), n_ctx=TEST_CTX, n_threads=2, flash_attn=False,
            cache_type_k=type_k,
        )  # fmt: skip
        engine = LlamaEngine(config)
        try:
            await _alternate(engine)
            parked = engine.kv.take("kv-a")
            assert parked is not None
            per_token[type_k] = parked.data.nbytes / len(parked.tokens)
        finally:
            engine.close()
    # K and V take the same room in f16; Q8_0 stores K in 34 bytes a 32 values instead of 64.
    assert per_token["q8_0"] / per_token["f16"] < 0.8, per_token


async def _alternate(engine: LlamaEngine) -> None:
    await engine.wait_ready()
    convs = {
        key: [ChatMessage("system", "You are brief.")]
        + [
            ChatMessage("user", f"Conversation {key} fact {i}: the {key} river is long.")
            for i in range(6)
        ]
        for key in ("kv-a", "kv-b")
    }
    for key, msgs in convs.items():
        await _ask(engine, msgs, key)
    for key, msgs in convs.items():
        msgs.append(ChatMessage("user", f"What about {key}?"))
        done = await _ask(engine, msgs, key)
        assert done.cached_tokens >= engine.tokenizer.count(msgs[:-1], add_generation_prompt=False)


@pytest.mark.integration
async def test_a_prefilled_prefix_serves_the_next_reply(engine: LlamaEngine) -> None:
    await engine.wait_ready()
    old = [ChatMessage("system", "You are brief.")] + [
        ChatMessage("user", f"Old layout line {i} about lighthouses.") for i in range(5)
    ]
    await _ask(engine, old, "kv-p")
    fresh = [
        ChatMessage("system", "You are brief."),
        ChatMessage("system", "Summary: the user likes lighthouses and storms."),
    ] + [ChatMessage("user", f"New layout line {i} about harbours.") for i in range(5)]
    done = await engine.prefill(fresh, cache_key="kv-p")
    assert (done.reason, done.completion_tokens) == ("completed", 0)
    await _ask(engine, [ChatMessage("system", "x")], "kv-other")  # something else runs between
    reply = await _ask(engine, [*fresh, ChatMessage("user", "Which harbour?")], "kv-p")
    assert reply.cached_tokens >= engine.tokenizer.count(fresh, add_generation_prompt=False)
