"""Reward failures through the Trainer (issue 16.9): groups kept without failed samples where the
estimator allows, rollout/reward_failed_frac, and a run stopped when the reward keeps failing."""

from __future__ import annotations

from typing import Any

import pytest

from miles_sdk import Config, Sample
from miles_sdk.rollout.default import RolloutError, can_leave_out_failed
from miles_sdk.testing import run_steps, small_config


async def _fails_on_every_other(args: Config, sample: Sample) -> float:
    if (sample.index or 0) % 2 == 0:
        raise ConnectionError("reward server went away")
    return float((sample.index or 0) % 4 == 1)


def _config(**kw: Any) -> Config:
    base: dict[str, Any] = {"n_samples_per_prompt": 4, "rollout_trim_samples": False}
    return small_config(**(base | kw))


def test_group_kept_without_its_failed_samples() -> None:
    result = run_steps({"reward_model": _fails_on_every_other}, steps=1, config=_config(reward_leave_out_failed=True))
    metrics = result.metrics[0]
    assert metrics["rollout/reward_failed_frac"] == pytest.approx(0.5)
    assert metrics["rollout/groups_kept_without_failed"] == 2.0
    assert metrics.get("rollout/dropped_groups/reward_failed", 0.0) == 0.0
    assert all(s.status is not Sample.Status.FAILED for s in result.samples[0])


async def _fails_in_the_first_group(args: Config, sample: Sample) -> float:
    if (sample.index or 0) in (0, 2):
        raise ConnectionError("reward server went away")
    return float((sample.index or 0) % 2)


def test_without_leave_out_the_group_is_dropped_and_the_fraction_reported() -> None:
    result = run_steps({"reward_model": _fails_in_the_first_group}, steps=1, config=_config())
    metrics = result.metrics[0]
    assert metrics["rollout/dropped_groups/reward_failed"] == 1.0
    finished = metrics["rollout/groups_drawn"] * 4 if "rollout/groups_drawn" in metrics else None
    assert 0.0 < metrics["rollout/reward_failed_frac"] <= 2 / 12  # 2 failed of at least 3 finished groups
    assert finished is None or finished >= 12


def test_run_stops_when_failures_stay_above_the_threshold() -> None:
    cfg = _config(reward_leave_out_failed=True, reward_max_failed_frac=0.3, reward_failed_patience=2)
    with pytest.raises(RolloutError, match=r"reward_max_failed_frac=0.3 of the samples for 2 steps in a row"):
        run_steps({"reward_model": _fails_on_every_other}, steps=3, config=cfg)


@pytest.mark.parametrize(
    ("estimator", "scored", "allowed"),
    [("grpo", 2, True), ("grpo", 1, False), ("gspo", 1, False), ("reinforce_plus_plus", 1, True), ("ppo", 1, True)],
)
def test_which_estimators_allow_leaving_out(estimator: str, scored: int, allowed: bool) -> None:
    args = Config(advantage_estimator=estimator, reward_leave_out_failed=True, global_batch_size=2)  # type: ignore[arg-type]
    assert can_leave_out_failed(args, scored) is allowed
    assert not can_leave_out_failed(Config(advantage_estimator=estimator), scored)  # type: ignore[arg-type]


def test_leave_out_with_full_batch_trimming_is_refused() -> None:
    with pytest.raises(ValueError, match="disable-rollout-trim-samples"):
        Config(reward_leave_out_failed=True)
