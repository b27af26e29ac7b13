"""Train metrics: extremes (``ratio_max``, ``*_min``) are reduced by max / min over micro-batches
and optimizer steps, means by the loss weights; metric tensors are never read back one by one
(issue 13, item 12)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from miles_sdk.backends.optim import PolicyOptimizer
from miles_sdk.backends.torch_backend import _accumulate_and_step, reduce_over_steps
from miles_sdk.stages import MicroBatch, TrainBatch
from miles_sdk.testing import small_config


class _NoHostRead(torch.Tensor):
    """A metric tensor that fails when read back on its own (a host sync per metric on CUDA)."""

    def __float__(self) -> float:
        raise AssertionError("a metric was read back with float() inside the micro-batch loop")

    def item(self) -> Any:
        raise AssertionError("a metric was read back with item() inside the micro-batch loop")


def _data(n: int) -> TrainBatch:
    return TrainBatch(
        tokens=[[1, 2, 3, 4]] * n,
        response_lengths=[2] * n,
        loss_masks=[[1, 1]] * n,
        rewards=[0.0] * n,
        raw_reward=[0.0] * n,
        truncated=[0] * n,
        sample_indices=list(range(n)),
        advantages=[torch.zeros(2)] * n,
        returns=[torch.zeros(2)] * n,
    )


def test_extremes_are_maxed_and_minned_over_micro_batches() -> None:
    weight = torch.nn.Parameter(torch.zeros(()))
    optim = PolicyOptimizer(small_config(), [weight], lr=0.0, master_weights=False)
    ratio_max = iter([1.1, 1.7, 1.3, 1.0])
    ratio_min = iter([0.9, 0.95, 0.6, 0.8])
    pg_loss = iter([1.0, 2.0, 3.0, 6.0])

    def loss_of(batch: MicroBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        metrics = {
            "ratio_max": torch.tensor(next(ratio_max)).as_subclass(_NoHostRead),
            "ratio_min": torch.tensor(next(ratio_min)).as_subclass(_NoHostRead),
            "pg_loss": torch.tensor(next(pg_loss)).as_subclass(_NoHostRead),
        }
        return weight * 1.0, metrics

    cfg = small_config(micro_batch_size=1, clip_grad=0.0)
    got = _accumulate_and_step(cfg, _data(4), [0, 1, 2, 3], torch.device("cpu"), loss_of, optim)
    assert got["ratio_max"] == pytest.approx(1.7)  # the old code averaged: 1.275
    assert got["ratio_min"] == pytest.approx(0.6)
    assert got["pg_loss"] == pytest.approx(3.0)  # equal micro-batches: the plain mean
    assert got["grad_norm"] == pytest.approx(1.0)


def test_extremes_are_maxed_and_minned_over_optimizer_steps() -> None:
    steps = [
        {"ratio_max": 1.2, "ratio_min": 0.7, "pg_loss": 1.0, "lr": 1e-3},
        {"ratio_max": 2.5, "ratio_min": 0.9, "pg_loss": 3.0, "lr": 1e-3, "skipped_nonfinite_grad": 1.0},
    ]
    got = reduce_over_steps(steps)
    assert got == pytest.approx(
        {"ratio_max": 2.5, "ratio_min": 0.7, "pg_loss": 2.0, "lr": 1e-3, "skipped_nonfinite_grad": 0.5}
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are a CUDA matter (issue 13 item 12)")
def test_cuda_one_host_read_per_optimizer_step() -> None:
    import warnings

    cuda = torch.device("cuda")
    weight = torch.nn.Parameter(torch.zeros((), device=cuda))
    optim = PolicyOptimizer(small_config(), [weight], lr=0.0, master_weights=False)

    def loss_of(batch: MicroBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        ratio = torch.rand((), device=cuda) + 1.0
        return weight * 1.0, {"ratio_max": ratio, "pg_loss": ratio * 2, "ppo_kl": ratio * 3, "coef": 0.5}

    cfg = small_config(micro_batch_size=1, clip_grad=1.0)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            _accumulate_and_step(cfg, _data(8), list(range(8)), cuda, loss_of, optim)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    # The old code read every metric of every micro-batch with float(), and each micro-batch's
    # token count from its device mask: over 30 syncs here.
    assert len(syncs) <= 2, [str(w.message) for w in syncs]
