"""Warnings for steps that cannot teach anything (issue 14 item 4): all groups without reward
spread, all responses truncated, a flat mean reward. Logged once, then every WARN_EVERY steps."""

from __future__ import annotations

import logging

import pytest

from miles_sdk import Config, Sample
from miles_sdk.logging import health
from miles_sdk.logging.health import LearningSignalMonitor
from miles_sdk.testing import run_steps, small_config


def _step(rewards: list[list[float]], status: Sample.Status = Sample.Status.COMPLETED) -> list[Sample]:
    return [
        Sample(group_index=g, index=g * 10 + i, reward=r, status=status)
        for g, group in enumerate(rewards)
        for i, r in enumerate(group)
    ]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "miles_sdk.health"]


def test_no_spread_is_said_once_then_every_n_steps(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "WARN_EVERY", 3)
    monitor = LearningSignalMonitor(small_config())
    with caplog.at_level(logging.WARNING, logger="miles_sdk.health"):
        for step in range(7):
            metrics: dict[str, float] = {}
            assert monitor.observe(step, _step([[0.0, 0.0], [1.0, 1.0]]), metrics) == ["no_spread"]
            assert metrics["rollout/zero_spread_groups_frac"] == 1.0
    said = _warnings(caplog)
    assert len(said) == 3  # steps 0, 3 and 6
    assert "every prompt group has identical rewards" in said[0] and "advantage is 0" in said[0]
    assert "seen on 7 steps" in said[2]


def test_a_step_with_spread_in_one_group_is_fine(caplog: pytest.LogCaptureFixture) -> None:
    monitor = LearningSignalMonitor(small_config())
    metrics: dict[str, float] = {}
    with caplog.at_level(logging.WARNING, logger="miles_sdk.health"):
        assert monitor.observe(0, _step([[0.0, 0.0], [0.0, 1.0]]), metrics) == []
    assert metrics["rollout/zero_spread_groups_frac"] == 0.5
    assert _warnings(caplog) == []


def test_all_truncated_and_flat_reward(caplog: pytest.LogCaptureFixture) -> None:
    monitor = LearningSignalMonitor(small_config(rollout_max_response_len=4))
    with caplog.at_level(logging.WARNING, logger="miles_sdk.health"):
        seen: list[str] = []
        for step in range(health.FLAT_STEPS):
            seen += monitor.observe(step, _step([[0.0, 1.0]], Sample.Status.TRUNCATED), {})
    assert seen.count("all_truncated") == health.FLAT_STEPS
    assert seen.count("flat_reward") == 1  # only once the window is full
    said = "\n".join(_warnings(caplog))
    assert "rollout_max_response_len=4" in said
    assert f"stayed at 0.5 for {health.FLAT_STEPS} steps" in said


def test_other_estimators_warn_only_when_every_reward_is_the_same() -> None:
    monitor = LearningSignalMonitor(small_config(advantage_estimator="reinforce_plus_plus"))
    assert monitor.observe(0, _step([[1.0, 1.0], [0.0, 0.0]]), {}) == []
    assert monitor.observe(1, _step([[0.0, 0.0], [0.0, 0.0]]), {}) == ["no_spread"]


async def _zero(args: Config, sample: Sample) -> float:
    return 0.0


def test_the_trainer_warns_about_a_reward_that_never_varies(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="miles_sdk.health"):
        result = run_steps({"reward_model": _zero}, steps=1)
    assert result.metrics[0]["rollout/zero_spread_groups_frac"] == 1.0
    assert any("every prompt group has identical rewards" in m for m in _warnings(caplog))
