"""``rm_type=deepscaler``: grade only the final part of a reasoning response.

The graded text is what follows the last ``</think>`` (or the first ``###Response``); a response
with neither marker scores 0, since an unfinished thought must not be rewarded. That text is then
graded like ``math``: its last ``\\boxed{}`` against the label.
"""

from __future__ import annotations

from typing import Any

from miles_sdk.rewards._extract import last_boxed_content, text_after_think_marker
from miles_sdk.rewards.math import grade_math_answer

__all__ = ["deepscaler_extract", "deepscaler_reward"]


def deepscaler_extract(response: str) -> str | None:
    """The boxed answer of the text after the thinking; None when a marker or box is missing."""
    final = text_after_think_marker(response)
    return None if final is None else last_boxed_content(final)


def deepscaler_reward(response: str, label: Any, float_rounding: int | None = None) -> float:
    """1.0 when the final part's last ``\\boxed{}`` equals ``label``, else 0.0 (exact unless
    ``float_rounding`` is set, see :func:`~miles_sdk.rewards.math.grade_math_answer`)."""
    return 1.0 if grade_math_answer(deepscaler_extract(response), label, float_rounding) else 0.0
