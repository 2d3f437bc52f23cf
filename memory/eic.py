"""The evidence-in-context rate (EIC) on LoCoMo, as the data's README defines it."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from memory.importer import Imported, Progress, import_conversation
from memory.locomo import EVIDENCE_CATEGORIES, LocomoConversation, LocomoQuestion
from memory.manager import BuiltContext, MemoryManager

EVAL_SYSTEM = "You are a helpful assistant with a long memory of this conversation."


@dataclass(frozen=True)
class QuestionScore:
    """One question's share of evidence turns that reached the context verbatim."""

    category: int
    score: float
    build_ms: float


def evidence_in_context(built: BuiltContext, evidence: Sequence[tuple[int, str]]) -> float:
    """Share of evidence turns (seq, text) packed as turns whose text is verbatim in the prompt."""
    packed = {t.seq for t in built.record.turns}
    history = "\n".join(m.content for m in built.messages[1:-1])
    found = sum(seq in packed and text in history for seq, text in evidence)
    return found / len(evidence)


async def score_conversation(
    memory: MemoryManager,
    user: str,
    conv: LocomoConversation,
    budget: int,
    progress: Progress | None = None,
) -> list[QuestionScore]:
    """Import a conversation, ask each evidence question against it, then delete it."""
    imported = await import_conversation(memory, user, conv, progress)
    try:
        return [
            await _score(memory, user=user, imported=imported, conv=conv, q=q, budget=budget)
            for q in conv.questions
            if q.category in EVIDENCE_CATEGORIES and any(e in imported.seq_of for e in q.evidence)
        ]
    finally:
        await memory.store.delete_conversation(user, imported.cid)
        memory.invalidate(user, imported.cid)


async def _score(
    memory: MemoryManager,
    *,
    user: str,
    imported: Imported,
    conv: LocomoConversation,
    q: LocomoQuestion,
    budget: int,
) -> QuestionScore:
    text_of = {t.dia_id: t.text for t in conv.turns}
    evidence = [(imported.seq_of[e], text_of[e]) for e in q.evidence if e in imported.seq_of]
    started = time.perf_counter()
    built = await memory.build_context(user, imported.cid, q.question, budget, EVAL_SYSTEM)
    elapsed = (time.perf_counter() - started) * 1000
    return QuestionScore(q.category, evidence_in_context(built, evidence), elapsed)


def report(scores: Sequence[QuestionScore], budget: int) -> dict[str, Any]:
    """The figures the README asks for: eic, full, n, by_category, budget, build_ms p50/p95."""
    by_cat: dict[int, list[float]] = defaultdict(list)
    for s in scores:
        by_cat[s.category].append(s.score)
    values = [s.score for s in scores]
    times = [s.build_ms for s in scores]
    return {
        "eic": round(float(np.mean(values)), 4) if values else 0.0,
        "full": round(float(np.mean([v == 1.0 for v in values])), 4) if values else 0.0,
        "n": len(values),
        "by_category": {
            str(c): round(float(np.mean(by_cat[c])), 4) if by_cat[c] else None
            for c in EVIDENCE_CATEGORIES
        },
        "budget": budget,
        "build_ms": {
            "p50": round(float(np.percentile(times, 50)), 2) if times else 0.0,
            "p95": round(float(np.percentile(times, 95)), 2) if times else 0.0,
        },
    }
