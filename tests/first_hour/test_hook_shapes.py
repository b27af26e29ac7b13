"""A hook that returns the wrong shape is named where the loop receives its result (issue 14.7):
the hook, its class or path, and the type expected; not a TypeError from inside the SDK."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from miles_sdk import Config, Sample
from miles_sdk.rollout.shapes import HookResultError
from miles_sdk.testing import run_steps, small_config


class _Source:
    """A DataSource whose get_samples is overridden by the subclasses below."""

    def __init__(self, args: Config) -> None:
        self.args = args
        self.next_index = 0

    def _groups(self, n: int) -> list[list[Sample]]:
        groups = []
        for g in range(n):
            group = []
            for _ in range(self.args.n_samples_per_prompt):
                group.append(Sample(prompt="1+1=", label="2", index=self.next_index, group_index=g))
                self.next_index += 1
            groups.append(group)
        return groups

    def add_samples(self, samples: list[list[Sample]]) -> None:
        pass

    def save(self, rollout_id: int) -> None:
        pass

    def load(self, rollout_id: int | None = None) -> None:
        pass


class FlatSource(_Source):
    def get_samples(self, num_samples: int) -> list[Sample]:  # the mistake: no groups
        return [s for g in self._groups(num_samples) for s in g]


class AsyncSource(_Source):
    async def get_samples(self, num_samples: int) -> list[list[Sample]]:  # the mistake: async
        return self._groups(num_samples)


def test_flat_list_from_a_data_source_is_named() -> None:
    with pytest.raises(HookResultError) as info:
        run_steps({"data_source": FlatSource}, steps=1)
    message = str(info.value)
    assert "FlatSource.get_samples" in message
    assert "flat list of Sample" in message and "list[list[Sample]]" in message


def test_async_get_samples_is_named_without_a_never_awaited_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "coroutine ... was never awaited"
        with pytest.raises(HookResultError) as info:
            run_steps({"data_source": AsyncSource}, steps=1)
    assert "AsyncSource.get_samples" in str(info.value)
    assert "remove `async`" in str(info.value)


def test_data_source_from_its_flag_is_named_with_the_path() -> None:
    config = small_config(data_source_path=f"{__name__}.FlatSource")
    with pytest.raises(HookResultError, match=rf"--data-source-path {__name__}\.FlatSource"):
        run_steps(config=config, steps=1)


def bad_post_process(args: Config, samples: list[Sample]) -> tuple[list[float], list[float]]:
    rewards = [float(s.reward or 0.0) for s in samples]
    return rewards, rewards[:-1]  # one reward short


def test_reward_post_process_of_the_wrong_length_is_named() -> None:
    with pytest.raises(
        HookResultError, match=r"reward_post_process .*bad_post_process returned 3 rewards for 4"
    ):
        run_steps({"reward_post_process": bad_post_process}, steps=1)


def convert_to_a_list(args: Config, samples: list[Sample]) -> Any:
    return [s.tokens for s in samples]


def test_convert_samples_to_train_data_returning_a_list_is_named() -> None:
    with pytest.raises(HookResultError, match=r"convert_to_a_list returned list.*TrainData"):
        run_steps({"convert_samples_to_train_data": convert_to_a_list}, steps=1)


def train_output_always(args: Config, rollout_id: int, data_source: Any, evaluation: bool = False) -> Any:
    from miles_sdk.rollout import generate_rollout
    from miles_sdk.testing import run_sync

    return run_sync(generate_rollout(args, rollout_id, data_source, evaluation=False))


def test_eval_function_returning_train_output_is_named() -> None:
    from miles_sdk import Trainer
    from miles_sdk.demo.task import addition_reward
    from miles_sdk.testing import tiny_policy

    model, tok = tiny_policy("unit")
    rows = [{"input": "1+1=", "label": "2"}] * 4
    with (
        Trainer(
            small_config(),
            model=model,
            tokenizer=tok,
            dataset=rows,
            reward_model=addition_reward,
            eval_fn=train_output_always,
        ) as trainer,
        pytest.raises(
            HookResultError, match=r"eval function .*train_output_always returned RolloutFnTrainOutput"
        ),
    ):
        trainer.evaluate()


def loss_without_metrics(args: Config, batch: Any, logits: Any, sum_of_sample_mean: Any) -> Any:
    return logits.float().mean()  # the mistake: no (loss, metrics) tuple


def test_loss_function_without_metrics_is_named() -> None:
    with pytest.raises(
        HookResultError, match=r"loss function .*loss_without_metrics returned Tensor.*\(loss, metrics\)"
    ):
        run_steps({"loss_fn": loss_without_metrics}, steps=1, config=small_config(loss_type="custom_loss"))


def unreduced(
    total_lengths: Any, response_lengths: Any, loss_masks: Any, calculate_per_token_loss: bool = False
) -> Any:
    return lambda x: x * 2  # the mistake: per-token values, not a scalar


def test_pg_loss_reducer_that_does_not_reduce_is_named() -> None:
    with pytest.raises(
        HookResultError, match=r"pg_loss_reducer .*unreduced: its reducer returned a tensor of shape"
    ):
        run_steps({"pg_loss_reducer": unreduced}, steps=1)


def tis_drops_masks(**kwargs: Any) -> Any:
    return kwargs["pg_loss"], kwargs["loss_masks"][:1], {}


def test_tis_function_with_too_few_masks_is_named() -> None:
    with pytest.raises(
        HookResultError, match=r"TIS function .*tis_drops_masks returned 1 masks for 2 samples"
    ):
        run_steps({"tis_fn": tis_drops_masks}, steps=1, config=small_config(use_tis=True))
