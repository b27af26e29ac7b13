"""Shim of ``miles.rollout.rm_hub.math_utils``: boxed-answer extraction and math grading.

Grading is miles_sdk's ``grade_math_answer`` (string rules, then math-verify with exact decimals),
not Miles's mathd + sympy pair; see docs/rewards.md for where verdicts can differ. The helper
names Miles's own tests import (``last_boxed_only_string``, ``remove_boxed``, ``_normalize``,
``grade_answer_mathd``, ``grade_answer_sympy``) are provided with Miles's contracts.
"""

from __future__ import annotations

from typing import Any

from miles_sdk.rewards._extract import _find_last_box, last_boxed_content
from miles_sdk.rewards.math import grade_math_answer, normalize_math_answer

__all__ = [
    "extract_answer",
    "extract_boxed_answer",
    "grade_answer_mathd",
    "grade_answer_sympy",
    "grade_answer_verl",
    "last_boxed_only_string",
    "remove_boxed",
]

_BOXES = ("\\boxed", "\\fbox")


def last_boxed_only_string(string: str) -> str | None:
    """The last ``\\boxed{...}`` / ``\\fbox{...}`` of ``string`` itself, command included; None without one."""
    idx = _find_last_box(string)
    content = last_boxed_content(string) if idx >= 0 else None
    if content is None:
        return None
    command = next(c for c in _BOXES if string.startswith(c, idx))
    return f"{command}{{{content}}}"


def remove_boxed(s: str) -> str | None:
    """``"\\boxed{x}"`` -> ``"x"``; None when ``s`` is not one box."""
    for command in _BOXES:
        if s.startswith(command + "{") and s.endswith("}"):
            return s[len(command) + 1 : -1]
    return None


def extract_boxed_answer(solution: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}``; None when there is none."""
    return last_boxed_content(solution)


def extract_answer(passage: str) -> str | None:
    """The last boxed answer of ``passage``, or None when it holds no ``\\boxed``."""
    if "\\boxed" not in passage and "\\fbox" not in passage:
        return None
    return last_boxed_content(passage)


def _normalize(expr: str | None) -> str | None:
    """The normal form answers are compared in (units, ``$``, ``%``, ``\\text{}``, thousands commas
    and spaces dropped; lower case); None stays None."""
    if expr is None:
        return None
    return normalize_math_answer(expr)


def grade_answer_mathd(given_answer: str, ground_truth: str) -> bool:
    """Equal normal forms (no symbolic check)."""
    if not given_answer or not ground_truth:
        return False
    return _normalize(given_answer) == _normalize(ground_truth)


def grade_answer_sympy(given_answer: str, ground_truth: str | None) -> bool:
    """Equal normal forms, or equal values (element-wise for tuples)."""
    if ground_truth is None or not given_answer:
        return False
    return grade_math_answer(given_answer, ground_truth)


def grade_answer_verl(solution_str: str, ground_truth: Any) -> bool:
    """True when the last boxed answer of ``solution_str`` equals ``ground_truth`` (which may be a
    number or hold a ``\\boxed{}``). No box, or an empty ground truth, is False."""
    if not ground_truth:
        return False
    truth = str(ground_truth)
    if "\\boxed" in truth:
        truth = extract_answer(truth) or ""
    return grade_math_answer(extract_answer(solution_str), truth)
