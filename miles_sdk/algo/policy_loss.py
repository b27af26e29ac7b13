"""Per-token policy, value and SFT losses, and the ratio metrics logged with them.

All functions here work on flat per-token tensors (the concatenation of a micro-batch's
responses) and return per-token values; :mod:`miles_sdk.algo.reducers` turns them into scalars.

Sign convention (Miles): ``ppo_kl = old_logp - logp``, so ``ratio = exp(-ppo_kl) = pi / pi_old``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from miles_sdk.algo.kl import safe_log_ratio
from miles_sdk.hooks import LossReducer

__all__ = [
    "compute_policy_loss",
    "compute_sft_loss",
    "compute_value_loss",
    "gspo_sequence_kl",
    "policy_ratio_metrics",
]


def compute_policy_loss(
    ppo_kl: torch.Tensor,
    advantages: torch.Tensor,
    eps_clip: float,
    eps_clip_high: float,
    eps_clip_c: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate, per token: ``(pg_loss, clipfrac)``.

    ``ratio = exp(clamp(-ppo_kl, +-20))``;
    ``pg = max(-ratio * A, -clip(ratio, 1 - eps_clip, 1 + eps_clip_high) * A)``;
    dual clip (``eps_clip_c > 1``): where ``A < 0``, ``pg = min(pg, -eps_clip_c * A)``.
    ``clipfrac`` is 1 where the clipped branch is strictly larger (it is the one in effect).
    """
    if ppo_kl.shape != advantages.shape:
        raise ValueError(
            f"compute_policy_loss: ppo_kl {tuple(ppo_kl.shape)} and advantages "
            f"{tuple(advantages.shape)} differ in shape"
        )
    if eps_clip_c is not None and not eps_clip_c > 1.0:
        raise ValueError(f"compute_policy_loss: eps_clip_c must be > 1 (dual clip), got {eps_clip_c}")
    ratio = torch.exp(safe_log_ratio(-ppo_kl))
    unclipped = -ratio * advantages
    clipped = -ratio.clamp(1.0 - eps_clip, 1.0 + eps_clip_high) * advantages
    pg_loss = torch.maximum(unclipped, clipped)
    clipfrac = (clipped > unclipped).to(pg_loss.dtype)
    if eps_clip_c is not None:
        dual = torch.minimum(pg_loss, -eps_clip_c * advantages)
        pg_loss = torch.where(advantages < 0, dual, pg_loss)
    return pg_loss, clipfrac


def gspo_sequence_kl(
    log_probs: Sequence[torch.Tensor],
    old_log_probs: Sequence[torch.Tensor],
    loss_masks: Sequence[torch.Tensor],
) -> torch.Tensor:
    """GSPO's ``ppo_kl``: each sample's masked mean of ``old - new``, broadcast to its tokens.

    The sequence ratio ``exp(-ppo_kl)`` is then the geometric mean of the token ratios.
    Returns the flat concatenation over samples.
    """
    if not len(log_probs) == len(old_log_probs) == len(loss_masks):
        raise ValueError(
            f"gspo_sequence_kl: {len(log_probs)} log_probs, {len(old_log_probs)} old_log_probs, "
            f"{len(loss_masks)} loss_masks"
        )
    parts: list[torch.Tensor] = []
    for i, (lp, old, mask) in enumerate(zip(log_probs, old_log_probs, loss_masks, strict=True)):
        if not lp.shape == old.shape == mask.shape:
            raise ValueError(
                f"gspo_sequence_kl: sample {i} shapes differ: log_probs {tuple(lp.shape)}, "
                f"old {tuple(old.shape)}, mask {tuple(mask.shape)}"
            )
        m = mask.to(lp.dtype)
        diff = torch.where(m != 0, old.to(lp.dtype) - lp, torch.zeros((), dtype=lp.dtype, device=lp.device))
        seq = diff.sum() / torch.clamp_min(m.sum(), 1.0)
        parts.append(seq.expand_as(lp))
    if not parts:
        return torch.zeros(0)
    return torch.cat(parts)


def policy_ratio_metrics(
    ppo_kl: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    eps_clip: float,
    eps_clip_high: float,
    reducer: LossReducer,
) -> dict[str, torch.Tensor]:
    """Detached diagnostics of the ratio ``pi / pi_old``.

    ``pg_clipfrac_low``: share of tokens held by the lower clip (ratio < 1 - eps, A < 0);
    ``pg_clipfrac_high``: by the upper clip (ratio > 1 + eps_high, A > 0);
    ``approx_kl``: k3 estimate of KL(pi_old || pi); ``ratio_mean`` and ``ratio_max`` over
    trainable tokens (``ratio_max`` is 0 when nothing is trainable).
    """
    with torch.no_grad():
        log_ratio = safe_log_ratio(-ppo_kl.detach())
        ratio = torch.exp(log_ratio)
        adv = advantages.detach()
        low = ((ratio < 1.0 - eps_clip) & (adv < 0)).to(ratio.dtype)
        high = ((ratio > 1.0 + eps_clip_high) & (adv > 0)).to(ratio.dtype)
        approx_kl = torch.expm1(log_ratio) - log_ratio
        active = loss_mask.to(device=ratio.device) != 0
        # ratio > 0, so filling masked slots with 0 leaves the max intact without a host sync.
        masked = torch.where(active, ratio, ratio.new_zeros(()))
        ratio_max = masked.max() if masked.numel() else ratio.new_zeros(())
        return {
            "pg_clipfrac_low": reducer(low),
            "pg_clipfrac_high": reducer(high),
            "approx_kl": reducer(approx_kl),
            "ratio_mean": reducer(ratio),
            "ratio_max": ratio_max,
        }


def compute_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    value_clip: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped value loss, per token: ``(loss, clipfrac)``.

    ``v_clip = old + clamp(v - old, +-value_clip)``;
    ``loss = max((v_clip - R)**2, (v - R)**2)`` (no 1/2 factor, as in Miles);
    ``clipfrac = |v - old| > value_clip``.
    """
    if not values.shape == old_values.shape == returns.shape:
        raise ValueError(
            f"compute_value_loss: values {tuple(values.shape)}, old_values {tuple(old_values.shape)}, "
            f"returns {tuple(returns.shape)} differ in shape"
        )
    old = old_values.detach().to(values.dtype)
    ret = returns.detach().to(values.dtype)
    delta = values - old
    clipped = old + delta.clamp(-value_clip, value_clip)
    loss = torch.maximum((clipped - ret).square(), (values - ret).square())
    clipfrac = (delta.abs() > value_clip).to(values.dtype)
    return loss, clipfrac


def compute_sft_loss(log_probs: torch.Tensor, reducer: LossReducer) -> torch.Tensor:
    """Supervised loss: minus the reduced log-likelihood of the response tokens."""
    return -reducer(log_probs)
