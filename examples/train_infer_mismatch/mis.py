"""MIS as a TIS hook: ``--custom-tis-function-path examples.train_infer_mismatch.mis.compute_mis_weights``.

See the package docstring. ``MIS_CONFIG`` holds the settings; pass them to the Config
(``Config(**MIS_CONFIG, ...)``) or as the matching Miles flags.
"""

from __future__ import annotations

from typing import Any

import torch

from miles_sdk.algo import mis_function
from miles_sdk.config import Config
from miles_sdk.hooks import TISFn, TISResult

__all__ = ["MIS_CONFIG", "compute_mis_weights", "effective_sample_size"]

MIS_CONFIG: dict[str, Any] = {
    "use_tis": True,  # reweight the pg loss by the IS ratio ...
    "use_rs": True,  # ... and mask tokens whose ratio is out of bounds (rejection sampling)
    "tis_level": "token",  # one weight per token (sequence: product; geometric: geometric mean)
    "rs_level": "token",
    "tis_mode": "truncate",  # cap weights at tis_upper_bound (clip: into [lower, upper]; mask: drop)
    "tis_lower_bound": 0.5,
    "tis_upper_bound": 2.0,
    "rs_lower_bound": None,  # None: the tis bounds
    "rs_upper_bound": None,
    "rs_veto_threshold": 1e-4,  # a token with ratio below this drops its whole sequence
    "tis_batch_normalize": True,  # rescale the weights to mean 1 over the micro-batch
}
"""Miles's ``mis.yaml`` defaults, under their Config names."""


def effective_sample_size(weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Kish's effective sample size over the masked-in tokens, as a fraction of them:
    ``(sum w)^2 / (n * sum w^2)``, in (0, 1]; 1 when all weights are equal, 0 when none is kept."""
    w = weights[mask != 0].to(torch.float64)
    if w.numel() == 0 or float((w * w).sum()) == 0.0:
        return torch.zeros((), dtype=torch.float64)
    return w.sum() ** 2 / (w.numel() * (w * w).sum())


def compute_mis_weights(
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
    """``miles_sdk.algo.mis_function`` plus ``mis_ess`` (a scalar metric) over the kept tokens."""
    pg_loss, masks, metrics = mis_function(
        args=args,
        pg_loss=pg_loss,
        train_log_probs=train_log_probs,
        rollout_log_probs=rollout_log_probs,
        loss_masks=loss_masks,
        total_lengths=total_lengths,
        response_lengths=response_lengths,
        **kwargs,
    )
    weights = metrics.get("mis_is_ratio_final")
    if weights is not None and masks:
        metrics["mis_ess"] = effective_sample_size(weights.detach(), torch.cat(masks).to(weights.device))
    return pg_loss, masks, metrics


# The hook type-checks against the Protocol the Trainer expects (mypy --strict).
_tis: TISFn = compute_mis_weights
