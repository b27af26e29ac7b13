"""Shim of ``miles.rollout.rm_hub.gpqa``: multiple-choice grading by option letter (miles_sdk's grader,
see docs/rewards.md for where it reads responses more strictly than Miles)."""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from typing import Any

from miles_sdk.rewards._extract import strip_think
from miles_sdk.rewards.gpqa import _normalize_text as _sdk_normalize_text
from miles_sdk.rewards.gpqa import extract_choice_letter, gpqa_reward

__all__ = ["DEFAULT_VALID_LETTERS", "compute_gpqa_reward"]

DEFAULT_VALID_LETTERS = list(string.ascii_uppercase[:8])


def _strip_chain_of_thought(text: str | None) -> str:
    """The text after the last ``</think>`` (all of it without one); "" for None."""
    return strip_think(text or "")


def _normalize_text(text: str) -> str:
    return _sdk_normalize_text(text)


def _extract_letter_from_response(response: str | None, valid_letters: Iterable[str]) -> str | None:
    return extract_choice_letter(response or "", valid_letters)


def compute_gpqa_reward(response: str | None, label: Any, metadata: Mapping[str, Any] | None = None) -> float:
    """1.0 when the response picks the correct option, else 0.0."""
    if response is None:
        return 0.0
    return gpqa_reward(response, label, metadata)
