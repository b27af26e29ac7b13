"""Shim of ``miles.rollout.rm_hub.f1``: SQuAD-style token F1 (miles_sdk's grader)."""

from __future__ import annotations

from miles_sdk.rewards.f1 import f1_score, squad_normalize

__all__ = ["f1_score", "normalize_answer"]


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace."""
    return squad_normalize(s)
