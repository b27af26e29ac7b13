"""Shim of ``miles.rollout.rm_hub.math_dapo_utils``: DAPO's ``compute_score``."""

from __future__ import annotations

from typing import Any

from miles_sdk.rewards._extract import last_boxed_content
from miles_sdk.rewards.dapo import dapo_reward, dapo_score_answer

__all__ = ["compute_score"]

_TAIL_CHARS = 300  # DAPO grades only the end of the response (the longest MATH answer is shorter)


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
