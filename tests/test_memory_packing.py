"""Packing never exceeds its budget and accounts exactly: property tests."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from memory.manager import MemoryManager
from memory.packing import Line, Turn, pack_lines, pack_recent, render_lines
from memory.store import Store
from models.types import ChatMessage
from tests.fakes import FakeEmbedder, FakeTokenizer

costs = st.lists(st.integers(min_value=1, max_value=200), max_size=60)


@given(costs, st.integers(min_value=0, max_value=3000))
def test_recent_window_is_the_longest_newest_run_that_fits(cs: list[int], budget: int) -> None:
    newest_first = [Turn(seq, c) for seq, c in zip(range(len(cs), 0, -1), cs, strict=True)]
    taken = pack_recent(newest_first, budget)
    assert sum(t.cost for t in taken) <= budget
    assert taken == sorted(newest_first[: len(taken)], key=lambda t: t.seq)
    if len(taken) < len(cs):
        assert sum(t.cost for t in taken) + newest_first[len(taken)].cost > budget


@given(
    costs,
    st.integers(min_value=0, max_value=3000),
    st.sets(st.integers(min_value=1, max_value=60)),
    st.integers(min_value=0, max_value=9),
)
def test_lines_fit_with_each_heading_charged_once(
    cs: list[int], budget: int, excluded: set[int], day_cost: int
) -> None:
    ranked = [Line(seq, f"day {seq % 4}", f"t{seq}", c, -seq) for seq, c in enumerate(cs, 1)]
    days = {f"day {d}": day_cost for d in range(4)}
    taken = pack_lines(ranked, budget, frozenset(excluded), days)
    used = sum(ln.cost for ln in taken) + day_cost * len({ln.day for ln in taken})
    assert used <= budget
    assert not {ln.seq for ln in taken} & excluded
    assert [ln.seq for ln in taken] == sorted({ln.seq for ln in taken})


def test_render_groups_lines_under_their_date() -> None:
    lines = [Line(1, "8 May 2023", "A: hi", 3, 0), Line(2, "8 May 2023", "B: yo", 3, 0),
             Line(9, "9 May 2023", "A: bye", 3, 0)]  # fmt: skip
    assert render_lines(lines) == "[8 May 2023]\nA: hi\nB: yo\n[9 May 2023]\nA: bye"


turn_texts = st.lists(
    st.text(alphabet="abc xyz.!?", min_size=1, max_size=120), min_size=1, max_size=40
)


@settings(max_examples=30, deadline=None)
@given(turn_texts, st.integers(min_value=0, max_value=900), st.text(max_size=60))
def test_built_context_never_exceeds_its_budget(
    redis_url: str, texts: list[str], budget: int, question: str
) -> None:
    asyncio.run(_check_budget(redis_url, texts, budget, question))


async def _check_budget(redis_url: str, texts: list[str], budget: int, question: str) -> None:
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        store, tok = Store(client), FakeTokenizer()
        memory = MemoryManager(store, tok, FakeEmbedder())
        conv = await store.create_conversation("prop")
        rows = [("user" if i % 2 else "assistant", t, "completed", 86_400.0 * (i // 7), "S", {})
                for i, t in enumerate(texts)]  # fmt: skip
        stored = await store.append_many("prop", conv.id, rows)
        await memory.index("prop", conv.id, stored)
        built = await memory.build_context("prop", conv.id, question, budget, "system")
        rec = built.record
        fixed = tok.count([ChatMessage("system", "system"), ChatMessage("user", question)])
        assert rec.prompt_tokens == tok.count(built.messages)
        assert rec.history_tokens == rec.prompt_tokens - fixed <= budget
        assert sum(rec.sections.values()) == rec.history_tokens
        seqs = [t.seq for t in rec.turns]
        assert len(seqs) == len(set(seqs)) and set(seqs) <= {m.seq for m in stored}
        await store.delete_conversation("prop", conv.id)
    finally:
        await client.aclose()


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=200), min_size=60, max_size=90),
    st.integers(min_value=0, max_value=2048),
)
def test_real_template_context_never_exceeds_its_budget(
    redis_url: str, tokenizer: object, texts: list[str], budget: int
) -> None:
    asyncio.run(_check_real(redis_url, tokenizer, texts, budget))


async def _check_real(redis_url: str, tokenizer: object, texts: list[str], budget: int) -> None:
    from models.tokenizer import GGUFTokenizer

    assert isinstance(tokenizer, GGUFTokenizer)
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        store = Store(client)
        memory = MemoryManager(store, tokenizer, FakeEmbedder())
        conv = await store.create_conversation("real")
        rows = [
            ("user", t, "completed", 86_400.0 * (i // 9), "Ann", {}) for i, t in enumerate(texts)
        ]
        stored = await store.append_many("real", conv.id, rows)
        await memory.index("real", conv.id, stored)
        built = await memory.build_context("real", conv.id, texts[0], budget, "sys")
        fixed = tokenizer.count([ChatMessage("system", "sys"), ChatMessage("user", texts[0])])
        assert tokenizer.count(built.messages) - fixed == built.record.history_tokens <= budget
        await store.delete_conversation("real", conv.id)
    finally:
        await client.aclose()
