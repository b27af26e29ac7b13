"""The progress bar shows what says a run learns, not the GRPO loss (~1e-8 by construction; issue 13.14)."""

from __future__ import annotations

import logging

import pytest

from miles_sdk.logging.progress import Progress
from miles_sdk.testing import small_config
from miles_sdk.types import Metrics

STEP: Metrics = {
    "rollout/reward_mean": 0.4375,
    "rollout/response_len_mean": 2.25,
    "rollout/num_samples": 64.0,
    "rollout/reward_failed": 0.0,
    "train/loss": 3.1e-9,
    "train/grad_norm": 0.01234,
    "train/approx_kl": 2.5e-4,
    "perf/rollout_time": 0.25,
    "perf/train_time": 0.5,
}


def _bar_text(metrics: Metrics, capsys: pytest.CaptureFixture[str]) -> str:
    with Progress(small_config(progress_bar=True), total=3) as progress:
        progress.update(metrics)
    return capsys.readouterr().err.rsplit("\r", 1)[-1]


def test_bar_shows_reward_length_grad_kl_and_step_time_not_loss(capsys: pytest.CaptureFixture[str]) -> None:
    text = _bar_text(STEP, capsys)
    for shown in ("reward=0.438", "len=2.2", "grad=0.0123", "kl_old=0.00025", "s_per_step=0.8"):
        assert shown in text, (shown, text)
    assert "loss" not in text
    assert "failed" not in text  # only when a reward failed


def test_bar_shows_kl_to_the_reference_and_failed_rewards(capsys: pytest.CaptureFixture[str]) -> None:
    text = _bar_text(STEP | {"train/kl_loss": 0.0312, "rollout/reward_failed": 16.0, "eval/gsm8k": 0.5}, capsys)
    assert "kl=0.0312" in text and "kl_old" not in text
    assert "failed=0.25" in text
    assert "gsm8k=0.500" in text


def test_without_a_bar_each_step_logs_the_same_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="miles_sdk.logging.progress")
    with Progress(small_config(progress_bar=False), total=3) as progress:
        progress.update(STEP)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("rollout 1: reward=0.438 len=2.2 grad=0.0123 kl_old=0.00025")
    assert "loss" not in line
