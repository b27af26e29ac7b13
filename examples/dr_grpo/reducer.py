"""The Dr.GRPO pg-loss reducer: ``--custom-pg-loss-reducer-function-path
examples.dr_grpo.reducer.get_pg_loss_reducer``. See the package docstring."""

from __future__ import annotations

import torch

from miles_sdk.algo import get_sum_of_sample_mean
from miles_sdk.hooks import LossReducer, PGLossReducer

__all__ = ["DIVISOR", "get_pg_loss_reducer"]

DIVISOR = 1000.0
"""The constant every sample's token sum is divided by (Miles's Dr.GRPO example uses 1000; the
paper uses the generation budget, ``rollout_max_response_len``)."""


def get_pg_loss_reducer(
    total_lengths: list[int],
    response_lengths: list[int],
    loss_masks: list[torch.Tensor],
    calculate_per_token_loss: bool = False,
) -> LossReducer:
    """The reducer for one micro-batch: ``sum_i(sum_t mask_it * x_it) / DIVISOR``.

    Like Miles's reducers it sums over samples (the Trainer divides by the batch size), so this
    file behaves exactly as Miles's Dr.GRPO example. With ``calculate_per_token_loss`` every token
    already weighs the same, so the masked token sum is kept, as in Miles's example.
    """
    if calculate_per_token_loss:
        return get_sum_of_sample_mean(total_lengths, response_lengths, loss_masks, True, reduction="sum")
    if len(loss_masks) != len(response_lengths):
        raise ValueError(
            f"examples.dr_grpo.reducer: {len(loss_masks)} loss_masks for {len(response_lengths)} response_lengths"
        )
    expected = sum(response_lengths)

    def sum_of_sample_constant(x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 1 or x.numel() != expected:
            raise ValueError(
                f"examples.dr_grpo.reducer: got shape {tuple(x.shape)}, expected ({expected},) = "
                "sum(response_lengths)"
            )
        total = x.new_zeros(())
        for x_i, mask_i in zip(torch.split(x, response_lengths), loss_masks, strict=True):
            mask_i = mask_i.to(device=x.device, dtype=x.dtype)
            # where(), not x * mask: a masked position may hold NaN/inf, and 0 * NaN is NaN.
            total = total + torch.where(mask_i != 0, x_i * mask_i, torch.zeros_like(x_i)).sum()
        return total / DIVISOR

    return sum_of_sample_constant


# The hook type-checks against the Protocol the Trainer expects (mypy --strict).
_reducer: PGLossReducer = get_pg_loss_reducer
