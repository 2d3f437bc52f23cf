"""How the recalled block and the recent window are laid out for one context build."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from redis.asyncio import Redis

from memory.lexical import LexicalIndex, terms
from memory.manager import MemoryManager
from memory.packing import Line, render_lines
from memory.recall import without_names
from memory.render import year_shown_on_change
from memory.store import Store
from tests.fakes import FakeEmbedder, FakeTokenizer
from tests.memory_fixtures import FILLER

DAY = 86_400.0
NEEDLE = "My grandmother gave me her old sewing machine from Lisbon."
TRIP = ["Shall we take the ferry to Porto harbour in June?", "A ferry to Porto sounds fun!"]


def test_headings_show_the_year_only_where_it_changes() -> None:
    days = ["8 May 2023", "8 May 2023", "9 May 2023", "2 January 2024", "5 January 2024"]
    lines = [Line(seq, day, f"A: t{seq}", 3, 0.0) for seq, day in enumerate(days, 1)]
    assert render_lines(year_shown_on_change(lines)) == (
        "[8 May 2023]\nA: t1\nA: t2\n[9 May]\nA: t3\n[2 January 2024]\nA: t4\n[5 January]\nA: t5"
    )
    assert year_shown_on_change([]) == []


async def _conversation(store: Store, memory: MemoryManager) -> str:
    """Ten days of small talk, one needle on day 2, and a Porto trip planned on the last day."""
    conv = await store.create_conversation("ctx")
    rows = [
        ("user" if i % 2 == 0 else "assistant", FILLER[i % len(FILLER)], "completed",
         DAY * (i // 12), "Ann" if i % 2 == 0 else "Bo", {})
        for i in range(120)
    ]  # fmt: skip
    rows[30] = ("assistant", NEEDLE, "completed", DAY * 2, "Bo", {})
    for i, text in enumerate(TRIP, start=116):
        rows[i] = (rows[i][0], text, "completed", rows[i][3], rows[i][4], {})
    stored = await store.append_many("ctx", conv.id, rows)
    await memory.index("ctx", conv.id, stored)
    return conv.id


async def test_a_message_about_the_past_keeps_only_the_last_exchange_recent(redis: Redis) -> None:
    store = Store(redis)
    memory = MemoryManager(store, FakeTokenizer(), FakeEmbedder())
    cid = await _conversation(store, memory)
    built = await memory.build_context("ctx", cid, "Where is the sewing machine from?", 400, "s")
    recent = [t.seq for t in built.record.turns if t.reason == "recent"]
    assert recent == [119, 120]
    assert 31 in {t.seq for t in built.record.turns if t.reason == "recalled"}


async def test_a_message_continuing_the_recent_turns_keeps_the_whole_window(
    redis: Redis,
) -> None:
    store = Store(redis)
    memory = MemoryManager(store, FakeTokenizer(), FakeEmbedder())
    cid = await _conversation(store, memory)
    built = await memory.build_context("ctx", cid, "Which ferry to Porto harbour?", 600, "s")
    recent = [t.seq for t in built.record.turns if t.reason == "recent"]
    assert len(recent) > 2 and recent[-1] == 120


def test_without_names_takes_out_the_speakers_first_names() -> None:
    speakers = {"Ann Lee", "Bo"}
    assert without_names("What did Ann's sister tell bo?", speakers) == "What did sister tell ?"
    assert without_names("Where is Annapolis?", speakers) == "Where is Annapolis?"
    assert without_names("Where?", set()) == "Where?"


class RecordingEmbedder(FakeEmbedder):
    """A fake embedder that records each batch it was asked to embed."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    async def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        self.batches.append(list(texts))
        return await super().embed(texts)


async def test_a_message_naming_a_speaker_is_also_embedded_without_the_name(
    redis: Redis,
) -> None:
    store = Store(redis)
    embedder = RecordingEmbedder()
    memory = MemoryManager(store, FakeTokenizer(), embedder)
    cid = await _conversation(store, memory)
    built = await memory.build_context("ctx", cid, "Where is Bo's sewing machine from?", 400, "s")
    assert embedder.batches[-1] == [
        "Where is Bo's sewing machine from?",
        "Where is sewing machine from?",
    ]
    assert 31 in {t.seq for t in built.record.turns if t.reason == "recalled"}
    await memory.build_context("ctx", cid, "Where is the sewing machine from?", 400, "s")
    assert embedder.batches[-1] == ["Where is the sewing machine from?"]


def test_bm25_scores_the_content_of_a_message_not_the_speaker_it_names() -> None:
    index = LexicalIndex()
    index.add(terms("Bo: Hi Ann!"))
    index.add(terms("Ann: We adopted a puppy named Rex"))
    scores = index.scores(terms(without_names("Which puppy did Ann adopt?", {"Ann", "Bo"})))
    assert scores[0] == 0 and scores[1] > 0
