"""The rolling summary: stored only when good, compare-and-set, one job per conversation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from memory.store import Store, Summary
from memory.summary import Summarizer, SummaryPolicy, check_summary, trim_to_sentence
from models.llama_engine import PRIORITY_BACKGROUND
from tests.memory_fixtures import FILLER, FakeSummaryModel

GOOD = "Alice and Bob talked about work, a football game and a soup dinner with parents."


@pytest.fixture
async def store(redis: Redis) -> AsyncIterator[Store]:
    yield Store(redis)


async def _conversation(store: Store, turns: int = 12) -> str:
    conv = await store.create_conversation("u")
    rows = [("user", FILLER[i % len(FILLER)], "completed", 0.0, "Alice", {}) for i in range(turns)]
    await store.append_many("u", conv.id, rows)
    return conv.id


async def test_a_good_summary_is_stored_with_the_next_version(store: Store) -> None:
    cid, model = await _conversation(store), FakeSummaryModel()
    model.enqueue(GOOD)
    assert await Summarizer(store, model).fold("u", cid, upto=10)
    got = await store.get_summary("u", cid)
    assert (got.text, got.version, got.upto_seq) == (GOOD, 1, 10)
    assert got.tokens == model.tokenizer.message_cost(model.history[0][0].__class__("system", GOOD))
    assert model.priorities == [PRIORITY_BACKGROUND]
    assert "(none)" in model.history[0][1].content  # there was no previous summary


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "soup soup soup soup soup soup soup soup soup soup soup soup",
        " ".join(FILLER),
        RuntimeError("model crashed"),
    ],
)
async def test_a_bad_summary_is_discarded_and_the_old_one_kept(
    store: Store, bad: str | Exception
) -> None:
    cid, model = await _conversation(store), FakeSummaryModel()
    old = Summary("Earlier: they met.", 3, 0, 5)
    assert await store.put_summary("u", cid, old, expect_version=0)
    model.enqueue(bad)
    assert not await Summarizer(store, model).fold("u", cid, upto=10)
    assert await store.get_summary("u", cid) == old


async def test_nothing_is_folded_until_enough_turns_left_the_window(store: Store) -> None:
    cid, model = await _conversation(store), FakeSummaryModel()
    assert not await Summarizer(store, model, SummaryPolicy(min_turns=6)).fold("u", cid, upto=5)
    assert model.history == []


async def test_a_summary_never_runs_twice_at_once_for_one_conversation(store: Store) -> None:
    cid, model = await _conversation(store), FakeSummaryModel()
    model.gate = asyncio.Event()
    model.enqueue(GOOD, GOOD)
    summarizer = Summarizer(store, model)
    first = asyncio.ensure_future(summarizer.fold("u", cid, upto=10))
    while not model.history:  # wait until the first job reached the model
        await asyncio.sleep(0)
    assert not await summarizer.fold("u", cid, upto=10)
    model.gate.set()
    assert await first
    assert len(model.history) == 1


async def test_a_summary_written_meanwhile_wins_over_a_stale_job(store: Store) -> None:
    cid, model = await _conversation(store), FakeSummaryModel()
    model.gate = asyncio.Event()
    model.enqueue(GOOD)
    job = asyncio.ensure_future(Summarizer(store, model).fold("u", cid, upto=10))
    while not model.history:
        await asyncio.sleep(0)
    other = Summary("Written by someone else.", 1, 4, 6)
    assert await store.put_summary("u", cid, other, expect_version=0)
    model.gate.set()
    assert not await job
    assert await store.get_summary("u", cid) == other


def test_check_summary_names_each_problem() -> None:
    assert check_summary("", "src", 0, 10) == "empty"
    assert check_summary("a fine short summary", "src", 11, 10) == "over its token cap"
    assert check_summary("ok " * 20, "src", 20, 100) == "degenerate repetition"
    src = "one two three four five six seven eight nine ten"
    assert check_summary(src, src, 10, 100) == "a copy of the prompt"
    assert check_summary(GOOD, src, 20, 100) is None


def test_a_reply_cut_at_its_limit_is_trimmed_to_its_last_sentence() -> None:
    assert trim_to_sentence("They met. Then they went to") == "They met."
    assert trim_to_sentence("no sentence end") == ""
