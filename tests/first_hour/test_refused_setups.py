"""Setups that would train nothing (or not what the user asked) are refused at ``Trainer(...)``,
before any weight is loaded, with an error that says what to set (issue 14 items 1 and 5)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch

from miles_sdk import Config, ConfigError, Sample, Trainer
from miles_sdk.algo import get_sum_of_sample_mean
from miles_sdk.testing import small_config, tiny_policy

ROWS = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]


async def _reward(args: Config, sample: Sample) -> float:
    return float(sample.response.strip() == sample.label)


@pytest.mark.parametrize("estimator", ["grpo", "gspo", "reinforce_plus_plus_baseline"])
def test_group_estimator_with_one_sample_per_prompt_is_refused(estimator: str) -> None:
    # No model is given: the check must fire before build_policy would need one.
    cfg = small_config(n_samples_per_prompt=1, advantage_estimator=estimator, micro_batch_size=1)
    with pytest.raises(ConfigError, match=r"n_samples_per_prompt=1.*n_samples_per_prompt >= 2"):
        Trainer(cfg, dataset=ROWS, reward_model=_reward)


@pytest.mark.parametrize(
    "changes",
    [
        {"advantage_estimator": "reinforce_plus_plus"},
        {"rewards_normalization": False},
        {"n_samples_per_prompt": 2},
        {"loss_type": "sft_loss"},
    ],
)
def test_settings_that_learn_from_one_sample_are_accepted(changes: dict[str, Any]) -> None:
    base: dict[str, Any] = {"n_samples_per_prompt": 1, "micro_batch_size": 1}
    model, tok = tiny_policy("unit")
    trainer = Trainer(
        small_config(**(base | changes)), model=model, tokenizer=tok, dataset=ROWS, reward_model=_reward
    )
    trainer.close()


def _custom_loss(
    args: Config,
    batch: Mapping[str, Any],
    logits: torch.Tensor,
    sum_of_sample_mean: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = logits.mean()
    return loss, {"loss": loss.detach()}


def _reducer(
    total_lengths: list[int],
    response_lengths: list[int],
    loss_masks: list[torch.Tensor],
    calculate_per_token_loss: bool = False,
) -> Callable[[torch.Tensor], torch.Tensor]:
    return get_sum_of_sample_mean(total_lengths, response_lengths, loss_masks, calculate_per_token_loss)


def test_pg_loss_reducer_with_custom_loss_is_refused() -> None:
    # Regression (14.5): the reducer was silently never called.
    with pytest.raises(ConfigError, match="pg_loss_reducer.*custom_loss"):
        Trainer(
            small_config(loss_type="custom_loss"),
            dataset=ROWS,
            reward_model=_reward,
            loss_fn=_custom_loss,
            pg_loss_reducer=_reducer,
        )
