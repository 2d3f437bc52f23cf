"""Ranking recall candidates: vector and lexical scores fused, shaped by conversation structure.

Pure functions over small frozen dataclasses; the manager feeds them scores read from Redis.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
_EPS = 1e-9


@dataclass(frozen=True)
class Candidate:
    """A stored turn that may be recalled: its seq, day (a session key) and speaker."""

    seq: int
    day: int
    speaker: str = ""


@dataclass(frozen=True)
class RecallWeights:
    """How the signals combine; each was kept because it raised evidence recall (see MEMORY.md)."""

    lexical: float = 0.35  # share of the BM25 z-score against the vector z-score
    speaker: float = 0.3  # bonus for turns by the one speaker the message names
    neighbour_drop: float = 0.8  # a turn scores at least its same-day neighbour minus this
    day: float = 0.2  # weight of the day's best turns, so evidence clusters rise together
    day_top: int = 3  # how many of a day's best turns make its score


DEFAULT_WEIGHTS = RecallWeights()


def named_speaker(message: str, speakers: Iterable[str]) -> str | None:
    """The one known speaker whose first name the message mentions, if exactly one is."""
    words = set(re.findall(r"[a-z0-9]+", message.lower()))
    named = {s for s in speakers if s and s.split()[0].lower() in words}
    return named.pop() if len(named) == 1 else None


def without_names(message: str, speakers: Iterable[str]) -> str:
    """The message with the speakers' first names (and a possessive 's) taken out.

    Turns are embedded as `speaker: text`, so a name in the message would pull its vector
    towards every turn of that speaker (the speaker bonus already rewards those); the message's
    vector is the mean of the message's and this name-free copy's, so content decides more, and
    BM25 scores the name-free copy (a name would favour short greetings that use it).
    """
    names = sorted({s.split()[0] for s in speakers if s.strip()}, key=len, reverse=True)
    if not names:
        return message
    pattern = r"\b(?:" + "|".join(map(re.escape, names)) + r")(?:'s)?\b"
    return " ".join(re.sub(pattern, " ", message, flags=re.IGNORECASE).split())


def zscores(values: Floats) -> Floats:
    """Standardized scores; a constant signal contributes nothing."""
    std = float(values.std()) if values.size else 0.0
    if std < _EPS:
        return np.zeros_like(values)
    out: Floats = (values - values.mean()) / std
    return out


def dense(cands: Sequence[Candidate], scores: Mapping[int, float], missing: float | None) -> Floats:
    """Scores aligned with candidates; absent ones get `missing` (the lowest seen, by default)."""
    if missing is None:
        missing = min(scores.values()) if scores else 0.0
    return np.array([scores.get(c.seq, missing) for c in cands], dtype=np.float64)


def fuse(
    cands: Sequence[Candidate],
    vector: Mapping[int, float],
    lexical: Mapping[int, float],
    speaker: str | None = None,
    weights: RecallWeights = DEFAULT_WEIGHTS,
) -> list[tuple[int, float]]:
    """Rank candidates (given in seq order) best first, with their fused scores."""
    if not cands:
        return []
    score = (1 - weights.lexical) * zscores(dense(cands, vector, None)) + weights.lexical * zscores(
        dense(cands, lexical, 0.0)
    )
    if speaker:
        score = score + weights.speaker * np.array([c.speaker == speaker for c in cands])
    score = spread_to_neighbours(cands, score, weights.neighbour_drop)
    score = score + weights.day * day_strength(cands, score, weights.day_top)
    order = np.argsort(-score, kind="stable")
    return [(cands[i].seq, float(score[i])) for i in order]


def spread_to_neighbours(cands: Sequence[Candidate], score: Floats, drop: float) -> Floats:
    """Let a turn inherit its same-day neighbour's score, less `drop` (answers follow questions)."""
    days = np.array([c.day for c in cands])
    same = days[1:] == days[:-1]
    out = score.copy()
    out[1:] = np.where(same, np.maximum(out[1:], score[:-1] - drop), out[1:])
    out[:-1] = np.where(same, np.maximum(out[:-1], score[1:] - drop), out[:-1])
    return out


def day_strength(cands: Sequence[Candidate], score: Floats, top: int) -> Floats:
    """Each turn's day score: the mean of that day's `top` best turn scores."""
    days = np.fromiter((c.day for c in cands), dtype=np.int64, count=len(cands))
    unique, inverse = np.unique(days, return_inverse=True)
    means = np.empty(len(unique), dtype=np.float64)
    for i in range(len(unique)):
        values = score[inverse == i]
        best = min(top, values.size)
        means[i] = np.partition(values, values.size - best)[values.size - best :].mean()
    out: Floats = means[inverse]
    return out
