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
Ints = npt.NDArray[np.int64]
_INITIAL_ROWS = 256
_EPS = 1e-9


@dataclass(frozen=True)
class Candidates:
    """Turns that may be recalled, in seq order, as columns: seq, day (a session key) and speaker
    (an index into `names`; -1 for none)."""

    seq: Ints
    day: Ints
    speaker: Ints
    names: Sequence[str] = ()

    def __len__(self) -> int:
        return int(self.seq.size)

    def spoken_by(self, name: str) -> npt.NDArray[np.bool_]:
        """Which candidates `name` said."""
        code = list(self.names).index(name) if name in self.names else -2
        out: npt.NDArray[np.bool_] = self.speaker == code
        return out


class CandidateTable:
    """Candidates as growing columns; views from `upto` stay valid as rows are appended."""

    def __init__(self) -> None:
        self._cols = np.empty((3, _INITIAL_ROWS), dtype=np.int64)
        self._n = 0
        self._names: list[str] = []
        self._codes: dict[str, int] = {}

    def __len__(self) -> int:
        return self._n

    def append(self, seq: int, day: int, speaker: str) -> None:
        """Add the next candidate (seqs increase)."""
        if self._n == self._cols.shape[1]:
            grown = np.empty((3, self._n * 2), dtype=np.int64)
            grown[:, : self._n] = self._cols[:, : self._n]
            self._cols = grown  # views already handed out keep the old buffer
        code = -1
        if speaker:
            code = self._codes.setdefault(speaker, len(self._names))
            if code == len(self._names):
                self._names.append(speaker)
        self._cols[:, self._n] = (seq, day, code)
        self._n += 1

    def upto(self, last: int | None) -> Candidates:
        """The candidates with seq <= `last` (all with None)."""
        seqs = self._cols[0, : self._n]
        end = self._n if last is None else int(np.searchsorted(seqs, last, side="right"))
        cols = self._cols[:, :end]
        return Candidates(cols[0], cols[1], cols[2], tuple(self._names))


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


def aligned(cands: Candidates, scores: Mapping[int, float], missing: float | None) -> Floats:
    """Scores by seq, aligned with candidates; absent ones get `missing` (the lowest seen, by
    default)."""
    if missing is None:
        missing = min(scores.values()) if scores else 0.0
    out = np.full(len(cands), missing, dtype=np.float64)
    if scores and len(cands):
        seqs = np.fromiter(scores.keys(), dtype=np.int64, count=len(scores))
        values = np.fromiter(scores.values(), dtype=np.float64, count=len(scores))
        at = np.minimum(np.searchsorted(cands.seq, seqs), len(cands) - 1)
        known = cands.seq[at] == seqs
        out[at[known]] = values[known]
    return out


@dataclass(frozen=True)
class Ranking:
    """Candidates best first: their seqs and fused scores."""

    seq: Ints
    score: Floats

    def top(self, k: int) -> list[tuple[int, float]]:
        """The best `k` as (seq, score) pairs."""
        return list(zip(self.seq[:k].tolist(), self.score[:k].tolist(), strict=True))


def fuse(
    cands: Candidates,
    vector: Floats,
    lexical: Floats,
    speaker: str | None = None,
    weights: RecallWeights = DEFAULT_WEIGHTS,
) -> Ranking:
    """Rank candidates best first; `vector` and `lexical` are their scores, aligned with them."""
    score = (1 - weights.lexical) * zscores(vector) + weights.lexical * zscores(lexical)
    if speaker:
        score = score + weights.speaker * cands.spoken_by(speaker)
    score = spread_to_neighbours(cands.day, score, weights.neighbour_drop)
    score = score + weights.day * day_strength(cands.day, score, weights.day_top)
    order = np.argsort(-score, kind="stable")
    return Ranking(cands.seq[order], score[order])


def spread_to_neighbours(days: Ints, score: Floats, drop: float) -> Floats:
    """Let a turn inherit its same-day neighbour's score, less `drop` (answers follow questions)."""
    same = days[1:] == days[:-1]
    out = score.copy()
    out[1:] = np.where(same, np.maximum(out[1:], score[:-1] - drop), out[1:])
    out[:-1] = np.where(same, np.maximum(out[:-1], score[1:] - drop), out[:-1])
    return out


def day_strength(days: Ints, score: Floats, top: int) -> Floats:
    """Each turn's day score: the mean of that day's `top` best turn scores."""
    if not score.size:
        return score.copy()
    unique, inverse = np.unique(days, return_inverse=True)
    order = np.lexsort((-score, inverse))  # by day, best first within a day
    group = inverse[order]
    starts = np.searchsorted(group, np.arange(unique.size))
    best = np.arange(order.size) - starts[group] < top
    sums = np.bincount(group[best], weights=score[order][best], minlength=unique.size)
    counts = np.minimum(np.bincount(inverse, minlength=unique.size), top)
    out: Floats = (sums / counts)[inverse]
    return out
