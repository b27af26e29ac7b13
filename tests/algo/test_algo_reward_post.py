"""GRPO reward post-processing: hand-computed groups and a zero-mean property."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miles_sdk.algo import MissingRewardError, grpo_reward_post_process
from miles_sdk.config import Config
from miles_sdk.types import Sample


def _samples(rewards: list[float], group_size: int) -> list[Sample]:
    return [
        Sample(index=i, group_index=i // group_size, reward=r, status=Sample.Status.COMPLETED)
        for i, r in enumerate(rewards)
    ]


def test_grpo_centres_and_scales_each_group() -> None:
    args = Config(n_samples_per_prompt=2)
    raw, out = grpo_reward_post_process(args, _samples([1.0, 0.0, 3.0, 3.0], 2))
    assert raw == [1.0, 0.0, 3.0, 3.0]
    # group 0: mean .5, unbiased std = sqrt(.5); group 1: std 0 -> centred only
    s = math.sqrt(0.5)
    assert out == pytest.approx([0.5 / (s + 1e-6), -0.5 / (s + 1e-6), 0.0, 0.0])


def test_groups_by_group_index_not_position() -> None:
    samples = _samples([1.0, 2.0, 3.0, 5.0], 1)
    for s, g in zip(samples, [7, 3, 7, 3], strict=True):
        s.group_index = g
    args = Config(advantage_estimator="reinforce_plus_plus_baseline", n_samples_per_prompt=2)
    _, out = grpo_reward_post_process(args, samples)
    assert out == pytest.approx([-1.0, -1.5, 1.0, 1.5])  # centred, never std-scaled


def test_std_scaling_only_for_grpo_and_gspo() -> None:
    base = _samples([0.0, 2.0], 2)
    _, gspo = grpo_reward_post_process(Config(advantage_estimator="gspo", n_samples_per_prompt=2), base)
    assert gspo == pytest.approx([-1.0 / (math.sqrt(2) + 1e-6), 1.0 / (math.sqrt(2) + 1e-6)])
    off = Config(grpo_std_normalization=False, n_samples_per_prompt=2)
    assert grpo_reward_post_process(off, base)[1] == pytest.approx([-1.0, 1.0])


def test_disabled_normalisation_and_other_estimators_pass_raw() -> None:
    samples = _samples([0.0, 2.0], 2)
    assert grpo_reward_post_process(Config(rewards_normalization=False), samples) == ([0.0, 2.0], [0.0, 2.0])
    rpp = Config(advantage_estimator="reinforce_plus_plus")
    assert grpo_reward_post_process(rpp, samples)[1] == [0.0, 2.0]


def test_single_sample_groups_are_only_centred() -> None:
    _, out = grpo_reward_post_process(Config(), _samples([4.0, -1.0], 1))
    assert out == [0.0, 0.0]


def test_dict_reward_read_through_reward_key() -> None:
    samples = _samples([0.0, 0.0], 2)
    samples[0].reward = {"score": 1.0, "acc": True}
    samples[1].reward = {"score": -1.0, "acc": False}
    raw, _ = grpo_reward_post_process(Config(reward_key="score", n_samples_per_prompt=2), samples)
    assert raw == [1.0, -1.0]


def test_missing_reward_is_a_clear_error() -> None:
    samples = _samples([1.0, 0.0], 2)
    samples[1].reward = None
    samples[1].status = Sample.Status.FAILED
    samples[1].metadata["reward_error"] = "boom"
    with pytest.raises(MissingRewardError, match=r"index=1.*failed.*boom"):
        grpo_reward_post_process(Config(), samples)


def test_missing_reward_key_names_the_sample() -> None:
    samples = _samples([0.0], 1)
    samples[0].reward = {"acc": 1.0}
    with pytest.raises(MissingRewardError, match="index=0"):
        grpo_reward_post_process(Config(reward_key="score"), samples)


def test_no_group_index_falls_back_to_consecutive_runs() -> None:
    samples = [Sample(index=i, reward=r) for i, r in enumerate([1.0, 3.0, 10.0, 10.0])]
    _, out = grpo_reward_post_process(Config(n_samples_per_prompt=2, grpo_std_normalization=False), samples)
    assert out == [-1.0, 1.0, 0.0, 0.0]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 5),
    st.data(),
    st.sampled_from(["grpo", "gspo", "reinforce_plus_plus_baseline"]),
)
def test_every_group_has_zero_mean(groups: int, size: int, data: st.DataObject, est: str) -> None:
    rewards = data.draw(st.lists(st.floats(-10, 10), min_size=groups * size, max_size=groups * size))
    args = Config(advantage_estimator=est, n_samples_per_prompt=size)  # type: ignore[arg-type]
    _, out = grpo_reward_post_process(args, _samples(rewards, size))
    for g in range(groups):
        assert abs(sum(out[g * size : (g + 1) * size])) < 1e-6 * size
        if est != "reinforce_plus_plus_baseline" and size > 1:
            assert all(abs(v) <= size for v in out[g * size : (g + 1) * size])
