"""``rm_type=f1``: SQuAD token-overlap F1 between the response and the label.

Both sides are SQuAD-normalised (lowercase; punctuation and the articles a/an/the removed;
whitespace collapsed). When either side is ``yes``, ``no`` or ``noanswer``, only an exact match
scores (1.0); a partial overlap with a yes/no answer is worth nothing.
"""

from __future__ import annotations

import re
import string
from collections import Counter

__all__ = ["f1_reward", "f1_score", "squad_normalize"]

_EXACT_ONLY = frozenset({"yes", "no", "noanswer"})
_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def squad_normalize(text: str) -> str:
    """SQuAD's answer normal form: ``"The Cat, sat!"`` -> ``"cat sat"``."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def f1_score(prediction: str | None, truth: str) -> tuple[float, float, float]:
    """``(f1, precision, recall)`` of the normalised token bags; zeros when nothing overlaps."""
    if prediction is None:
        return 0.0, 0.0, 0.0
    pred, gold = squad_normalize(prediction), squad_normalize(truth)
    if (pred in _EXACT_ONLY or gold in _EXACT_ONLY) and pred != gold:
        return 0.0, 0.0, 0.0
    pred_tokens, gold_tokens = pred.split(), gold.split()
    overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0, 0.0, 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall), precision, recall


def f1_reward(response: str | None, label: str) -> float:
    """The F1 score alone, the reward of ``rm_type=f1``."""
    return f1_score(response, label)[0]
