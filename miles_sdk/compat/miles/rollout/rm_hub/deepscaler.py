"""Shim of ``miles.rollout.rm_hub.deepscaler``: the boxed answer after the thinking, graded as math."""

from __future__ import annotations

from typing import Any

from miles_sdk.rewards.deepscaler import deepscaler_reward

__all__ = ["get_deepscaler_rule_based_reward"]


def get_deepscaler_rule_based_reward(response: str, label: Any) -> int:
    """1 when the boxed answer after ``</think>`` (or ``###Response``) equals ``label``, else 0."""
    return int(deepscaler_reward(response, label))
