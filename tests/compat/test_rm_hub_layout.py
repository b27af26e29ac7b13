"""Miles's rm_hub module layout under the shims (issue 15.8); Miles's own tests are in miles_rm_hub_tests/."""

from __future__ import annotations

import asyncio
import importlib

import pytest

from miles_sdk.compat import install
from miles_sdk.config import Config
from miles_sdk.rewards import compute_builtin_reward
from miles_sdk.types import RewardSpec, Sample

install()


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("miles.rollout.rm_hub", ["_resolve_reward_config", "async_rm", "batched_async_rm"]),
        ("miles.rollout.rm_hub.f1", ["f1_score", "normalize_answer"]),
        ("miles.rollout.rm_hub.gpqa", ["compute_gpqa_reward", "_extract_letter_from_response", "_normalize_text"]),
        ("miles.rollout.rm_hub.deepscaler", ["get_deepscaler_rule_based_reward"]),
        ("miles.rollout.rm_hub.math_dapo_utils", ["compute_score", "is_correct_minerva", "normalize_final_answer"]),
        ("miles.rollout.rm_hub.math_utils", ["_normalize", "grade_answer_mathd", "grade_answer_sympy"]),
        ("miles.utils.types", ["RewardSpec", "Sample"]),
    ],
)
def test_miles_rm_hub_names_import(module: str, names: list[str]) -> None:
    loaded = importlib.import_module(module)
    assert all(hasattr(loaded, name) for name in names)


def test_reward_spec_rm_type_wins_in_the_sdk_grader() -> None:
    sample = Sample(response="\\boxed{4}", label="4", metadata={"rm_type": "f1"}, reward_spec=RewardSpec(rm_type="math"))
    assert asyncio.run(compute_builtin_reward(Config(rm_type="gpqa"), sample)) == 1.0
