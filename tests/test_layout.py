"""The per-turn prompt layout: append-only between resets, within budget, prefilled ahead."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from memory.layout import Layout, Recalled
from memory.manager import BuiltContext, MemoryManager
from memory.store import Store
from models.types import ChatMessage
from tests.fakes import FakeEmbedder, FakeLLM

USER = "local"
SYSTEM = "You are a helpful assistant."
WORDS = "garden trip Lisbon bicycle pottery puppy chess roof jazz books marathon bakery camping"


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS.split()) for _ in range(n)) + "."


async def _turn(
    memory: MemoryManager, cid: str, text: str, budget: int, reply: str
) -> BuiltContext:
    asked = await memory.record(USER, cid, "user", text)
    built = await memory.build_turn(USER, cid, text, budget, SYSTEM, before=asked.seq)
    answer = await memory.record(USER, cid, "assistant", reply)
    await memory.index(USER, cid, [asked, answer])
    return built


def _starts_with(prompt: list[ChatMessage], prefix: list[ChatMessage]) -> bool:
    return prompt[: len(prefix)] == prefix


@pytest.fixture
def llm() -> FakeLLM:
    return FakeLLM()


@pytest.fixture
def memory(redis: Redis, llm: FakeLLM) -> MemoryManager:
    return MemoryManager(Store(redis), llm.tokenizer, FakeEmbedder(), prefiller=llm)


async def test_prompts_only_grow_at_the_end_between_resets(memory: MemoryManager) -> None:
    rng = random.Random(1)
    cid = (await memory.store.create_conversation(USER)).id
    budget = 900
    previous: BuiltContext | None = None
    grew = resets = 0
    for _ in range(60):
        built = await _turn(memory, cid, _sentence(rng, 12), budget, _sentence(rng, 20))
        assert built.record.history_tokens <= budget
        if previous is not None:
            # The previous prompt, minus nothing, followed by its reply: all reusable KV.
            if _starts_with(built.messages, previous.messages):
                grew += 1
            else:
                resets += 1
        previous = built
    assert grew >= 45, (grew, resets)
    assert resets >= 2, "a 60-turn conversation must outgrow a 900-token budget more than once"


async def test_reply_is_part_of_the_next_prompt(memory: MemoryManager) -> None:
    cid = (await memory.store.create_conversation(USER)).id
    await _turn(memory, cid, "I keep bees.", 500, "Bees are great.")
    built = await _turn(memory, cid, "What do I keep?", 500, "Bees.")
    assert [m.content for m in built.messages] == [
        SYSTEM, "I keep bees.", "Bees are great.", "What do I keep?",
    ]  # fmt: skip
    assert [t.reason for t in built.record.turns] == ["recent", "recent"]


async def test_a_nearly_full_layout_is_prefilled_in_the_background(
    memory: MemoryManager, llm: FakeLLM
) -> None:
    rng = random.Random(2)
    cid = (await memory.store.create_conversation(USER)).id
    budget = 700
    prefilled = False
    for _ in range(40):
        await _turn(memory, cid, _sentence(rng, 12), budget, _sentence(rng, 20))
        if await memory.turns.prepare_next(USER, cid):
            prefilled = True
            break
    assert prefilled
    key, prefix = llm.prefills[-1]
    assert key == cid
    layout = Layout.from_json(await memory.store.get_layout(USER, cid) or "")
    assert layout.history_tokens <= budget * 0.8
    built = await _turn(memory, cid, _sentence(rng, 12), budget, "ok")
    assert _starts_with(built.messages, prefix), "the next turn must reuse the prefilled prefix"


async def test_recall_notes_bring_back_old_turns_once(memory: MemoryManager) -> None:
    rng = random.Random(3)
    cid = (await memory.store.create_conversation(USER)).id
    await _turn(memory, cid, "My locker code is 4417 zebra harmonica.", 400, "Noted.")
    for _ in range(40):
        await _turn(memory, cid, _sentence(rng, 12), 400, _sentence(rng, 12))
    built = await _turn(memory, cid, "What is my locker code zebra harmonica?", 400, "4417")
    recalled = [t.seq for t in built.record.turns if t.reason == "recalled"]
    assert 1 in recalled
    again = await _turn(memory, cid, "And the zebra harmonica code again?", 400, "4417")
    texts = [m.content for m in again.messages]
    assert sum("4417 zebra harmonica" in t for t in texts) == 1, "recalled once, not twice"


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=120), min_size=2, max_size=40),
    budget=st.integers(min_value=150, max_value=1500),
)
async def test_history_never_exceeds_the_budget(
    redis: Redis, lengths: list[int], budget: int
) -> None:
    llm = FakeLLM()
    memory = MemoryManager(Store(redis), llm.tokenizer, FakeEmbedder(), prefiller=llm)
    rng = random.Random(sum(lengths))
    cid = (await memory.store.create_conversation(USER)).id
    for n in lengths:
        built = await _turn(memory, cid, _sentence(rng, min(n, 30)), budget, _sentence(rng, n))
        fixed = llm.tokenizer.count([ChatMessage("system", SYSTEM), built.messages[-1]])
        assert llm.tokenizer.count(built.messages) - fixed <= budget
        await memory.turns.prepare_next(USER, cid)


def test_layout_survives_its_stored_form() -> None:
    layout = Layout(
        anchor=7, system="s", summary="sum", summary_version=2, summary_upto=6,
        base=(Recalled(1, 2.5),), notes={9: (Recalled(3, 1.7),)}, history_tokens=100, budget=900,
    )  # fmt: skip
    assert Layout.from_json(layout.to_json()) == layout


async def test_late_embeddings_of_a_deleted_conversation_leave_no_vectors(redis: Redis) -> None:
    store = Store(redis)
    cid = (await store.create_conversation(USER)).id
    vectors = await FakeEmbedder().embed(["kept a moment"])
    assert await store.add_vectors(USER, cid, [1], vectors)
    await store.delete_conversation(USER, cid)
    assert not await store.add_vectors(USER, cid, [2], vectors)
    assert await redis.keys(f"*{cid}*") == []
