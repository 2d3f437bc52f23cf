"""Lexical matching: BM25 over stored turns, as an in-process cache derived from Redis."""

from __future__ import annotations

import math
import re
from array import array
from collections import Counter
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]

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


class LexicalIndex:
    """BM25 over documents numbered in the order they are added; documents are never edited."""

    def __init__(self, k1: float = BM25_K1, b: float = BM25_B) -> None:
        self.k1, self.b = k1, b
        self._postings: dict[str, tuple[array[int], array[float]]] = {}  # positions, counts
        self._lengths: array[float] = array("d")
        self._total = 0

    def __len__(self) -> int:
        return len(self._lengths)

    def add(self, doc_terms: Iterable[str]) -> None:
        """Index the next document."""
        position = len(self._lengths)
        counts = Counter(doc_terms)
        for term, n in counts.items():
            positions, tfs = self._postings.setdefault(term, (array("q"), array("d")))
            positions.append(position)
            tfs.append(n)
        length = sum(counts.values())
        self._lengths.append(length)
        self._total += length

    def scores(self, query_terms: Iterable[str]) -> Floats:
        """BM25 score of every document, by position (0 where no query term occurs)."""
        n_docs = len(self._lengths)
        out = np.zeros(n_docs, dtype=np.float64)
        if not n_docs:
            return out
        avg = self._total / n_docs or 1.0
        # copies, not views: a view would pin the arrays' buffers against later appends
        norm = self.k1 * (1 - self.b + self.b * np.array(self._lengths, dtype=np.float64) / avg)
        for term in set(query_terms):
            postings = self._postings.get(term)
            if postings is None:
                continue
            positions = np.array(postings[0], dtype=np.int64)
            tf = np.array(postings[1], dtype=np.float64)
            idf = math.log(1 + (n_docs - positions.size + 0.5) / (positions.size + 0.5))
            out[positions] += idf * tf * (self.k1 + 1) / (tf + norm[positions])
        return out
