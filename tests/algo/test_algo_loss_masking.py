"""Tokens that a TIS/RS hook masks out leave every loss term (as in Miles), and mismatch metrics
stay meaningful with use_rollout_logprobs."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from miles_sdk.algo import compute_loss, loss_params
from miles_sdk.config import Config, ConfigError
from miles_sdk.hooks import TISResult
from miles_sdk.stages import MicroBatch

T = torch.tensor
F64 = torch.float64



def _loss(
    args: Config,
    batch: dict[str, Any],
    log_probs: list[torch.Tensor],
    entropy: list[torch.Tensor] | None,
    values: list[torch.Tensor] | None = None,
    **hooks: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """compute_loss on Miles's dict layout, with the Config mapped as the backend maps it."""
    return compute_loss(
        MicroBatch.from_dict(batch), log_probs, entropy, values, params=loss_params(args), hook_args=args, **hooks
    )

def _batch(**extra: Any) -> dict[str, Any]:
    batch: dict[str, Any] = {
        "response_lengths": [2, 1],
        "total_lengths": [5, 3],
        "loss_masks": [T([1, 1]), T([1])],
        "advantages": [T([1.0, 1.0], dtype=F64), T([-2.0], dtype=F64)],
        "log_probs": [T([-1.0, -1.0], dtype=F64), T([-0.5], dtype=F64)],
        "rollout_log_probs": [T([-1.0, -1.0], dtype=F64), T([-0.5], dtype=F64)],
        "ref_log_probs": [T([-2.0, -2.0], dtype=F64), T([-1.5], dtype=F64)],
    }
    batch.update(extra)
    return batch


def _cur() -> list[torch.Tensor]:
    return [T([-1.0, -1.0], dtype=F64).requires_grad_(True), T([-0.5], dtype=F64).requires_grad_(True)]


def reject_everything(
    *,
    args: Config,
    pg_loss: torch.Tensor,
    train_log_probs: list[torch.Tensor],
    rollout_log_probs: list[torch.Tensor],
    loss_masks: list[torch.Tensor],
    total_lengths: list[int],
    response_lengths: list[int],
    **kwargs: Any,
) -> TISResult:
    return pg_loss, [torch.zeros_like(m) for m in loss_masks], {}


def test_rejected_tokens_get_no_gradient_from_kl_or_entropy() -> None:
    args = Config(use_tis=True, use_kl_loss=True, kl_loss_coef=1.0, entropy_coef=0.5)
    cur = _cur()
    entropy = [T([2.0, 2.0], dtype=F64, requires_grad=True), T([2.0], dtype=F64, requires_grad=True)]
    loss, metrics = _loss(args, _batch(), cur, entropy, tis_fn=reject_everything)
    torch.autograd.backward(loss)
    for t in (*cur, *entropy):
        assert t.grad is not None and torch.all(t.grad == 0)
    assert metrics["kl_loss"].item() == 0.0 and metrics["entropy_loss"].item() == 0.0


def test_mismatch_metrics_with_rollout_logprobs_compare_trainer_and_engine() -> None:
    args = Config(get_mismatch_metrics=True, use_rollout_logprobs=True)
    rollout = [T([-1.5, -1.5], dtype=F64), T([-1.0], dtype=F64)]  # the engine was 0.5 nat lower
    batch = _batch(rollout_log_probs=rollout)
    batch["log_probs"] = None  # with use_rollout_logprobs the trainer computes no old log-probs
    _, metrics = _loss(args, batch, _cur(), None)
    assert metrics["tis"].item() == pytest.approx(math.exp(0.5))  # not 1.0: a real comparison


def test_use_tis_with_rollout_logprobs_is_rejected() -> None:
    with pytest.raises(ConfigError, match="use_tis and use_rollout_logprobs"):
        Config(use_tis=True, use_rollout_logprobs=True)
