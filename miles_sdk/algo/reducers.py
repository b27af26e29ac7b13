"""Loss reducers: flat per-token tensor of a micro-batch -> scalar.

The default reduction (:func:`get_mean_of_sample_mean`) averages each sample's loss over its
trainable tokens, then averages over the samples of the micro-batch. With
``calculate_per_token_loss`` it divides the token sum by the micro-batch's trainable-token count
instead. :func:`get_sum_of_sample_mean` is Miles's reducer of the same name: the *sum* over samples.

Two conventions meet here. Internally the reducer returns the *mean* over the micro-batch, so a
loss value means the same thing whatever the micro-batch size, and the backend scales by
``micro_batch_size / global_batch_size`` when it accumulates gradients. Miles's reducers return the
*sum* over samples (and per-token: the token sum) and Miles divides later. User hooks keep Miles's
convention: a custom ``LossFn`` receives the ``reduction="sum"`` reducer and a custom
``PGLossReducer`` is expected to return sums; :func:`miles_scale` converts their results, so a
Miles hook file gives the same gradients here as in Miles (see docs/algorithms.md).

Both reducers precompute one weight per token, so reducing is a single fused multiply-sum, and a
masked position never contributes, even when the value there is NaN or inf.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from miles_sdk.algo._device import host_to_device, join_rows
from miles_sdk.hooks import LossReducer, PGLossReducer

__all__ = [
    "constant_divisor_reducer",
    "get_mean_of_sample_mean",
    "get_sum_of_sample_mean",
    "masked_token_weights",
    "miles_scale",
    "sample_sums",
]


def _check_layout(response_lengths: Sequence[int], loss_masks: Sequence[torch.Tensor]) -> None:
    if len(response_lengths) != len(loss_masks):
        raise ValueError(
            f"reducer: {len(response_lengths)} response_lengths but {len(loss_masks)} loss_masks"
        )
    for i, (length, mask) in enumerate(zip(response_lengths, loss_masks, strict=True)):
        if mask.dim() != 1 or mask.numel() != length:
            raise ValueError(
                f"reducer: loss_masks[{i}] has shape {tuple(mask.shape)}, expected ({length},) "
                "from response_lengths"
            )


def _segment_ids(response_lengths: Sequence[int], device: torch.device) -> torch.Tensor:
    """Sample index of each flat response token."""
    # numpy on the host: torch's CPU repeat_interleave costs its thread pool's start-up per call
    lengths = np.asarray(response_lengths, dtype=np.int64)
    return host_to_device(torch.from_numpy(np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)), device)


def _flat64(values: Sequence[torch.Tensor]) -> torch.Tensor:
    return join_rows(values, dtype=torch.float64)


def _sums(flat: torch.Tensor, segments: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=flat.dtype, device=flat.device).index_add_(0, segments, flat)


def sample_sums(values: Sequence[torch.Tensor], response_lengths: Sequence[int]) -> torch.Tensor:
    """Each sample's sum of ``values`` (float64, one entry per sample), in a fixed number of
    kernels whatever the number of samples."""
    if not values:
        return torch.zeros(0, dtype=torch.float64)
    flat = _flat64(values)
    return _sums(flat, _segment_ids(response_lengths, flat.device), len(values))


def masked_token_weights(
    response_lengths: Sequence[int],
    loss_masks: Sequence[torch.Tensor],
    calculate_per_token_loss: bool = False,
    denominators: Sequence[float | torch.Tensor] | torch.Tensor | None = None,
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """Per-token weights ``w`` such that the default reduction of ``x`` is ``sum(w * x)``.

    Sample mode: ``w = mask_i / max(den_i, 1) / n_samples`` with ``den_i = sum(mask_i)`` unless
    ``denominators`` overrides it. Per-token mode: ``w = mask / max(sum(den), 1)``. Computed for
    all samples at once: per sample, a micro-batch of 64 launched hundreds of small kernels.
    """
    _check_layout(response_lengths, loss_masks)
    if not loss_masks:
        return torch.zeros(0)
    masks = _flat64(loss_masks)
    device = masks.device
    segments = _segment_ids(response_lengths, device)  # one copy, shared by the sums and the weights
    if denominators is None:
        dens = _sums(masks, segments, len(loss_masks))
    elif isinstance(denominators, torch.Tensor):
        dens = denominators.to(device=device, dtype=torch.float64).reshape(-1)
    else:
        dens = torch.stack([torch.as_tensor(d, dtype=torch.float64).to(device).reshape(()) for d in denominators])
    if dens.numel() != len(loss_masks):
        raise ValueError(f"reducer: {dens.numel()} denominators for {len(loss_masks)} samples")
    if calculate_per_token_loss:
        if reduction == "mean":
            return masks / torch.clamp_min(dens.sum(), 1.0)
        return masks
    n = len(loss_masks) if reduction == "mean" else 1
    per_sample = torch.clamp_min(dens, 1.0) * n
    return masks / per_sample[segments]


def miles_scale(loss_masks: Sequence[torch.Tensor], calculate_per_token_loss: bool = False) -> float:
    """What a Miles-convention (``reduction="sum"``) result is divided by to become this SDK's
    micro-batch mean: the number of samples, or of trainable tokens with per-token loss."""
    if calculate_per_token_loss:
        if not loss_masks:
            return 1.0
        return max(float(join_rows(loss_masks).sum()), 1.0)  # one host read
    return float(max(len(loss_masks), 1))


def _weighted_sum(weights: torch.Tensor, expected: int, name: str) -> LossReducer:
    cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def reduce(x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 1 or x.numel() != expected:
            raise ValueError(
                f"{name}: got a tensor of shape {tuple(x.shape)}, expected ({expected},) = "
                "sum(response_lengths) (flat per-token values of the micro-batch)"
            )
        key = (x.device, x.dtype)
        w = cache.get(key)
        if w is None:
            w = weights.to(device=x.device, dtype=x.dtype)
            cache[key] = w
        # where() rather than x * w: 0 * NaN is NaN, and masked positions must never leak.
        return torch.where(w != 0, x * w, torch.zeros((), dtype=x.dtype, device=x.device)).sum()

    return reduce


def get_sum_of_sample_mean(
    total_lengths: Sequence[int],
    response_lengths: Sequence[int],
    loss_masks: Sequence[torch.Tensor],
    calculate_per_token_loss: bool = False,
    denominators: Sequence[float | torch.Tensor] | torch.Tensor | None = None,
    reduction: Literal["mean", "sum"] = "sum",
) -> LossReducer:
    """Miles's ``sum_of_sample_mean`` reducer, as a callable on flat per-token tensors: it returns
    what its name says, the *sum* over samples of each sample's masked token mean.

    This is the convention of every user hook (a ``PGLossReducer`` result, the reducer a custom
    ``LossFn`` receives), so a reducer built on it gives Miles's gradients here.
    ``calculate_per_token_loss=True``: the masked token sum. A sample whose mask is all zeros
    contributes 0 (not NaN). ``denominators`` replaces each sample's own mask sum (used when
    TIS/MIS masks change only the numerator). ``reduction="mean"`` is
    :func:`get_mean_of_sample_mean` (the SDK's internal, batch-size-independent convention).
    """
    if len(total_lengths) != len(response_lengths):
        raise ValueError(
            f"reducer: {len(total_lengths)} total_lengths but {len(response_lengths)} response_lengths"
        )
    weights = masked_token_weights(
        response_lengths, loss_masks, calculate_per_token_loss, denominators, reduction
    )
    return _weighted_sum(weights, sum(response_lengths), "sum_of_sample_mean")


def get_mean_of_sample_mean(
    total_lengths: Sequence[int],
    response_lengths: Sequence[int],
    loss_masks: Sequence[torch.Tensor],
    calculate_per_token_loss: bool = False,
    denominators: Sequence[float | torch.Tensor] | torch.Tensor | None = None,
) -> LossReducer:
    """The SDK's default loss reduction: the *mean* over the micro-batch's samples of each sample's
    masked token mean (per-token: the token sum divided by the trainable-token count).

    It equals :func:`get_sum_of_sample_mean` divided by :func:`miles_scale`. Do not build a
    ``PGLossReducer`` hook on it: hooks return sums (see docs/hooks.md), and a mean would shrink
    the gradient by the number of samples.
    """
    return get_sum_of_sample_mean(
        total_lengths,
        response_lengths,
        loss_masks,
        calculate_per_token_loss,
        denominators,
        reduction="mean",
    )


def constant_divisor_reducer(divisor: float) -> PGLossReducer:
    """A ``PGLossReducer`` dividing each sample's masked token sum by ``divisor`` (Dr.GRPO).

    Like every ``PGLossReducer`` hook it follows Miles's convention (sums over samples): sample
    mode gives ``sum_i(sum_t mask * x / divisor)``, so the gradient no longer favours short
    answers; per-token mode gives the masked token sum, as Miles's Dr.GRPO example does.
    """
    if not divisor > 0:
        raise ValueError(f"constant_divisor_reducer: divisor must be > 0, got {divisor}")

    def factory(
        total_lengths: list[int],
        response_lengths: list[int],
        loss_masks: list[torch.Tensor],
        calculate_per_token_loss: bool = False,
        /,
    ) -> LossReducer:
        if calculate_per_token_loss:
            return get_sum_of_sample_mean(total_lengths, response_lengths, loss_masks, True)
        _check_layout(response_lengths, loss_masks)
        if not loss_masks:
            weights = torch.zeros(0)
        else:
            weights = join_rows(loss_masks, dtype=torch.float64) / divisor
        return _weighted_sum(weights, sum(response_lengths), "constant_divisor_reducer")

    return factory
