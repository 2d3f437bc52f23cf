"""Ranking: BM25, speaker naming and fusion over a text-dependent fake embedder."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pytest

from memory.lexical import LexicalIndex, stem, terms
from memory.recall import (
    Candidates,
    CandidateTable,
    RecallWeights,
    aligned,
    day_strength,
    fuse,
    named_speaker,
    zscores,
)
from tests.fakes import FakeEmbedder

DOCS = [
    "Alice: I adopted a puppy named Biscuit last week",
    "Bob: My sister plays the violin in an orchestra",
    "Alice: We went hiking in the mountains near Denver",
    "Bob: The weather has been rainy all month",
]


def _candidates(rows: Iterable[tuple[int, int, str]]) -> Candidates:
    """Candidate columns from (seq, day, speaker) rows."""
    table = CandidateTable()
    for seq, day, speaker in rows:
        table.append(seq, day, speaker)
    return table.upto(None)


def test_terms_drop_stopwords_and_stem() -> None:
    assert terms("What did Alice paint in the painting class?") == [
        "alic",
        "paint",
        "paint",
        "class",
    ]
    assert stem("hiking") == stem("hike") == "hik" and stem("is") == "is"


def test_stems_join_plurals_and_verb_forms_with_their_base_word() -> None:
    same = [
        ("turtles", "turtle"),
        ("cities", "city"),
        ("movies", "movie"),
        ("recipes", "recipe"),
        ("games", "gaming"),
        ("running", "run"),
        ("baked", "bake"),
        ("plays", "playing"),
    ]
    for a, b in same:
        assert stem(a) == stem(b), (a, b)
    assert stem("class") == "class" and stem("bus") == "bus" and stem("dressed") == "dress"


def test_bm25_matches_a_plural_question_to_a_singular_turn() -> None:
    index = LexicalIndex()
    index.add(terms("Nate: I took my turtle to the beach"))
    index.add(terms("Joanna: The beach was lovely"))
    scores = index.scores(terms("How many turtles does Nate have?"))
    assert int(np.argmax(scores)) == 0 and scores[0] > scores[1] == 0


def test_bm25_prefers_the_document_sharing_rare_terms() -> None:
    index = LexicalIndex()
    for doc in DOCS:
        index.add(terms(doc))
    scores = index.scores(terms("Which instrument does Bob's sister play?"))
    assert int(np.argmax(scores)) == 1
    assert not index.scores(terms("zebra")).any() and len(index.scores([])) == len(DOCS)


def test_bm25_scores_follow_the_formula() -> None:
    index = LexicalIndex(k1=1.2, b=0.5)
    index.add(["cat", "cat", "dog"])
    index.add(["dog"])
    avg = 2.0
    idf = math.log(1 + (2 - 1 + 0.5) / (1 + 0.5))
    want = idf * 2 * 2.2 / (2 + 1.2 * (1 - 0.5 + 0.5 * 3 / avg))
    assert index.scores(["cat"]).tolist() == [pytest.approx(want), 0.0]


def test_named_speaker_needs_exactly_one_name() -> None:
    assert named_speaker("What did alice adopt?", {"Alice", "Bob"}) == "Alice"
    assert named_speaker("Did Alice meet Bob?", {"Alice", "Bob"}) is None
    assert named_speaker("Where was it?", {"Alice", "Bob"}) is None


def _vector_scores(query: str) -> dict[int, float]:
    emb = FakeEmbedder()
    docs, q = emb.embed_sync(DOCS), emb.embed_sync([query])[0]
    return {seq: float(v) for seq, v in enumerate(docs @ q, start=1)}


def test_fusion_ranks_the_turn_both_signals_agree_on_first() -> None:
    cands = _candidates((seq, seq, "") for seq in range(1, 5))  # separate days: no spreading
    query = "Alice adopted a puppy"
    index = LexicalIndex()
    for doc in DOCS:
        index.add(terms(doc))
    ranked = fuse(cands, aligned(cands, _vector_scores(query), None), index.scores(terms(query)))
    assert ranked.top(2)[0][0] == 1
    assert ranked.score[0] > ranked.score[1]


def test_lexical_signal_alone_still_ranks_when_there_are_no_vectors() -> None:
    cands = _candidates((seq, seq, "") for seq in range(1, 5))
    ranked = fuse(cands, aligned(cands, {}, None), aligned(cands, {3: 2.0}, 0.0))
    assert ranked.seq[0] == 3


def test_speaker_bonus_breaks_a_tie_towards_the_named_speaker() -> None:
    cands = _candidates([(1, 1, "Alice"), (2, 2, "Bob")])
    weights = RecallWeights(neighbour_drop=10.0, day=0.0)
    tie, none = np.array([0.5, 0.5]), np.zeros(2)
    assert fuse(cands, tie, none, "Bob", weights).seq[0] == 2
    assert fuse(cands, tie, none, "Alice", weights).seq[0] == 1
    assert fuse(cands, tie, none, "Carol", weights).score.tolist() == [0.0, 0.0]


def test_a_turn_inherits_its_same_day_neighbours_score_but_not_across_days() -> None:
    same_day = _candidates([(1, 7, ""), (2, 7, ""), (3, 8, ""), (4, 9, "")])
    weights = RecallWeights(lexical=1.0, day=0.0, neighbour_drop=0.5)
    lexical = aligned(same_day, {1: 9.0}, 0.0)
    ranked = dict(fuse(same_day, np.zeros(4), lexical, None, weights).top(4))
    assert ranked[2] > ranked[3]  # 2 follows the hit on its day; 3 is another day
    assert ranked[3] == ranked[4]


def test_day_strength_is_the_mean_of_the_days_best_turns() -> None:
    days = np.array([1, 1, 2])
    assert list(day_strength(days, np.array([1.0, 3.0, 5.0]), top=1)) == [3.0, 3.0, 5.0]
    assert list(day_strength(days, np.array([1.0, 3.0, 5.0]), top=2)) == [2.0, 2.0, 5.0]


def test_day_strength_agrees_with_a_direct_mean_on_unsorted_days() -> None:
    rng = np.random.default_rng(7)
    days, score = rng.integers(0, 9, 200), rng.normal(size=200)
    got = day_strength(days, score, top=3)
    for day in np.unique(days):
        best = np.sort(score[days == day])[::-1][:3]
        assert np.allclose(got[days == day], best.mean())


def test_aligned_scores_skip_seqs_that_are_not_candidates() -> None:
    cands = _candidates([(2, 1, ""), (5, 1, ""), (9, 2, "")])
    assert aligned(cands, {5: 0.7, 6: 0.9, 11: 1.0}, None).tolist() == [0.7, 0.7, 0.7]
    assert aligned(cands, {9: 0.5, 2: 0.1}, None).tolist() == [0.1, 0.1, 0.5]
    assert aligned(cands, {}, 0.0).tolist() == [0.0, 0.0, 0.0]


def test_candidate_views_survive_the_table_growing() -> None:
    table = CandidateTable()
    for seq in range(1, 4):
        table.append(seq, seq // 2, "Ann" if seq % 2 else "Bo")
    early = table.upto(2)
    for seq in range(4, 2000):
        table.append(seq, seq // 2, "Ann")
    assert early.seq.tolist() == [1, 2] and early.spoken_by("Bo").tolist() == [False, True]
    assert len(table.upto(1500)) == 1500 and table.upto(None).seq[-1] == 1999


def test_zscores_of_a_constant_signal_are_zero() -> None:
    assert list(zscores(np.array([2.0, 2.0]))) == [0.0, 0.0]
