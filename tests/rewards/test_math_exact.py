"""math / deepscaler grade decimals exactly, as Miles does; tolerance only on request (issue 15.2)."""

from __future__ import annotations

import asyncio

import pytest

from miles_sdk.config import Config
from miles_sdk.rewards import compute_builtin_reward, grade_math_answer
from miles_sdk.rewards.deepscaler import deepscaler_reward
from miles_sdk.types import Sample

NEAR_MISSES = [
    ("\\frac{1}{3}", "0.3333333333"),  # (given, truth): a fraction for a rounded decimal truth
    ("0.333333", "\\frac{1}{3}"),
    ("3.14159265", "\\pi"),
    ("1.4142136", "\\sqrt{2}"),
]
EXACT_EQUALS = [
    ("0.5", "\\frac12"),
    ("\\frac{1}{2}", "0.5"),
    ("0.1", "\\frac{1}{10}"),
    ("2.50", "2.5"),
    ("0.25x", "\\frac{x}{4}"),
]


@pytest.mark.parametrize(("given", "truth"), NEAR_MISSES)
def test_rounded_decimals_are_not_equal_by_default(given: str, truth: str) -> None:
    assert not grade_math_answer(given, truth)


@pytest.mark.parametrize(("given", "truth"), NEAR_MISSES)
def test_float_rounding_is_the_explicit_tolerance(given: str, truth: str) -> None:
    assert grade_math_answer(given, truth, float_rounding=6)


@pytest.mark.parametrize(("given", "truth"), EXACT_EQUALS)
def test_exactly_equal_decimals_still_match(given: str, truth: str) -> None:
    assert grade_math_answer(given, truth)


@pytest.mark.parametrize("workers", [0, 1])
def test_config_math_float_rounding_reaches_the_grader(workers: int) -> None:
    def score(rounding: int | None, rm_type: str, response: str) -> object:
        args = Config(rm_type=rm_type, math_float_rounding=rounding, reward_num_workers=workers)
        return asyncio.run(compute_builtin_reward(args, Sample(label="\\frac{1}{3}", response=response)))

    boxed = "so \\boxed{0.3333333333}"
    assert score(None, "math", boxed) == 0.0
    assert score(6, "math", boxed) == 1.0
    thought = "</think> so \\boxed{0.3333333333}"
    assert score(None, "deepscaler", thought) == 0.0
    assert score(6, "deepscaler", thought) == 1.0
    assert deepscaler_reward(thought, "\\frac13") == 0.0 and deepscaler_reward(thought, "\\frac13", 6) == 1.0
