"""The local knowledge base of the Search-R1 example: documents, questions and a BM25 ranker.

Search-R1 queries a retrieval server (e5 or BM25 over Wikipedia). Here a dozen documents and an
in-process Okapi BM25 stand in for it, so the example runs offline and deterministically.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["BM25", "CORPUS", "QUESTIONS", "tokenize_words"]

CORPUS: tuple[str, ...] = (
    "Paris is the capital and largest city of France.",
    "Berlin is the capital of Germany and its most populous city.",
    "Tokyo is the capital of Japan and the seat of its government.",
    "Canberra is the capital city of Australia.",
    "Ottawa is the capital of Canada, on the Ottawa River.",
    "Mount Everest is the highest mountain on Earth, in the Himalayas.",
    "The Nile is the longest river in Africa.",
    "Water boils at 100 degrees Celsius at sea level.",
    "Jupiter is the largest planet in the Solar System.",
    "Marie Curie won Nobel Prizes in both physics and chemistry.",
    "The Pacific is the largest and deepest ocean on Earth.",
    "The Python programming language was created by Guido van Rossum.",
)
"""Twelve short documents; each question below is answered by exactly one of them."""

QUESTIONS: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Australia?", "Canberra"),
    ("What is the capital of Canada?", "Ottawa"),
    ("What is the highest mountain on Earth?", "Mount Everest"),
    ("Which planet is the largest in the Solar System?", "Jupiter"),
    ("Who created the Python programming language?", "Guido van Rossum"),
)
"""(question, answer) pairs, the example's training prompts and labels."""

_WORD = re.compile(r"[a-z0-9]+")


def tokenize_words(text: str) -> list[str]:
    """Lowercased alphanumeric words: ``"Paris, France!"`` -> ``["paris", "france"]``."""
    return _WORD.findall(text.lower())


class BM25:
    """Okapi BM25 over a fixed list of documents.

    ``score(q, d) = sum over query words t of idf(t) * tf(t, d) * (k1 + 1) /
    (tf(t, d) + k1 * (1 - b + b * len(d) / avgdl))`` with the non-negative
    ``idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))`` (Lucene's form), so a word found in
    every document still counts a little instead of pushing scores below zero.
    """

    def __init__(self, documents: Sequence[str], *, k1: float = 1.5, b: float = 0.75) -> None:
        if not documents:
            raise ValueError("BM25 needs at least one document")
        if k1 < 0 or not 0.0 <= b <= 1.0:
            raise ValueError(f"BM25: need k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.documents = list(documents)
        self.k1, self.b = k1, b
        self._tfs = [Counter(tokenize_words(d)) for d in self.documents]
        self._lengths = [sum(tf.values()) for tf in self._tfs]
        self._avgdl = max(sum(self._lengths) / len(self._lengths), 1e-9)
        n = len(self.documents)
        df = Counter(word for tf in self._tfs for word in tf)
        self._idf = {w: math.log(1.0 + (n - d + 0.5) / (d + 0.5)) for w, d in df.items()}

    def score(self, query: str, index: int) -> float:
        """BM25 score of document ``index`` for ``query`` (repeated query words count again)."""
        tf, length = self._tfs[index], self._lengths[index]
        norm = self.k1 * (1.0 - self.b + self.b * length / self._avgdl)
        total = 0.0
        for word in tokenize_words(query):
            f = tf.get(word, 0)
            if f:
                total += self._idf[word] * f * (self.k1 + 1.0) / (f + norm)
        return total

    def search(self, query: str, k: int = 3) -> list[tuple[int, float]]:
        """The ``k`` best ``(document index, score)`` pairs, best first; documents scoring 0 are
        left out. Ties go to the lower index, so results are deterministic."""
        if k < 1:
            raise ValueError(f"BM25.search: k must be >= 1, got {k}")
        scored = [(i, self.score(query, i)) for i in range(len(self.documents))]
        ranked = sorted((pair for pair in scored if pair[1] > 0.0), key=lambda p: (-p[1], p[0]))
        return ranked[:k]
