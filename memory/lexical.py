"""Lexical matching: BM25 over stored turns, as an in-process cache derived from Redis."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

BM25_K1 = 1.5
BM25_B = 0.75
_WORD_RE = re.compile(r"[a-z0-9]+")
_SUFFIXES = ("ing", "ed", "ly")
_MIN_STEM = 3
_VOWELS = frozenset("aeiou")
_DOUBLES_KEPT = frozenset("lsz")  # 'fall', 'dress', 'buzz' keep their double consonant
STOPWORDS = frozenset(
    """a an the and or but if of to in on at by for with about as into from is are was were be
    been being do does did done have has had i me my you your he she it its we our they them their
    his her him what which who whom when where why how that this these those there here not no so
    than too very can will would should could just also any some all more most other such only own
    same s t don now get got go went going like really""".split()  # noqa: SIM905
)


def stem(word: str) -> str:
    """A light stem that joins plurals and -ing/-ed forms with their base word: 'turtles' and
    'turtle', 'cities' and 'city', 'painted', 'painting' and 'paint', 'baking' and 'bake'."""
    word = _singular(word)
    for suffix in _SUFFIXES:
        if len(word) >= len(suffix) + _MIN_STEM and word.endswith(suffix):
            word = word[: -len(suffix)]
            if (
                len(word) > _MIN_STEM
                and word[-1] == word[-2]
                and word[-1] not in _VOWELS | _DOUBLES_KEPT
            ):
                word = word[:-1]  # running -> run
            break
    if len(word) > _MIN_STEM and word[-1] in "ey":  # bake/bak(ing), city/citi(es), movie/movi(es)
        word = word[:-1] + ("i" if word[-1] == "y" else "")
    return word


def _singular(word: str) -> str:
    """Harman's S-stemmer: -ies to -y, -es to -e, -s dropped (not -us, -ss, -is)."""
    if len(word) > _MIN_STEM + 1 and word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if len(word) > _MIN_STEM and word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if len(word) > _MIN_STEM and word.endswith("s") and not word.endswith(("us", "ss", "is")):
        return word[:-1]
    return word


def terms(text: str) -> list[str]:
    """The index terms of a text: lowercased words, stopwords dropped, stemmed."""
    return [stem(w) for w in _WORD_RE.findall(text.lower()) if w not in STOPWORDS]


@dataclass
class LexicalIndex:
    """BM25 over documents keyed by seq; documents are added in seq order and never edited."""

    k1: float = BM25_K1
    b: float = BM25_B
    _postings: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    _lengths: dict[int, int] = field(default_factory=dict)
    _total: int = 0

    def __len__(self) -> int:
        return len(self._lengths)

    def add(self, seq: int, doc_terms: Iterable[str]) -> None:
        """Index one document."""
        counts = Counter(doc_terms)
        for term, n in counts.items():
            self._postings.setdefault(term, []).append((seq, n))
        length = sum(counts.values())
        self._lengths[seq] = length
        self._total += length

    def scores(self, query_terms: Iterable[str]) -> dict[int, float]:
        """BM25 score of every document matching at least one query term."""
        n_docs = len(self._lengths)
        if not n_docs:
            return {}
        avg = self._total / n_docs or 1.0
        out: dict[int, float] = {}
        for term in set(query_terms):
            postings = self._postings.get(term)
            if not postings:
                continue
            idf = math.log(1 + (n_docs - len(postings) + 0.5) / (len(postings) + 0.5))
            for seq, tf in postings:
                norm = tf + self.k1 * (1 - self.b + self.b * self._lengths[seq] / avg)
                out[seq] = out.get(seq, 0.0) + idf * tf * (self.k1 + 1) / norm
        return out
