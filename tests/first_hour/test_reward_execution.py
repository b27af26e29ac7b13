"""Plain ``def`` rewards run in a thread pool under ``reward_timeout``; an ``async def`` reward that
blocks the loop is named in a warning (issue 14 item 6)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from miles_sdk import Config, Sample
from miles_sdk.rewards import runner as reward_runner
from miles_sdk.rewards import score_samples
from miles_sdk.rollout import RolloutContext, use_rollout_context
from miles_sdk.testing import ScriptedEngine, small_config, tiny_tokenizer


def _samples(n: int) -> list[Sample]:
    return [Sample(index=i, group_index=i // 2, response=f"{i}<|im_end|>", label=str(i)) for i in range(n)]


def test_plain_def_rewards_run_concurrently() -> None:
    # Four rewards that each wait for the other three: run one after another (as a blocking call
    # on the event loop did), the barrier breaks and every sample fails.
    barrier = threading.Barrier(4, timeout=10)

    def waits_for_the_others(args: Config, sample: Sample) -> float:
        barrier.wait()
        return 1.0

    samples = _samples(4)
    asyncio.run(score_samples(small_config(), samples, reward_fn=waits_for_the_others))
    assert [s.reward for s in samples] == [1.0] * 4


def test_reward_timeout_applies_to_a_plain_def_reward() -> None:
    release = threading.Event()

    def hangs(args: Config, sample: Sample) -> float:
        release.wait(10)
        return 1.0

    samples = _samples(2)
    try:
        asyncio.run(score_samples(small_config(reward_timeout=0.2), samples, reward_fn=hangs))
    finally:
        release.set()
    assert all(s.status is Sample.Status.FAILED for s in samples)
    assert all("timed out after reward_timeout=0.2s" in s.metadata["reward_error"] for s in samples)
    assert all("hangs" in s.metadata["reward_error"] for s in samples)


def test_plain_def_batched_reward_and_the_rollout_tokenizer_reach_the_thread() -> None:
    def batched(args: Config, samples: list[Sample]) -> list[float]:
        return [float(s.response_text() == s.label) for s in samples]

    tok = tiny_tokenizer()
    samples = _samples(3)
    samples[1].label = "nope"
    with use_rollout_context(RolloutContext(engine=ScriptedEngine({}, tokenizer=tok), tokenizer=tok)):
        asyncio.run(score_samples(small_config(), samples, batched_reward_fn=batched))
    assert [s.reward for s in samples] == [1.0, 0.0, 1.0]


def test_async_reward_that_blocks_the_loop_is_named(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(reward_runner, "BLOCKING_WARN_S", 0.05)
    monkeypatch.setattr(reward_runner, "_warned_blocking", set())

    async def sleepy_rm(args: Config, sample: Sample) -> float:
        time.sleep(0.1)  # noqa: ASYNC251 - the mistake under test: a blocking call in async def
        return 1.0

    async def polite_rm(args: Config, sample: Sample) -> float:
        await asyncio.sleep(0.1)
        return 1.0

    with caplog.at_level(logging.WARNING, logger="miles_sdk.rewards.runner"):
        asyncio.run(score_samples(small_config(), _samples(2), reward_fn=polite_rm))
        assert not [r for r in caplog.records if "held the event loop" in r.getMessage()]
        samples = _samples(3)
        asyncio.run(score_samples(small_config(), samples, reward_fn=sleepy_rm))
    warnings = [r.getMessage() for r in caplog.records if "held the event loop" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per hook, not once per sample
    assert "sleepy_rm" in warnings[0] and "plain def" in warnings[0]
    assert [s.reward for s in samples] == [1.0] * 3
