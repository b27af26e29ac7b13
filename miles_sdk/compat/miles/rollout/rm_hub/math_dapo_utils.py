"""Shim of ``miles.rollout.rm_hub.math_dapo_utils``: DAPO's ``compute_score`` and its helpers.

Built on miles_sdk's dapo grader (``Answer:`` in the last 300 characters, Minerva normalisation,
integer ground truths); the helper names Miles's tests import are provided with Miles's contracts.
"""

from __future__ import annotations

from typing import Any

from miles_sdk.compat.miles.rollout.rm_hub.math_utils import last_boxed_only_string
from miles_sdk.rewards._extract import last_boxed_content
from miles_sdk.rewards.dapo import dapo_extract, dapo_reward, dapo_score_answer, minerva_normalize

__all__ = [
    "compute_score",
    "is_correct_minerva",
    "is_correct_strict_box",
    "last_boxed_only_string",
    "normalize_final_answer",
    "remove_boxed",
]

_TAIL_CHARS = 300  # DAPO grades only the end of the response (the longest MATH answer is shorter)


def remove_boxed(s: str) -> str:
    """``"\\boxed{x}"`` -> ``"x"``; an AssertionError when ``s`` is not one box (as in Miles)."""
    left = "\\boxed{"
    assert s[: len(left)] == left and s[-1] == "}", f"box error: {s}"
    return s[len(left) : -1]


def normalize_final_answer(final_answer: str) -> str:
    """Minerva's final-answer normal form (``"x = 42"`` -> ``"42"``, ``"\\frac12"`` -> ``"\\frac{1}{2}"``)."""
    return minerva_normalize(final_answer)


def is_correct_minerva(
    solution_str: str, gt: str, gt_need_extract: bool = False, answer_pattern: str | None = None
) -> tuple[bool, str]:
    """``(correct, normalised prediction)``: the last ``Answer:`` of the solution against ``gt``
    (its boxed content with ``gt_need_extract``), both Minerva-normalised."""
    answer = dapo_extract(solution_str)
    pred = minerva_normalize(answer) if answer is not None else "[INVALID]"
    truth_text = (last_boxed_content(gt) or "") if gt_need_extract else gt
    return pred == minerva_normalize(truth_text), pred


def is_correct_strict_box(
    pred: str, gt: str, pause_tokens_index: list[int] | None = None
) -> tuple[int, str | None]:
    """``(1 | -1, boxed content)``: the last 100 characters' box against ``gt`` (exact text)."""
    boxed = last_boxed_content(pred[-100:])
    return (1 if boxed == gt else -1), boxed


def compute_score(
    solution_str: str,
    ground_truth: Any,
    strict_box_verify: bool = False,
    pause_tokens_index: list[int] | None = None,
) -> dict[str, Any]:
    """``{"score": 1.0 | -1.0, "acc": bool, "pred": str}``: the last ``Answer:`` (or, with
    ``strict_box_verify``, the last ``\\boxed{}``) of the response's tail against an integer label.
    ``pause_tokens_index`` is accepted for signature compatibility and ignored."""
    if strict_box_verify:
        return dapo_score_answer(last_boxed_content(solution_str[-_TAIL_CHARS:]), ground_truth)
    return dapo_reward(solution_str, ground_truth)
