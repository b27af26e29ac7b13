"""Flatten/trim and samples -> TrainData."""

from __future__ import annotations

import pytest

from miles_sdk.algo import TrimError, convert_samples_to_train_data, flatten_and_trim
from miles_sdk.config import Config
from miles_sdk.types import Sample


def _sample(i: int, group: int, reward: float = 1.0, n_resp: int = 2, **kw: object) -> Sample:
    return Sample(
        index=i,
        group_index=group,
        tokens=[1, 2, 3] + list(range(10, 10 + n_resp)),
        response_length=n_resp,
        reward=reward,
        status=Sample.Status.COMPLETED,
        **kw,  # type: ignore[arg-type]
    )


def test_trim_to_multiple_of_global_batch_size() -> None:
    args = Config(rollout_batch_size=3, n_samples_per_prompt=2, global_batch_size=4)
    groups = [[_sample(2 * g + k, g) for k in range(2)] for g in range(3)]
    out = flatten_and_trim(args, groups)
    assert [s.index for s in out] == [0, 1, 2, 3]
    keep_all = args.replace(rollout_trim_samples=False)
    assert len(flatten_and_trim(keep_all, groups)) == 6


def test_trim_to_nothing_is_an_error() -> None:
    args = Config(rollout_batch_size=4, n_samples_per_prompt=2, global_batch_size=4)
    with pytest.raises(TrimError, match="global_batch_size=4"):
        flatten_and_trim(args, [[_sample(0, 0), _sample(1, 0)]])


def test_required_keys_and_values() -> None:
    args = Config(n_samples_per_prompt=2)
    a = _sample(0, 0, reward=1.0)
    b = _sample(1, 0, reward=0.0, loss_mask=[1, 0])
    b.status = Sample.Status.TRUNCATED
    data = convert_samples_to_train_data(args, [a, b])
    assert data["tokens"] == [[1, 2, 3, 10, 11], [1, 2, 3, 10, 11]]
    assert data["response_lengths"] == [2, 2]
    assert data["raw_reward"] == [1.0, 0.0]
    assert data["rewards"] == pytest.approx([0.5 / (0.5**0.5 + 1e-6), -0.5 / (0.5**0.5 + 1e-6)])
    assert data["truncated"] == [0, 1]
    assert data["sample_indices"] == [0, 1]
    assert data["loss_masks"] == [[1, 1], [1, 0]]
    for key in (
        "rollout_log_probs",
        "teacher_log_probs",
        "metadata",
        "multimodal_train_inputs",
        "round_number",
    ):
        assert key not in data


def test_removed_sample_has_zero_mask_but_counts_in_normalisation() -> None:
    args = Config(n_samples_per_prompt=2, grpo_std_normalization=False)
    a, b = _sample(0, 0, reward=1.0), _sample(1, 0, reward=3.0)
    b.remove_sample = True
    data = convert_samples_to_train_data(args, [a, b])
    assert data["loss_masks"] == [[1, 1], [0, 0]]
    assert data["rewards"] == [-1.0, 1.0]
    assert b.loss_mask is None  # the sample itself is not rewritten


def test_optional_keys_when_present() -> None:
    args = Config(n_samples_per_prompt=2)
    a = _sample(
        0,
        0,
        rollout_log_probs=[-0.1, -0.2],
        teacher_log_probs=[-1.0, -2.0],
        train_metadata={"k": 1},
        weight_versions=[3, 4],
    )
    b = _sample(1, 0, rollout_log_probs=[-0.3, -0.4], teacher_log_probs=[-3.0, -4.0], weight_versions=[5])
    b.multimodal_train_inputs = {"pixel_values": [1]}
    data = convert_samples_to_train_data(args, [a, b])
    assert data["rollout_log_probs"] == [[-0.1, -0.2], [-0.3, -0.4]]
    assert data["teacher_log_probs"] == [[-1.0, -2.0], [-3.0, -4.0]]
    assert data["metadata"] == [{"k": 1}, {}]
    assert data["multimodal_train_inputs"] == [None, {"pixel_values": [1]}]
    assert data["round_number"] == [3, 5]


def test_rollout_log_probs_only_when_every_sample_has_them() -> None:
    a = _sample(0, 0, rollout_log_probs=[-0.1, -0.2])
    data = convert_samples_to_train_data(Config(n_samples_per_prompt=2), [a, _sample(1, 0)])
    assert "rollout_log_probs" not in data


def test_metadata_round_number_and_raw_reward_override() -> None:
    a = _sample(0, 0, metadata={"round_number": 7, "raw_reward": 0.25})
    data = convert_samples_to_train_data(Config(), [a])
    assert data["round_number"] == [7]
    assert data["raw_reward"] == [0.25]


def test_custom_reward_post_process_is_used() -> None:
    def post(args: Config, samples: list[Sample]) -> tuple[list[float], list[float]]:
        return [9.0] * len(samples), [float(s.index or 0) * 10 for s in samples]

    data = convert_samples_to_train_data(Config(), [_sample(0, 0), _sample(1, 1)], reward_post_process=post)
    assert data["raw_reward"] == [9.0, 9.0]
    assert data["rewards"] == [0.0, 10.0]


def test_bad_inputs_name_the_sample() -> None:
    with pytest.raises(ValueError, match="no samples"):
        convert_samples_to_train_data(Config(), [])
    bad = _sample(3, 0, loss_mask=[1, 1, 1])
    with pytest.raises(ValueError, match=r"index=3.*loss_mask"):
        convert_samples_to_train_data(Config(), [bad])

    def short(args: Config, samples: list[Sample]) -> tuple[list[float], list[float]]:
        return [1.0], [1.0]

    with pytest.raises(ValueError, match="returned 1 raw_rewards for 2 samples"):
        convert_samples_to_train_data(Config(), [_sample(0, 0), _sample(1, 0)], reward_post_process=short)
