"""Hooks that run next to the model travel to the FSDP ranks by pickling; one that cannot is refused
when the Trainer is built, before any rank starts, naming the hook, its keyword and its flag."""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

import pytest

from miles_sdk import Trainer
from miles_sdk.distributed.launch import HookShippingError, check_shippable
from miles_sdk.distributed.rank import RankHooks
from miles_sdk.testing.run import small_config
from miles_sdk.testing.tiny import tiny_policy

FLAGS = {
    "loss_fn": "--custom-loss-function-path",
    "tis_fn": "--custom-tis-function-path",
    "pg_loss_reducer": "--custom-pg-loss-reducer-function-path",
    "before_log_prob_hook": "--custom-megatron-before-log-prob-hook-path",
    "before_train_step_hook": "--custom-megatron-before-train-step-hook-path",
}


def _locked_hook() -> Any:
    lock = threading.Lock()

    def hook(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return None

    return hook


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_an_unpicklable_hook_is_named_with_its_flag(name: str) -> None:
    with pytest.raises(HookShippingError, match=name) as caught:
        check_shippable(RankHooks(**{name: _locked_hook()}))
    assert FLAGS[name] in str(caught.value) and "lock" in str(caught.value)


def test_importable_and_closure_hooks_travel() -> None:
    factor = 2.0
    check_shippable(RankHooks(loss_fn=small_config, tis_fn=lambda *a, **k: factor))


def _loss_fn_closing_over_a_lock() -> Any:
    lock = threading.Lock()

    def loss(args: Any, batch: Any, logits: Any, reducer: Any) -> Any:
        with lock:
            raise AssertionError("never called")

    return loss


async def reward(args: Any, sample: Any) -> float:
    return 0.0


def test_the_trainer_refuses_it_before_starting_ranks() -> None:
    model, tok = tiny_policy("unit", seed=0)
    config = small_config(
        train_backend="fsdp",
        actor_num_gpus_per_node=2,
        distributed_launcher="processes",
        loss_type="custom_loss",
    )
    with pytest.raises(HookShippingError, match=r"loss_fn .*--custom-loss-function-path"):
        Trainer(
            config,
            model=model,
            tokenizer=tok,
            loss_fn=_loss_fn_closing_over_a_lock(),
            reward_model=reward,
            dataset=[{"input": "1+1=", "label": "2"}],
        )
    assert multiprocessing.active_children() == []


def test_one_rank_in_this_process_needs_no_pickling() -> None:
    model, tok = tiny_policy("unit", seed=0)
    config = small_config(train_backend="fsdp", loss_type="custom_loss")
    trainer = Trainer(
        config,
        model=model,
        tokenizer=tok,
        loss_fn=_loss_fn_closing_over_a_lock(),
        reward_model=reward,
        dataset=[{"input": "1+1=", "label": "2"}],
    )
    trainer.close()
