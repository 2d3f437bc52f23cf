"""Ranking: BM25, speaker naming and fusion over a text-dependent fake embedder."""

from __future__ import annotations

import numpy as np

from memory.lexical import LexicalIndex, stem, terms
from memory.recall import Candidate, RecallWeights, day_strength, fuse, named_speaker, zscores
from tests.fakes import FakeEmbedder

DOCS = [
    "Alice: I adopted a puppy named Biscuit last week",
    "Bob: My sister plays the violin in an orchestra",
    "Alice: We went hiking in the mountains near Denver",
    "Bob: The weather has been rainy all month",
]


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
    index.add(1, terms("Nate: I took my turtle to the beach"))
    index.add(2, terms("Joanna: The beach was lovely"))
    scores = index.scores(terms("How many turtles does Nate have?"))
    assert max(scores, key=lambda s: scores[s]) == 1


def test_bm25_prefers_the_document_sharing_rare_terms() -> None:
    index = LexicalIndex()
    for seq, doc in enumerate(DOCS, start=1):
        index.add(seq, terms(doc))
    scores = index.scores(terms("Which instrument does Bob's sister play?"))
    assert max(scores, key=lambda s: scores[s]) == 2
    assert index.scores(terms("zebra")) == {}


def test_named_speaker_needs_exactly_one_name() -> None:
    assert named_speaker("What did alice adopt?", {"Alice", "Bob"}) == "Alice"
    assert named_speaker("Did Alice meet Bob?", {"Alice", "Bob"}) is None
    assert named_speaker("Where was it?", {"Alice", "Bob"}) is None


def _vector_scores(query: str) -> dict[int, float]:
    emb = FakeEmbedder()
    docs, q = emb.embed_sync(DOCS), emb.embed_sync([query])[0]
    return {seq: float(v) for seq, v in enumerate(docs @ q, start=1)}


def test_fusion_ranks_the_turn_both_signals_agree_on_first() -> None:
    cands = [Candidate(seq, day=seq) for seq in range(1, 5)]  # separate days: no spreading
    query = "Alice adopted a puppy"
    index = LexicalIndex()
    for seq, doc in enumerate(DOCS, start=1):
        index.add(seq, terms(doc))
    ranked = fuse(cands, _vector_scores(query), index.scores(terms(query)))
    assert ranked[0][0] == 1
    assert ranked[0][1] > ranked[1][1]


def test_lexical_signal_alone_still_ranks_when_there_are_no_vectors() -> None:
    cands = [Candidate(seq, day=seq) for seq in range(1, 5)]
    ranked = fuse(cands, {}, {3: 2.0})
    assert ranked[0][0] == 3


def test_speaker_bonus_breaks_a_tie_towards_the_named_speaker() -> None:
    cands = [Candidate(1, 1, "Alice"), Candidate(2, 2, "Bob")]
    weights = RecallWeights(neighbour_drop=10.0, day=0.0)
    assert fuse(cands, {1: 0.5, 2: 0.5}, {}, "Bob", weights)[0][0] == 2
    assert fuse(cands, {1: 0.5, 2: 0.5}, {}, "Alice", weights)[0][0] == 1


def test_a_turn_inherits_its_same_day_neighbours_score_but_not_across_days() -> None:
    same_day = [Candidate(1, 7), Candidate(2, 7), Candidate(3, 8), Candidate(4, 9)]
    weights = RecallWeights(lexical=1.0, day=0.0, neighbour_drop=0.5)
    ranked = dict(fuse(same_day, {}, {1: 9.0}, None, weights))
    assert ranked[2] > ranked[3]  # 2 follows the hit on its day; 3 is another day
    assert ranked[3] == ranked[4]


def test_day_strength_is_the_mean_of_the_days_best_turns() -> None:
    cands = [Candidate(1, 1), Candidate(2, 1), Candidate(3, 2)]
    got = day_strength(cands, np.array([1.0, 3.0, 5.0]), top=1)
    assert list(got) == [3.0, 3.0, 5.0]


def test_zscores_of_a_constant_signal_are_zero() -> None:
    assert list(zscores(np.array([2.0, 2.0]))) == [0.0, 0.0]
