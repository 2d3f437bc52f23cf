"""LoCoMo format, import and the EIC metric, on real Redis, embedder and tokenizer."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from memory import locomo
from memory.eic import QuestionScore, report, score_conversation
from memory.importer import import_conversation
from memory.manager import MemoryManager
from memory.store import Store
from models.embedder import SentenceEmbedder
from models.errors import BadRequest, NotFound
from models.tokenizer import GGUFTokenizer
from tests.memory_fixtures import FILLER, locomo_conversation

NEEDLE = "My grandmother gave me her old sewing machine from Lisbon."


def _data() -> dict[str, Any]:
    sessions = []
    for day in range(1, 13):
        turns = [("Alice" if i % 2 == 0 else "Bob", FILLER[i % len(FILLER)]) for i in range(12)]
        if day == 3:
            turns[5] = ("Bob", NEEDLE)
        sessions.append((f"1:56 pm on {day} May, 2023", turns))
    data = locomo_conversation(sessions)
    data["session_3"][0]["blip_caption"] = "a photo of a red bicycle"
    data["qa"] = [{"question": "Where is Bob's sewing machine from?", "answer": "Lisbon",
                   "evidence": ["D3:6"], "category": 4}]  # fmt: skip
    return data


def test_parse_reads_times_speakers_roles_and_captions() -> None:
    conv = locomo.parse(_data())
    first = conv.turns[0]
    assert (first.speaker, first.role, first.dia_id) == ("Alice", "user", "D1:1")
    assert conv.turns[1].role == "assistant"
    assert locomo.parse_time("1:56 pm on 8 May, 2023") == 1683554160.0
    assert conv.turns[24].text.endswith("[shares a photo: a photo of a red bicycle]")
    assert conv.questions[0].evidence == ("D3:6",)
    with pytest.raises(BadRequest):
        locomo.parse({"speaker_a": "A", "speaker_b": "B", "session_1_date_time": "yesterday"})


@pytest.mark.integration
async def test_import_then_recall_puts_the_evidence_turn_in_context(
    redis: Redis, embedder: SentenceEmbedder, tokenizer: GGUFTokenizer
) -> None:
    memory = MemoryManager(Store(redis), tokenizer, embedder)
    conv = locomo.parse(_data())
    seen: list[int] = []
    imported = await import_conversation(memory, "u", conv, lambda done, total: seen.append(done))
    assert seen[-1] == len(conv.turns) == 144
    built = await memory.build_context("u", imported.cid, conv.questions[0].question, 300, "sys")
    needle_seq = imported.seq_of["D3:6"]
    recalled = {t.seq: t for t in built.record.turns if t.reason == "recalled"}
    assert needle_seq in recalled and recalled[needle_seq].score is not None
    assert f"Bob: {NEEDLE}" in built.messages[1].content
    assert "[3 May" in built.messages[1].content  # the year shows on the first heading only
    assert built.messages[1].content.count("2023]") == 1
    assert built.record.history_tokens <= 300


@pytest.mark.integration
async def test_eval_scores_and_cleans_up_after_itself(
    redis: Redis, embedder: SentenceEmbedder, tokenizer: GGUFTokenizer
) -> None:
    memory = MemoryManager(Store(redis), tokenizer, embedder)
    scores = await score_conversation(memory, "ev", locomo.parse(_data()), 300)
    assert [s.score for s in scores] == [1.0]
    assert await memory.store.list_conversations("ev") == []
    with pytest.raises(NotFound):
        await memory.store.get_conversation("ev", "missing")


def test_report_has_the_readme_fields() -> None:
    scores = [QuestionScore(1, 1.0, 10.0), QuestionScore(2, 0.5, 30.0), QuestionScore(4, 0.0, 20.0)]
    got = report(scores, 2048)
    assert got["eic"] == 0.5 and got["full"] == pytest.approx(0.3333, abs=1e-4)
    assert got["by_category"] == {"1": 1.0, "2": 0.5, "3": None, "4": 0.0}
    assert got["n"] == 3 and got["budget"] == 2048 and got["build_ms"]["p50"] == 20.0
