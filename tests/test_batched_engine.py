"""The batched engine: slot placement (fast, with a fake context) and real SmolLM2 batches."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.batched_engine import BatchedEngine
from models.errors import BadRequest
from models.jobs import PRIORITY_BACKGROUND, STAGED, EngineConfig, Job
from models.kv_cache import KVCache, KVSnapshot
from models.llama_batch import BatchContext
from models.paths import default_chat_model
from models.slots import SlotTable
from models.types import ChatMessage, Delta, Finished, SamplingParams
from tests.conftest import TEST_CTX

SLOTS = 3
GREEDY = SamplingParams(max_tokens=24, temperature=0.0)


class FakeSequences:
    """Sequences as plain token lists: what was saved, restored and truncated."""

    def __init__(self) -> None:
        self.cells: dict[int, list[int]] = {}
        self.saves: list[int] = []

    def save(self, seq: int, tokens: list[int]) -> KVSnapshot:
        self.saves.append(seq)
        data = np.asarray(self.cells.get(seq, []), dtype=np.uint8)
        return KVSnapshot(np.asarray(tokens, dtype=np.int32), data)

    def restore(self, seq: int, snap: KVSnapshot) -> bool:
        self.cells[seq] = snap.data.tolist()
        return True

    def truncate(self, seq: int, keep: int) -> None:
        self.cells[seq] = self.cells.get(seq, [])[:keep]


def _job(tokens: list[int], key: str | None) -> Job:
    return Job(tokens, SamplingParams(), threading.Event(), lambda _: None, cache_key=key)


def _hold(table: SlotTable, key: str | None, tokens: list[int], used: float) -> None:
    """Place a job and leave the slot idle, holding `tokens`, as after a finished reply."""
    slot = table.place(_job(tokens, key))
    assert slot is not None
    slot.tokens = list(tokens)
    table.store.cells[slot.seq] = list(tokens)  # type: ignore[attr-defined]
    slot.used = used


def test_least_recently_used_idle_slot_is_saved_and_reused() -> None:
    store, kv = FakeSequences(), KVCache(1 << 20)
    table = SlotTable(2, store, kv)
    _hold(table, "a", [1, 2, 3], used=1.0)
    _hold(table, "b", [4, 5, 6], used=2.0)
    slot = table.place(_job([7, 8], "c"))
    assert slot is not None and slot.key == "c" and slot.tokens == []
    saved = kv.peek("a")
    assert saved is not None and saved.tokens.tolist() == [1, 2, 3]
    assert kv.peek("b") is None


def test_a_new_conversation_keeps_the_prefix_it_shares_with_the_evicted_one() -> None:
    store, kv = FakeSequences(), KVCache(1 << 20)
    table = SlotTable(1, store, kv)
    _hold(table, "a", [1, 2, 3, 4], used=1.0)
    slot = table.place(_job([1, 2, 9], "b"))
    assert slot is not None and (slot.key, slot.tokens) == ("b", [1, 2])
    assert store.cells[slot.seq] == [1, 2]
    saved = kv.peek("a")
    assert saved is not None and saved.tokens.tolist() == [1, 2, 3, 4], "saved whole first"


def test_a_returning_conversation_starts_from_its_saved_state() -> None:
    store, kv = FakeSequences(), KVCache(1 << 20)
    table = SlotTable(1, store, kv)
    _hold(table, "a", [1, 2, 3], used=1.0)
    _hold(table, "b", [9, 9], used=2.0)  # evicts "a" into the cache
    slot = table.place(_job([1, 2, 3, 4], "a"))
    assert slot is not None and slot.tokens == [1, 2, 3]
    assert store.cells[slot.seq] == [1, 2, 3]
    assert kv.peek("a") is None, "the slot holds the conversation from here on"
    assert kv.peek("b") is not None


def test_a_staged_prefix_that_matches_better_wins_and_the_old_slot_is_freed() -> None:
    store, kv = FakeSequences(), KVCache(1 << 20)
    table = SlotTable(3, store, kv)
    _hold(table, "a", [1, 2, 3], used=1.0)
    _hold(table, "a" + STAGED, [1, 5, 6, 7], used=2.0)
    slot = table.place(_job([1, 5, 6, 7, 8], "a"))
    assert slot is not None and slot.tokens == [1, 5, 6, 7]
    keys = sorted((s.key or "", len(s.tokens)) for s in table.slots)
    assert keys == [("", 0), ("", 0), ("a", 4)]


def test_a_busy_conversation_makes_its_next_request_wait() -> None:
    table = SlotTable(2, FakeSequences(), KVCache(1 << 20))
    first = table.place(_job([1, 2], "a"))
    assert first is not None
    first.run = object()  # type: ignore[assignment]
    assert table.place(_job([1, 2, 3], "a")) is None
    second = table.place(_job([4], "b"))
    assert second is not None
    second.run = object()  # type: ignore[assignment]
    assert table.place(_job([5], "c")) is None, "every slot is busy"


def test_parking_saves_the_next_victim_once() -> None:
    store, kv = FakeSequences(), KVCache(1 << 20)
    table = SlotTable(2, store, kv)
    _hold(table, "a", [1, 2, 3], used=1.0)
    _hold(table, "b", [4, 5], used=2.0)
    assert table.park_lru() and not table.park_lru()
    assert store.saves == [0]
    table.place(_job([7], "c"))  # evicts the parked slot without saving it again
    assert store.saves == [0]


@pytest.fixture(scope="module")
def batched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchedEngine]:
    """A real SmolLM2 batched engine with fewer slots than the tests' conversations."""
    engine = BatchedEngine(_config(tmp_path_factory.mktemp("kv")))
    yield engine
    engine.close()


def _config(kv_dir: Path, **options: Any) -> EngineConfig:
    return EngineConfig(
        str(default_chat_model()),
        n_ctx=TEST_CTX,
        n_threads=2,
        parallel=SLOTS,
        idle_grace_s=0.2,
        kv_dir=kv_dir,
        **options,
    )


def _messages(text: str) -> list[ChatMessage]:
    return [ChatMessage("system", "You are a helpful assistant."), ChatMessage("user", text)]


async def _run(
    engine: BatchedEngine,
    messages: list[ChatMessage],
    params: SamplingParams = GREEDY,
    *,
    key: str | None = None,
    cancel: threading.Event | None = None,
    seen: list[str] | None = None,
    name: str = "",
    priority: int = 0,
) -> tuple[str, Finished]:
    parts: list[str] = []
    stream = engine.stream(
        messages, params, cancel or threading.Event(), priority=priority, cache_key=key
    )
    async for event in stream:
        if isinstance(event, Delta):
            parts.append(event.text)
            if seen is not None:
                seen.append(name)
        else:
            return "".join(parts), event
    raise AssertionError("no Finished")


@pytest.mark.integration
async def test_concurrent_replies_interleave_and_account_exactly(batched: BatchedEngine) -> None:
    await batched.wait_ready()
    prompts = ["Count from one to fifty.", "List every month.", "Name many animals."]
    seen: list[str] = []
    params = SamplingParams(max_tokens=20, temperature=0.0)
    results = await asyncio.gather(
        *(_run(batched, _messages(p), params, seen=seen, name=p) for p in prompts)
    )
    for prompt, (text, done) in zip(prompts, results, strict=True):
        assert text.strip()
        assert done.reason in {"completed", "length"}
        assert done.prompt_tokens == batched.tokenizer.count(_messages(prompt))
        assert 0 < done.completion_tokens <= 20
        assert seen.count(prompt) <= done.completion_tokens
    assert len(set(seen[: len(seen) // 2])) == len(prompts), "the replies must stream together"


@pytest.mark.integration
async def test_greedy_reply_is_the_same_alone_and_beside_others(batched: BatchedEngine) -> None:
    await batched.wait_ready()
    prompt = _messages("What is the capital of France? Answer in one sentence.")
    alone, _ = await _run(batched, prompt)
    together = await asyncio.gather(
        _run(batched, prompt),
        _run(batched, _messages("Write a poem about rain.")),
        _run(batched, _messages("Explain photosynthesis.")),
    )
    assert together[0][0] == alone


@pytest.mark.integration
async def test_a_seed_makes_sampling_repeatable(batched: BatchedEngine) -> None:
    await batched.wait_ready()
    params = SamplingParams(max_tokens=16, temperature=0.9, seed=1234)
    prompt = _messages("Tell me something surprising.")
    first, second = await asyncio.gather(
        _run(batched, prompt, params), _run(batched, prompt, params)
    )
    assert first[0] == second[0]


@pytest.mark.integration
async def test_cancelling_one_reply_leaves_the_others_streaming(batched: BatchedEngine) -> None:
    await batched.wait_ready()
    cancel = threading.Event()
    seen: list[str] = []
    params = SamplingParams(max_tokens=40, temperature=0.0)

    async def cancel_after_three() -> None:
        while seen.count("a") < 3:
            await asyncio.sleep(0)
        cancel.set()

    (_, a), (_, b), _ = await asyncio.gather(
        _run(batched, _messages("Write a long story."), params, cancel=cancel, seen=seen, name="a"),
        _run(batched, _messages("Write a long story about a dragon."), params, seen=seen, name="b"),
        cancel_after_three(),
    )
    assert a.reason == "cancelled"
    assert 3 <= a.completion_tokens < 40
    assert b.reason in {"completed", "length"}
    assert b.completion_tokens > a.completion_tokens


@pytest.mark.integration
async def test_conversations_keep_their_kv_across_turns_and_evictions(
    batched: BatchedEngine,
) -> None:
    await _kv_survives_turns_and_evictions(batched)


@pytest.mark.integration
async def test_a_q8_0_k_cache_survives_turns_and_evictions_too(tmp_path: Path) -> None:
    """--cache-type-k q8_0 without flash attention: parked and restored states are the real
    ones, as with the default f16 cache."""
    engine = BatchedEngine(_config(tmp_path, flash_attn=False, cache_type_k="q8_0"))
    try:
        await _kv_survives_turns_and_evictions(engine)
    finally:
        engine.close()


async def _kv_survives_turns_and_evictions(batched: BatchedEngine) -> None:
    await batched.wait_ready()
    convs = {
        f"conv-{i}": [ChatMessage("system", "You are brief.")]
        + [ChatMessage("user", f"Fact {j} of conversation {i}: the sky is blue.") for j in range(4)]
        for i in range(SLOTS + 2)
    }
    short = SamplingParams(max_tokens=4, temperature=0.0)
    for key, msgs in convs.items():
        await _run(batched, msgs, short, key=key)
    hits = batched.kv.stats.hits + batched.kv.stats.disk_hits
    replies = {}
    for key, msgs in convs.items():
        msgs.append(ChatMessage("user", "And then?"))
        replies[key], done = await _run(batched, msgs, short, key=key)
        assert done.cached_tokens >= batched.tokenizer.count(msgs[:-1], add_generation_prompt=False)
    assert batched.kv.stats.hits + batched.kv.stats.disk_hits - hits >= 2, "evicted ones restored"
    # A restored state must be the real one: the reply is the one a fresh evaluation gives.
    fresh, _ = await _run(batched, convs["conv-0"], short)
    assert replies["conv-0"] == fresh


@pytest.mark.integration
async def test_a_prefilled_prefix_serves_the_next_reply(batched: BatchedEngine) -> None:
    await batched.wait_ready()
    fresh = [ChatMessage("system", "You are brief.")] + [
        ChatMessage("user", f"Layout line {i} about harbours.") for i in range(5)
    ]
    done = await batched.prefill(fresh, cache_key="staged-conv")
    assert (done.reason, done.completion_tokens) == ("completed", 0)
    _, reply = await _run(batched, [*fresh, ChatMessage("user", "Which?")], key="staged-conv")
    assert reply.cached_tokens >= batched.tokenizer.count(fresh, add_generation_prompt=False)


@pytest.mark.integration
async def test_background_work_gives_way_to_chat(batched: BatchedEngine) -> None:
    await batched.wait_ready()
    seen: list[str] = []
    long = SamplingParams(max_tokens=400, temperature=0.0)

    async def chat_once_background_streams() -> tuple[str, Finished]:
        while not seen:
            await asyncio.sleep(0)
        return await _run(batched, _messages("Say hello."))

    (_, background), (_, chat) = await asyncio.gather(
        _run(
            batched,
            _messages("Write a very long essay about the sea."),
            long,
            seen=seen,
            name="bg",
            priority=PRIORITY_BACKGROUND,
        ),
        chat_once_background_streams(),
    )
    assert background.reason == "cancelled"
    assert background.completion_tokens < 400
    assert chat.reason in {"completed", "length"}


@pytest.mark.integration
async def test_a_prompt_longer_than_the_window_is_refused(batched: BatchedEngine) -> None:
    await batched.wait_ready()
    huge = _messages("word " * (TEST_CTX + 10))
    with pytest.raises(BadRequest) as err:
        await _run(batched, huge)
    assert err.value.code == "context_overflow"


def _record_steps(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[int, bool]]]:
    """From now on, the (sequence, wants logits) of every token of every decoded batch."""
    steps: list[list[tuple[int, bool]]] = [[]]
    add, decode = BatchContext.add, BatchContext.decode

    def spy_add(ctx: BatchContext, token: int, pos: int, seq: int, output: bool) -> int:
        steps[-1].append((seq, output))
        return add(ctx, token, pos, seq, output)

    def spy_decode(ctx: BatchContext) -> None:
        steps.append([])
        decode(ctx)

    monkeypatch.setattr(BatchContext, "add", spy_add)
    monkeypatch.setattr(BatchContext, "decode", spy_decode)
    return steps


@pytest.mark.integration
async def test_each_step_adds_the_replies_in_sequence_order(
    batched: BatchedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama.cpp reads the weights once per run of consecutive sequence ids in a batch, so a
    step whose replies arrive out of sequence order would cost several passes."""
    await batched.wait_ready()
    short = SamplingParams(max_tokens=4, temperature=0.0)
    keys = ["order-a", "order-b"]
    for key in keys:
        await _run(batched, _messages(f"Say {key}."), short, key=key)
    assert batched._table is not None
    seq = {s.key: s.seq for s in batched._table.slots if s.key in keys}
    assert len(set(seq.values())) == 2, "each conversation holds its own sequence"
    recorded = _record_steps(monkeypatch)
    later_seq_first = sorted(keys, key=lambda k: -seq[k])  # submitted in descending order
    params = SamplingParams(max_tokens=12, temperature=0.0)
    await asyncio.gather(
        *(
            _run(batched, _messages(f"Say {k} again, slowly."), params, key=k)
            for k in later_seq_first
        )
    )
    steps = [[s for s, _ in step] for step in recorded]
    both = [s for s in steps if set(s) == set(seq.values()) and len(s) == 2]
    assert len(both) >= 5, f"the two replies must have streamed together: {steps}"
    assert all(s == sorted(s) for s in both)


@pytest.mark.integration
async def test_a_reply_asked_for_as_the_last_one_ends_does_not_wait_for_idle_work() -> None:
    """The idle grace (here 30 s) holds back background work, never a chat request that
    arrives while the worker is between finishing one reply and going idle."""
    config = EngineConfig(
        str(default_chat_model()), n_ctx=TEST_CTX, n_threads=2, parallel=2, idle_grace_s=30.0
    )
    engine = BatchedEngine(config)
    try:
        await engine.wait_ready()
        short = SamplingParams(max_tokens=4, temperature=0.0)
        for i in range(4):
            started = time.perf_counter()
            await _run(engine, _messages(f"Say {i}."), short)
            assert time.perf_counter() - started < 15, f"reply {i} waited for the idle grace"
    finally:
        engine.close()


@pytest.mark.integration
async def test_an_idle_sequence_between_replies_is_padded_and_left_intact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Replies in sequences 0 and 2 with 1 idle: one throwaway token in 1 joins them into one
    pass over the weights; it changes neither their replies nor what sequence 1 holds."""
    config = EngineConfig(str(default_chat_model()), n_ctx=TEST_CTX, n_threads=2, parallel=3)
    engine = BatchedEngine(replace(config, max_gap=1))
    short = SamplingParams(max_tokens=4, temperature=0.0)
    params = SamplingParams(max_tokens=12, temperature=0.0)
    convs = {k: [*_messages(f"My name is {k}.")] for k in ("pad-a", "pad-b", "pad-c")}
    try:
        await engine.wait_ready()
        for key, msgs in convs.items():
            await _run(engine, msgs, short, key=key)
        assert engine._table is not None
        seq = {s.key: s.seq for s in engine._table.slots}
        assert [seq["pad-a"], seq["pad-b"], seq["pad-c"]] == [0, 1, 2]
        turn = {k: [*m, ChatMessage("user", "Tell me a short story.")] for k, m in convs.items()}
        alone = {k: (await _run(engine, turn[k], params, key=k))[0] for k in turn}
        assert {s.key: s.seq for s in engine._table.slots} == seq, "each kept its sequence"

        steps = _record_steps(monkeypatch)
        together = await asyncio.gather(
            *(_run(engine, turn[k], params, key=k) for k in ("pad-a", "pad-c"))
        )
        monkeypatch.undo()
        both = [s for s in steps if (0, True) in s and (2, True) in s]
        assert len(both) >= 5, f"the two replies must have streamed together: {steps}"
        assert all((1, False) in s and len(s) == 3 for s in both), "sequence 1 padded"
        assert [text for text, _ in together] == [alone["pad-a"], alone["pad-c"]]
        text, done = await _run(engine, turn["pad-b"], params, key="pad-b")
        assert done.cached_tokens >= engine.tokenizer.count(convs["pad-b"]) - 1
        assert text == alone["pad-b"], "sequence 1's KV state is what it was"
    finally:
        engine.close()
