"""score_samples: skipping, batched scoring, per-sample failures; validate_labels."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from miles_sdk.config import Config
from miles_sdk.rewards import RewardLabelError, score_samples, validate_labels
from miles_sdk.types import RewardValue, Sample


def _cfg(**kw: Any) -> Config:
    kw.setdefault("reward_num_workers", 0)
    return Config(**kw)


def _samples(n: int, **kw: Any) -> list[Sample]:
    return [Sample(index=i, response=f"r{i}", label="1", **kw) for i in range(n)]


async def test_builtin_scores_and_skips_scored_aborted_and_failed() -> None:
    scored = Sample(response=r"\boxed{1}", label="1", reward=0.25)
    aborted = Sample(response=r"\boxed{1}", label="1", status=Sample.Status.ABORTED)
    failed = Sample(response=r"\boxed{1}", label="1", status=Sample.Status.FAILED)
    fresh = [Sample(response=r"\boxed{1}", label="1"), Sample(response=r"\boxed{2}", label="1")]
    await score_samples(_cfg(rm_type="math"), [scored, aborted, failed, *fresh])
    assert scored.reward == 0.25
    assert aborted.reward is None and failed.reward is None
    assert [s.reward for s in fresh] == [1.0, 0.0]


async def test_math_equivalence_works_off_the_main_thread() -> None:
    # math-verify's signal timeouts would raise on a worker thread; the grader disables them there.
    samples = [Sample(response=r"\boxed{\frac{\sqrt{2}}{2}}", label=r"\sqrt2/2") for _ in range(4)]
    await score_samples(_cfg(rm_type="math", reward_num_workers=0), samples)
    assert [s.reward for s in samples] == [1.0] * 4


async def test_per_sample_rm_type_from_metadata() -> None:
    samples = [
        Sample(response=r"\boxed{42}", label="42", metadata={"rm_type": "math"}),
        Sample(response="hello", label="hello", metadata={"rm_type": "f1"}),
        Sample(response="Answer: 42", label="42", metadata={"rm_type": "dapo"}),
    ]
    await score_samples(_cfg(rm_type="gpqa", reward_key="score"), samples)
    assert [s.reward for s in samples] == [1.0, 1.0, {"score": 1.0, "acc": True, "pred": "42"}]


async def _raises(args: Config, sample: Sample) -> RewardValue:
    if sample.index == 1:
        raise RuntimeError("grader exploded")
    return 0.5


async def _nan(args: Config, sample: Sample) -> RewardValue:
    return math.nan if sample.index == 0 else 1.0


async def _wrong_type(args: Config, sample: Sample) -> Any:
    return "1.0"


async def _slow(args: Config, sample: Sample) -> RewardValue:
    await asyncio.sleep(30 if sample.index == 0 else 0)
    return 1.0


@pytest.mark.parametrize(
    ("fn", "bad_index", "reason"),
    [
        (_raises, 1, "test_runner._raises: RuntimeError: grader exploded"),
        (_nan, 0, "test_runner._nan: returned nan"),
        (_wrong_type, 0, "test_runner._wrong_type: returned str '1.0'"),
        (_slow, 0, "test_runner._slow: timed out after reward_timeout=0.2s"),
    ],
)
async def test_failures_mark_only_that_sample(fn: Any, bad_index: int, reason: str) -> None:
    samples = _samples(3)
    await score_samples(_cfg(reward_timeout=0.2), samples, reward_fn=fn)
    bad = samples[bad_index]
    assert bad.status is Sample.Status.FAILED and bad.reward is None
    assert reason in bad.metadata["reward_error"]
    if fn is not _wrong_type:
        others = [s for s in samples if s is not bad]
        assert all(s.reward is not None and s.status is Sample.Status.PENDING for s in others)


async def test_dict_reward_must_carry_reward_key() -> None:
    async def reward(args: Config, sample: Sample) -> RewardValue:
        return {"acc": True} if sample.index == 0 else {"score": 1.0}

    samples = _samples(2)
    await score_samples(_cfg(reward_key="score"), samples, reward_fn=reward)
    assert "without reward_key 'score'" in samples[0].metadata["reward_error"]
    assert samples[1].reward == {"score": 1.0}


async def test_unknown_builtin_type_fails_the_sample_with_the_reason() -> None:
    samples = [Sample(response="x", label="x", metadata={"rm_type": "nope"})]
    await score_samples(_cfg(rm_type="math"), samples)
    assert samples[0].status is Sample.Status.FAILED
    assert samples[0].metadata["reward_error"].startswith("rm_type: unknown rm_type 'nope'")


async def test_builtin_error_is_named_by_rm_type() -> None:
    samples = [Sample(response="Answer: 3", label="pi")]
    await score_samples(_cfg(rm_type="dapo"), samples)
    assert (
        samples[0].metadata["reward_error"].startswith("dapo: ValueError: dapo needs an integer ground truth")
    )


async def test_concurrency_limit() -> None:
    running = peak = 0

    async def reward(args: Config, sample: Sample) -> RewardValue:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return 1.0

    await score_samples(_cfg(reward_concurrency=3), _samples(12), reward_fn=reward)
    assert peak == 3


async def test_batched_is_one_call_over_the_pending_samples() -> None:
    calls: list[int] = []

    async def batched(args: Config, samples: list[Sample]) -> list[RewardValue]:
        calls.append(len(samples))
        return [float(s.index or 0) for s in samples]

    samples = _samples(4)
    samples[0].reward = 9.0
    await score_samples(_cfg(), samples, batched_reward_fn=batched)
    assert calls == [3]
    assert [s.reward for s in samples] == [9.0, 1.0, 2.0, 3.0]


async def test_batched_failures() -> None:
    async def short(args: Config, samples: list[Sample]) -> list[RewardValue]:
        return [1.0]

    async def one_nan(args: Config, samples: list[Sample]) -> list[RewardValue]:
        return [1.0, math.inf]

    async def boom(args: Config, samples: list[Sample]) -> list[RewardValue]:
        raise KeyError("label")

    samples = _samples(2)
    await score_samples(_cfg(), samples, batched_reward_fn=short)
    assert all("returned 1 rewards for 2 samples" in s.metadata["reward_error"] for s in samples)

    samples = _samples(2)
    await score_samples(_cfg(), samples, batched_reward_fn=one_nan)
    assert samples[0].reward == 1.0 and samples[1].metadata["reward_error"].endswith("one_nan: returned inf")

    samples = _samples(2)
    await score_samples(_cfg(), samples, batched_reward_fn=boom)
    assert all("boom: KeyError: 'label' (at " in s.metadata["reward_error"] for s in samples)
    assert all("test_runner.py:" in s.metadata["reward_error"] for s in samples)  # the raising line


def test_validate_labels_on_samples_and_rows() -> None:
    validate_labels(_cfg(rm_type="math"), [Sample(label="1"), Sample(label="2")])
    with pytest.raises(
        RewardLabelError, match=r"(?s)1 of 2 rows.*row 1: rm_type 'math' needs a label \(sample.label=''\)"
    ):
        validate_labels(_cfg(rm_type="math"), [Sample(label="1"), Sample(label="")])

    args = _cfg(rm_type="math", label_key="answer")
    rows: list[dict[str, Any]] = [
        {"input": "q", "answer": "4"},
        {"input": "q"},
        {"input": "q", "answer": "x", "metadata": {"rm_type": "dapo"}},
        {"input": "q", "metadata": '{"rm_type": "ifbench", "instruction_id_list": ["bogus:id"]}'},
        {"input": "q", "metadata": {"rm_type": "gpqa", "correct_letter": "B"}},
        {"input": "q", "metadata": {"rm_type": "random"}},
    ]
    with pytest.raises(RewardLabelError) as info:
        validate_labels(args, rows)
    message = str(info.value)
    assert message.startswith("3 of 6 rows")
    assert "row 1: rm_type 'math' needs a label (label_key='answer')" in message
    assert "row 2: rm_type 'dapo' needs an integer label, got 'x'" in message
    assert "row 3: ifbench: unknown instruction id 'bogus:id'" in message


def test_validate_labels_without_any_rm_type() -> None:
    with pytest.raises(RewardLabelError, match="row 0: no reward: set Config.rm_type"):
        validate_labels(_cfg(), [Sample(label="1")])


async def test_bool_rewards_are_one_and_zero_as_in_miles() -> None:
    async def contains(args: Config, sample: Sample) -> bool:
        return sample.index == 0

    samples = _samples(2)
    await score_samples(_cfg(), samples, reward_fn=contains)  # type: ignore[arg-type]
    assert [s.reward for s in samples] == [1.0, 0.0]
    assert all(s.status is not Sample.Status.FAILED for s in samples)
