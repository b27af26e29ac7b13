"""Shim of ``miles.rollout.rm_hub.math_utils``: boxed-answer extraction and math grading.

Grading is miles_sdk's ``grade_math_answer`` (string rules, then math-verify), not Miles's
mathd + sympy pair; see docs/rewards.md for where verdicts can differ.
"""

from __future__ import annotations

from typing import Any

from miles_sdk.rewards._extract import last_boxed_content
from miles_sdk.rewards.math import grade_math_answer

__all__ = ["extract_answer", "extract_boxed_answer", "grade_answer_verl"]


def extract_boxed_answer(solution: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}``; None when there is none."""
    return last_boxed_content(solution)


def extract_answer(passage: str) -> str | None:
    """The last boxed answer of ``passage``, or None when it holds no ``\\boxed``."""
    if "\\boxed" not in passage:
        return None
    return last_boxed_content(passage)


def grade_answer_verl(solution_str: str, ground_truth: Any) -> bool:
    """True when the last boxed answer of ``solution_str`` equals ``ground_truth`` (which may be a
    number or hold a ``\\boxed{}``). No box, or an empty ground truth, is False."""
    if not ground_truth:
        return False
    truth = str(ground_truth)
    if "\\boxed" in truth:
        truth = extract_answer(truth) or ""
    return grade_math_answer(extract_answer(solution_str), truth)
