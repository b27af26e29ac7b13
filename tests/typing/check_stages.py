"""Type-level tests of the values between the loop's stages and the algorithms' parameters (checked
by mypy --strict, never run). Negative cases carry ``# type: ignore[code]``; with
warn_unused_ignores, a negative case that stops failing breaks CI.
"""

from __future__ import annotations

from typing import Any, assert_type

import attrs
import torch

from miles_sdk import Config, MicroBatch, PolicyOutputs, Rollout, Sample, TrainBatch, TrainData, Trainer
from miles_sdk.algo import (
    AdvantageParams,
    LossParams,
    advantage_params,
    compute_advantages_and_returns,
    compute_loss,
    loss_params,
)
from miles_sdk.backends.base import TrainBackend
from miles_sdk.types import Metrics


def _data() -> TrainData:
    return {
        "tokens": [[1, 2, 3]],
        "response_lengths": [1],
        "rewards": [1.0],
        "raw_reward": [1.0],
        "truncated": [0],
        "sample_indices": [0],
        "loss_masks": [[1]],
    }


# ---- positive: what each stage hands on, with its field types ----------------------------------

rollout = Rollout([[Sample()]], {"rollout/drawn": 1.0})
assert_type(rollout.groups, list[list[Sample]])

outputs = PolicyOutputs(log_probs=None)
assert_type(outputs.log_probs, list[torch.Tensor] | None)
assert_type(outputs.ref_log_probs, list[torch.Tensor] | None)

batch = TrainBatch.build(_data(), outputs, advantages=[torch.zeros(1)], returns=[torch.zeros(1)])
assert_type(batch.advantages, list[torch.Tensor])
assert_type(batch.log_probs, list[torch.Tensor] | None)
assert_type(batch.rollout_log_probs, list[list[float]] | None)
assert_type(batch.select([0]), TrainBatch)
assert_type(attrs.evolve(batch, rewards=[0.0]), TrainBatch)
assert_type(batch.as_dict(), dict[str, Any])  # Miles's view, for dict-typed hooks
assert_type(TrainBatch.from_dict(batch.as_dict(), where="hook"), TrainBatch)


def train_with(backend: TrainBackend) -> Metrics:
    return backend.train(0, batch)


def answers(trainer: Trainer) -> list[Sample]:
    return assert_type(trainer.generate(["1+1="], {"temperature": 0.0}), list[Sample])


# The algorithms take their parameters, never the Config; one place maps the Config to them.
assert_type(loss_params(Config()), LossParams)
assert_type(advantage_params(Config()), AdvantageParams)
micro = MicroBatch(
    tokens=[], token_lists=[], response_lengths=[1], total_lengths=[3], loss_masks=[torch.ones(1)]
)
loss, metrics = compute_loss(micro, [torch.zeros(1)], None, params=LossParams(eps_clip=0.1))
assert_type(loss, torch.Tensor)
adv, ret = compute_advantages_and_returns(
    params=AdvantageParams(estimator="grpo"), rewards=[1.0], log_probs=None, ref_log_probs=None, loss_masks=[]
)
assert_type(adv, list[torch.Tensor])

# ---- negative ---------------------------------------------------------------------------------

batch.advantages = []  # type: ignore[misc]  # frozen: a stage returns a new value (attrs.evolve)
TrainBatch(
    tokens=[], response_lengths=[], rewards=[], raw_reward=[], truncated=[], sample_indices=[], loss_masks=[]
)  # type: ignore[call-arg]  # no advantages
PolicyOutputs(log_probs=[[0.5]])  # type: ignore[list-item]  # tensors, not lists of floats


def train_with_a_dict(backend: TrainBackend) -> Metrics:
    return backend.train(0, batch.as_dict())  # type: ignore[arg-type]  # the backend takes the typed batch


compute_loss(micro.as_dict(), [], None, params=LossParams())  # type: ignore[arg-type]
compute_loss(micro, [], None, params=Config())  # type: ignore[arg-type]  # parameters, not the Config
compute_advantages_and_returns(Config(), rewards=[], log_probs=None, ref_log_probs=None, loss_masks=[])  # type: ignore[call-arg, arg-type]
LossParams(eps_clip="0.2")  # type: ignore[arg-type]
AdvantageParams(estimator="a2c")  # type: ignore[arg-type]


# ---- rollout_data_postprocess: Miles's dict form or the typed form ------------------------------


def miles_postprocess(args: Config, rollout_data: dict[str, Any]) -> None:
    rollout_data["advantages"] = [a * 2 for a in rollout_data["advantages"]]


def typed_postprocess(args: Config, batch: TrainBatch) -> TrainBatch:
    return attrs.evolve(batch, advantages=[a * 2 for a in batch.advantages])


def forgets_to_return(args: Config, batch: TrainBatch) -> None:
    pass


def trainers() -> None:
    Trainer(Config(), rollout_data_postprocess=miles_postprocess)
    Trainer(Config(), rollout_data_postprocess=typed_postprocess)
    Trainer(Config(), rollout_data_postprocess=forgets_to_return)  # type: ignore[arg-type]
