"""The typed values between the loop's stages (miles_sdk.stages): frozen, Miles's dict views that
write through, and what the backend receives."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import torch

from miles_sdk import Config, Sample, Trainer
from miles_sdk.rollout.shapes import HookResultError
from miles_sdk.stages import MicroBatch, PolicyOutputs, StageDataError, TrainBatch
from miles_sdk.testing import small_config, tiny_policy
from miles_sdk.types import Metrics, TrainData

ROWS = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]


async def _alternating_reward(args: Config, sample: Sample) -> float:
    return float((sample.index or 0) % 2)


def _train_data(n: int = 3) -> TrainData:
    return {
        "tokens": [[1, 2, 3, i] for i in range(n)],
        "response_lengths": [2] * n,
        "rewards": [float(i) for i in range(n)],
        "raw_reward": [float(i) for i in range(n)],
        "truncated": [0] * n,
        "sample_indices": list(range(n)),
        "loss_masks": [[1, 1]] * n,
        "rollout_log_probs": [[-0.5, -0.25]] * n,
    }


def _batch(n: int = 3) -> TrainBatch:
    return TrainBatch.build(
        _train_data(n),
        PolicyOutputs(log_probs=None, ref_log_probs=[torch.zeros(2)] * n),
        advantages=[torch.full((2,), float(i)) for i in range(n)],
        returns=[torch.zeros(2)] * n,
    )


def test_train_batch_is_frozen_and_changed_by_evolve() -> None:
    batch = _batch()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        batch.advantages = []  # type: ignore[misc]
    changed = attrs.evolve(batch, rewards=[0.0, 0.0, 0.0])
    assert changed.rewards == [0.0, 0.0, 0.0] and batch.rewards == [0.0, 1.0, 2.0]


def test_dict_view_has_miles_keys_and_reads_back_edits_and_new_keys() -> None:
    view = _batch().as_dict()
    # Miles's layout: set optional keys only, the computed ones always (None allowed).
    assert "teacher_log_probs" not in view and view["rollout_log_probs"] == [[-0.5, -0.25]] * 3
    assert view["log_probs"] is None and view["values"] is None
    view["advantages"] = [torch.zeros(2)] * 3
    view["loss_masks"][0] = [0, 0]
    view["my_weights"] = [1.0, 2.0, 3.0]
    back = TrainBatch.from_dict(view, where="test")
    assert all(bool((a == 0).all()) for a in back.advantages)
    assert back.loss_masks[0] == [0, 0]
    assert back.extra == {"my_weights": [1.0, 2.0, 3.0]}
    assert back.as_dict()["my_weights"] == [1.0, 2.0, 3.0]


def test_from_dict_names_the_hook_and_the_key() -> None:
    view = _batch().as_dict()
    del view["advantages"]
    with pytest.raises(StageDataError, match="my_hook.*'advantages'"):
        TrainBatch.from_dict(view, where="my_hook")
    view = _batch().as_dict()
    view["rewards"] = [1.0]
    with pytest.raises(StageDataError, match="'rewards' has 1 entries for 3 samples"):
        TrainBatch.from_dict(view, where="my_hook")


def test_select_takes_every_per_sample_field_at_the_indices() -> None:
    part = _batch(4).select([3, 1])
    assert part.sample_indices == [3, 1] and part.rewards == [3.0, 1.0]
    assert [float(a[0]) for a in part.advantages] == [3.0, 1.0]
    assert part.log_probs is None and part.rollout_log_probs == [[-0.5, -0.25]] * 2


def test_micro_batch_from_miles_dict_requires_the_old_log_probs_key() -> None:
    base: dict[str, Any] = {"response_lengths": [1], "total_lengths": [3], "loss_masks": [[1]]}
    with pytest.raises(KeyError, match="no 'log_probs'"):
        MicroBatch.from_dict(base)  # a missing key must not read as "on-policy"
    on_policy = MicroBatch.from_dict({**base, "log_probs": None})
    assert on_policy.log_probs is None and on_policy.as_dict()["log_probs"] is None


def _trainer(**hooks: Any) -> Trainer:
    model, tok = tiny_policy("unit", seed=3)
    return Trainer(
        small_config(lr=1e-3), model=model, tokenizer=tok, dataset=ROWS, reward_model=_alternating_reward,
        **hooks,
    )  # fmt: skip


def test_rollout_data_postprocess_assignments_are_what_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    def zero_advantages(args: Config, rollout_data: dict[str, Any]) -> None:
        # Assignment (not an in-place edit): the dict view must carry it into training.
        rollout_data["advantages"] = [torch.zeros_like(a) for a in rollout_data["advantages"]]
        rollout_data["my_key"] = "kept"

    received: list[TrainBatch] = []
    with _trainer(rollout_data_postprocess=zero_advantages) as t:
        real = t.backend.train

        def spy(rollout_id: int, batch: TrainBatch) -> Metrics:
            received.append(batch)
            return real(rollout_id, batch)

        monkeypatch.setattr(t.backend, "train", spy)
        metrics = t.step()
    assert isinstance(received[0], TrainBatch)
    assert all(bool((a == 0).all()) for a in received[0].advantages)
    assert received[0].extra == {"my_key": "kept"}
    assert metrics["train/pg_loss"] == 0.0


def test_rollout_data_postprocess_that_drops_a_key_is_named() -> None:
    def drop(args: Config, rollout_data: dict[str, Any]) -> None:
        del rollout_data["advantages"]

    with (
        _trainer(rollout_data_postprocess=drop) as t,
        pytest.raises(StageDataError, match="drop.*'advantages'"),
    ):
        t.step()


def _zero_advantages(args: Config, batch: TrainBatch) -> TrainBatch:
    """The typed form: gets the frozen batch, returns the one to train on."""
    return attrs.evolve(batch, advantages=[torch.zeros_like(a) for a in batch.advantages])


def test_a_typed_postprocess_gets_the_train_batch_and_its_result_trains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    received: list[TrainBatch] = []
    with _trainer(rollout_data_postprocess=_zero_advantages) as t:
        real = t.backend.train

        def spy(rollout_id: int, batch: TrainBatch) -> Metrics:
            received.append(batch)
            return real(rollout_id, batch)

        monkeypatch.setattr(t.backend, "train", spy)
        metrics = t.step()
    assert all(bool((a == 0).all()) for a in received[0].advantages)
    assert metrics["train/pg_loss"] == 0.0


def test_a_typed_postprocess_that_returns_nothing_is_named() -> None:
    def forgets_to_return(args: Config, batch: TrainBatch) -> None:
        pass

    with (
        _trainer(rollout_data_postprocess=forgets_to_return) as t,
        pytest.raises(HookResultError, match="forgets_to_return.*returned NoneType"),
    ):
        t.step()
