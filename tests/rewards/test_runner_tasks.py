"""score_samples with an ``async def`` reward (issue 21): no task per sample for rewards that do
not suspend, and for those that do, the same behaviour as a task per sample: they wait together,
each in its own task and context, under its own reward_timeout."""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import Any

from miles_sdk.config import Config
from miles_sdk.rewards import score_samples
from miles_sdk.types import RewardValue, Sample

_seen: contextvars.ContextVar[str] = contextvars.ContextVar("_seen", default="caller")


def _samples(n: int) -> list[Sample]:
    return [Sample(index=i, response=f"r{i}", label="1") for i in range(n)]


async def _count_tasks(coro: Any) -> int:
    loop = asyncio.get_running_loop()
    created = 0
    previous = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        nonlocal created
        created += 1
        return asyncio.Task(coro, loop=loop, **kw)

    loop.set_task_factory(counting)
    try:
        await coro
    finally:
        loop.set_task_factory(previous)
    return created


async def test_rewards_that_do_not_suspend_run_without_a_task_per_sample() -> None:
    """The demo's reward (string rules) over a group of 16, with and without reward_timeout: no
    task at all (the old code made one per sample for gather, and one more for wait_for on 3.11)."""
    order: list[int] = []

    async def instant(args: Config, sample: Sample) -> RewardValue:
        order.append(sample.index or 0)
        return float(sample.response == "r3")

    for timeout in (None, 5.0):
        order.clear()
        samples = _samples(16)
        created = await _count_tasks(
            score_samples(Config(reward_timeout=timeout), samples, reward_fn=instant)
        )
        assert created == 0
        assert order == list(range(16))
        assert [s.reward for s in samples] == [1.0 if i == 3 else 0.0 for i in range(16)]


async def test_built_in_rm_types_run_without_a_task_per_sample() -> None:
    samples = [Sample(index=i, response=rf"\boxed{{{i}}}", label="2") for i in range(8)]
    created = await _count_tasks(score_samples(Config(rm_type="math", reward_num_workers=0), samples))
    assert created == 0
    assert [s.reward for s in samples] == [1.0 if i == 2 else 0.0 for i in range(8)]


async def test_suspending_rewards_wait_together_each_in_its_own_task_and_context() -> None:
    """Rewards that await I/O: they overlap (all 8 are waiting at once), a reward sees one task
    from its start to its end (aiohttp's timers and asyncio.timeout cancel the task they were
    entered in), no two rewards share a task, and a context variable a reward sets stays its own."""
    tasks: dict[int, tuple[asyncio.Task[Any] | None, asyncio.Task[Any] | None]] = {}
    waiting: list[int] = []
    most_waiting = 0

    async def waits(args: Config, sample: Sample) -> RewardValue:
        nonlocal most_waiting
        index = sample.index or 0
        assert _seen.get() == "caller"
        _seen.set(f"sample {index}")
        before = asyncio.current_task()
        waiting.append(index)
        most_waiting = max(most_waiting, len(waiting))
        await asyncio.sleep(0.05)
        waiting.remove(index)
        tasks[index] = (before, asyncio.current_task())
        assert _seen.get() == f"sample {index}"
        return 1.0

    samples = _samples(8)
    await score_samples(Config(), samples, reward_fn=waits)
    assert most_waiting == 8  # one after another: 1
    assert [s.reward for s in samples] == [1.0] * 8
    assert all(before is after and before is not None for before, after in tasks.values())
    assert len({id(before) for before, _ in tasks.values()}) == 8
    assert _seen.get() == "caller"


async def test_a_timeout_counts_from_the_reward_start_and_fails_only_that_sample() -> None:
    """A reward that holds the loop 0.15 s and then waits: reward_timeout=0.2 s counts from its start
    (the held stretch included), and the samples after it are scored meanwhile."""

    async def slow_first(args: Config, sample: Sample) -> RewardValue:
        if sample.index == 0:
            time.sleep(0.15)  # noqa: ASYNC251 - a stretch that holds the loop, part of the timed call
            await asyncio.sleep(0.1)  # past the 0.2 s deadline
        elif sample.index == 1:
            await asyncio.sleep(0.02)
        return 1.0

    samples = _samples(4)
    await score_samples(Config(reward_timeout=0.2), samples, reward_fn=slow_first)
    assert samples[0].status is Sample.Status.FAILED
    assert "timed out after reward_timeout=0.2s" in samples[0].metadata["reward_error"]
    assert [s.reward for s in samples[1:]] == [1.0] * 3


async def test_a_cancelled_scoring_cancels_every_started_reward() -> None:
    cancelled: list[int] = []
    started = asyncio.Event()

    async def hangs(args: Config, sample: Sample) -> RewardValue:
        try:
            if sample.index == 2:
                started.set()
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(sample.index or 0)
            raise
        return 1.0

    scoring = asyncio.ensure_future(score_samples(Config(), _samples(3), reward_fn=hangs))
    await asyncio.wait_for(started.wait(), 5)
    scoring.cancel()
    await asyncio.gather(scoring, return_exceptions=True)
    await asyncio.sleep(0)  # the spawned runs see their cancellation
    assert sorted(cancelled) == [0, 1, 2]
